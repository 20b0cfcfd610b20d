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
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from alignslm.vocoder.hifigan import CheckpointError, ConditioningError, HifiganVocoder, VocoderInputError

__all__ = ["Vocoder", "load_vocoder", "CheckpointError", "ConditioningError", "VocoderInputError", "HifiganVocoder"]


class Vocoder(Protocol):
    kind: str
    sample_rate: int
    n_units: int

    def vocode(self, units_list: list[list[int]], durations: list[list[int]] | None = None
               ) -> list[np.ndarray]:
        """Deduplicated unit sequences (durations: run lengths, or None to predict them) -> waveforms."""
        ...


def _device(device: str | None) -> str:
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_vocoder(source: Any, device: str | None = None) -> Vocoder:
    """Load a vocoder from the vocoder stage directory (``vocoder.json``), a HiFi-GAN directory
    (``generator.pt`` + ``config.json``), a demo model directory (``demo.pt``), or a config
    (:class:`alignslm.config.Config` or its ``vocoder`` section)."""
    if hasattr(source, "vocoder") and hasattr(source, "run"):  # a whole Config
        vc = source.vocoder
        if vc.kind == "hifigan":
            return _from_section(vc, _device(device or source.run.device))
        return load_vocoder(Path(source.run.run_dir) / "vocoder", device or source.run.device)
    if hasattr(source, "kind") and hasattr(source, "steps"):  # a VocoderConfig
        return _from_section(source, _device(device))
    d = Path(source).expanduser()
    if (d / "vocoder.json").is_file():
        meta = json.loads((d / "vocoder.json").read_text())
        kind = meta.get("kind")
        if kind == "hifigan":
            return HifiganVocoder.from_dir(d / meta["path"], speaker=speaker_conditioning(
                                               meta.get("speaker"), meta.get("speaker_embedding")),
                                           batch_size=int(meta.get("batch_size", 16)), device=_device(device))
        if kind == "demo":
            from alignslm.vocoder.demo import DemoVocoder

            return DemoVocoder.load(d / meta.get("path", "."), batch_size=int(meta.get("batch_size", 16)),
                                    device=_device(device))
        raise CheckpointError(f"{d / 'vocoder.json'}: unknown kind {kind!r} (demo | hifigan)")
    if (d / "generator.pt").is_file():
        return HifiganVocoder.from_dir(d, device=_device(device))
    if (d / "demo.pt").is_file():
        from alignslm.vocoder.demo import DemoVocoder

        return DemoVocoder.load(d, device=_device(device))
    raise CheckpointError(f"{d}: no vocoder.json, generator.pt or demo.pt here; pass the vocoder stage directory "
                          "or a unit HiFi-GAN directory (generator.pt + config.json)")


def _from_section(vc: Any, device: str) -> Vocoder:
    if vc.kind != "hifigan":
        raise CheckpointError(f"vocoder.kind={vc.kind!r}: the demo vocoder is trained by the vocoder stage; "
                              "load it from the stage directory (<run_dir>/vocoder)")
    if not vc.path:
        raise CheckpointError("vocoder.kind=hifigan needs vocoder.path (a directory with generator.pt + config.json)")
    return HifiganVocoder.from_dir(vc.path, speaker=speaker_conditioning(vc.speaker, vc.speaker_embedding),
                                   batch_size=vc.batch_size, device=device)


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
