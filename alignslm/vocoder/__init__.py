"""Unit vocoders: units (+ durations) -> 16 kHz waveforms.

Two implementations share one interface (:class:`Vocoder`):
- ``hifigan``: a public unit HiFi-GAN checkpoint (``generator.pt`` + ``config.json``), see :mod:`.hifigan`;
- ``demo``: a small unit-to-spectrogram model trained on the demo corpus + Griffin-Lim, see :mod:`.demo`.

    voc = load_vocoder("runs/demo/vocoder")          # the vocoder stage directory (vocoder.json)
    wavs = voc.vocode([[3, 7, 7, 1], [5, 2]])        # -> [np.ndarray (samples,), ...], each trimmed

A HiFi-GAN checkpoint conditioned on a speaker (id table or embedding vector) or on F0 takes that
conditioning as ``vocode(..., speaker=..., f0=...)`` (:class:`HifiganVocoder`); vocoding without
what it needs is a :class:`ConditioningError`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from alignslm.vocoder.hifigan import CheckpointError, ConditioningError, HifiganVocoder, VocoderInputError

__all__ = ["Vocoder", "load_vocoder", "CheckpointError", "ConditioningError", "VocoderInputError", "HifiganVocoder",
           "unit_problem", "vocode_16k", "torch_threads"]


class Vocoder(Protocol):
    kind: str
    sample_rate: int
    n_units: int

    def vocode(self, units_list: list[list[int]], durations: list[list[int]] | None = None,
               batch_size: int | None = None) -> list[np.ndarray]:
        """Deduplicated unit sequences (durations: run lengths, or None to predict them) -> waveforms."""
        ...


def unit_problem(units: Any, n_units: int) -> str | None:
    """Why a continuation cannot be vocoded (None = it can): empty, or a unit id outside the vocoder's table.
    The round's vocode stage and the evaluation's held-out generations reject the same items."""
    if not isinstance(units, list) or len(units) == 0:
        return "empty continuation: nothing to vocode"
    bad = [u for u in units if not isinstance(u, int) or u < 0 or u >= n_units]
    if bad:
        return f"unit id {bad[0]} is outside the vocoder's table [0, {n_units})"
    return None


def vocode_16k(voc: Vocoder, units_list: list[list[int]], batch_size: int, threads: int = 0) -> list[np.ndarray]:
    """Waveforms at the pipeline's 16 kHz (resampled from the vocoder's rate), ``batch_size`` sequences per
    call and ``threads`` torch CPU threads (0 = torch's default): the one vocoding path of the rounds and the
    evaluation.  Each sequence must pass :func:`unit_problem`."""
    from alignslm.speech.audio import SAMPLE_RATE, resample

    if not units_list:
        return []
    with torch_threads(threads):
        wavs = voc.vocode(units_list, batch_size=batch_size)
    if voc.sample_rate != SAMPLE_RATE:
        wavs = [resample(w, voc.sample_rate, SAMPLE_RATE) for w in wavs]
    return wavs


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's CPU threads (0 or None: leave them; the demo vocoder's small ops run ~10x faster
    on 1 thread of a loaded CPU)."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _device(device: str | None) -> str:
    from alignslm.impl import resolve_device

    return resolve_device(device)


def load_vocoder(source: str | Path, device: str | None = None) -> Vocoder:
    """Load a vocoder from the vocoder stage directory (``vocoder.json``: the kind, the weights it points to and
    the speaker conditioning the stage checked), a HiFi-GAN directory (``generator.pt`` + ``config.json``) or a
    demo model directory (``demo.pt``).  A config is read by the vocoder stage, which writes ``vocoder.json``."""
    d = Path(source).expanduser()
    if (d / "vocoder.json").is_file():
        meta = json.loads((d / "vocoder.json").read_text())
        kind = meta.get("kind")
        if kind not in KINDS:
            raise CheckpointError(f"{d / 'vocoder.json'}: unknown kind {kind!r} ({' | '.join(KINDS)})")
        return KINDS[kind](d, meta, _device(device))
    if (d / "generator.pt").is_file():
        return HifiganVocoder.from_dir(d, device=_device(device))
    if (d / "demo.pt").is_file():
        from alignslm.vocoder.demo import DemoVocoder

        return DemoVocoder.load(d, device=_device(device))
    raise CheckpointError(f"{d}: no vocoder.json, generator.pt or demo.pt here; pass the vocoder stage directory "
                          "or a unit HiFi-GAN directory (generator.pt + config.json)")


def _hifigan_from_stage(d: Path, meta: dict, device: str) -> Vocoder:
    return HifiganVocoder.from_dir(d / meta["path"], speaker=speaker_conditioning(meta.get("speaker"),
                                                                                 meta.get("speaker_embedding")),
                                   batch_size=int(meta.get("batch_size", 16)), device=device)


def _demo_from_stage(d: Path, meta: dict, device: str) -> Vocoder:
    from alignslm.vocoder.demo import DemoVocoder

    return DemoVocoder.load(d / meta.get("path", "."), batch_size=int(meta.get("batch_size", 16)), device=device)


# vocoder.json "kind" -> its loader(stage directory, vocoder.json, device); a new vocoder is one entry here and
# one choice in alignslm.config.VocoderKind
KINDS: dict[str, Callable[[Path, dict, str], Vocoder]] = {"demo": _demo_from_stage, "hifigan": _hifigan_from_stage}


def speaker_conditioning(speaker: int | None, embedding: str | None) -> Any:
    """``vocoder.speaker`` (an id) or the vector in ``vocoder.speaker_embedding`` (a .npy file), or None."""
    if embedding is None:
        return speaker
    if speaker is not None:
        raise CheckpointError(f"vocoder.speaker={speaker} and vocoder.speaker_embedding={embedding}: set one "
                              "(an id for a speaker table, a vector file for an embedding-conditioned HiFi-GAN)")
    path = Path(embedding).expanduser()
    if not path.is_file():
        raise CheckpointError(f"vocoder.speaker_embedding={path}: no such file (a .npy with one vector)")
    try:
        vec = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
        raise CheckpointError(f"vocoder.speaker_embedding={path}: not a readable .npy file ({e})") from e
    vec = np.asarray(vec)
    if vec.ndim == 2 and vec.shape[0] == 1:
        vec = vec[0]
    if vec.ndim != 1 or not np.issubdtype(vec.dtype, np.number) or not np.isfinite(vec).all():
        raise CheckpointError(f"vocoder.speaker_embedding={path}: expected one finite numeric vector, got shape "
                              f"{tuple(vec.shape)} dtype {vec.dtype}")
    return vec.astype(np.float32)
