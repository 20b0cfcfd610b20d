"""Speech tokenizer: encoder frames -> k-means units -> run-length deduplication.

    tok = load_tokenizer(run_dir / "tokenize")        # what the tokenize stage trained / loaded
    [(units, durations)] = tok.encode([wav])           # wav: (S,) float32 16 kHz mono
    units, durations = dedup(frame_units)              # durations.sum() == len(frame_units)

``tokenize/tokenizer.json`` records the encoder (kind, path, layer, pooling), the quantizer file (relative
to the stage directory), whether units are deduplicated, the frame rate and K; every other stage (the
evaluator tokenising benchmark audio, the vocoder mapping units back to audio at this frame rate) builds
the same tokenizer from it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alignslm.rundir import atomic_path, read_json, write_json
from alignslm.speech.encoders import Encoder, build_encoder
from alignslm.speech.quantizer import Quantizer, load_quantizer

TOKENIZER_JSON = "tokenizer.json"
QUANTIZER_NPY = "quantizer.npy"
SCALE_NPY = "feature_scale.npy"


class TokenizerError(ValueError):
    """The encoder and quantizer do not fit together, or tokenizer.json is wrong; the message says how."""


def dedup(units: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Run-length collapse: (T,) units -> (U,) units with no two equal neighbours, (U,) durations (sum T)."""
    u = np.asarray(units, dtype=np.int64).reshape(-1)
    if u.size == 0:
        return u, np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate([[True], u[1:] != u[:-1]]))  # (U,)
    durations = np.diff(np.concatenate([starts, [u.size]]))
    return u[starts], durations.astype(np.int64)


def quantizer_id(q: Quantizer) -> str:
    """A short, content-based id of a quantizer: ``kmeans<K>x<D>:<hash of the centroids>``."""
    h = hashlib.sha256(np.ascontiguousarray(q.centroids).tobytes()).hexdigest()[:10]
    return f"kmeans{q.k}x{q.dim}:{h}"


def feature_scale(X: np.ndarray) -> np.ndarray:
    """Per-dimension 1/std of frames X (N, D) -> (D,) float32.

    k-means is translation invariant, so this is z-scoring.  Whisper's last encoder layer has a few
    dimensions with 5-8x the spread of the rest; unscaled they decide every unit (word ABX error 0.41 on
    demo stories vs 0.03 scaled, K=100; see experiments/choose_encoder.md)."""
    sd = X.astype(np.float64).std(axis=0)
    return (1.0 / np.maximum(sd, 1e-3 * max(float(sd.max()), 1e-12))).astype(np.float32)


class Tokenizer:
    """An encoder, a quantizer of the same dimension, whether to deduplicate, and an optional per-dimension
    feature scale applied before the nearest-centroid search (the centroids live in the scaled space)."""

    def __init__(self, encoder: Encoder, quantizer: Quantizer, dedup: bool = True,
                 scale: np.ndarray | None = None):
        if scale is not None and np.asarray(scale).shape != (encoder.dim,):
            raise TokenizerError(f"feature scale has shape {np.asarray(scale).shape}, encoder {encoder.name} "
                                 f"has dim {encoder.dim}; re-run the tokenize stage")
        self.scale = None if scale is None else np.asarray(scale, dtype=np.float32)
        if quantizer.dim != encoder.dim:
            raise TokenizerError(
                f"quantizer dimension {quantizer.dim} does not match encoder {encoder.name} (dim {encoder.dim}); "
                f"use a k-means trained on this encoder's features (source: {quantizer.meta.get('source')}), "
                "or set tokenize.quantizer=null to train one")
        self.encoder, self.quantizer, self.dedup = encoder, quantizer, dedup
        self.quantizer_id = quantizer_id(quantizer)

    @property
    def frame_rate(self) -> float:
        return float(self.encoder.frame_rate)

    @property
    def n_units(self) -> int:
        return self.quantizer.k

    def units_of(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T, D) frames -> (units, durations); durations are all ones without dedup."""
        x = feats if self.scale is None else feats * self.scale  # (T, D)
        u = self.quantizer.assign(np.ascontiguousarray(x, dtype=np.float32))  # (T,)
        return dedup(u) if self.dedup else (u, np.ones_like(u))

    def encode(self, wavs: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """16 kHz mono float32 waveforms -> [(units (U,) int64, durations (U,) int64)], one per waveform."""
        return [self.units_of(f) for f in self.encoder.encode(wavs)]

    def describe(self) -> dict[str, Any]:
        return {**self.encoder.describe(), "encoder_name": self.encoder.name, "dim": self.encoder.dim,
                "frame_rate": self.frame_rate, "sample_rate": 16000, "n_units": self.n_units,
                "quantizer": QUANTIZER_NPY, "quantizer_id": self.quantizer_id, "dedup": self.dedup,
                "feature_scale": None if self.scale is None else SCALE_NPY}

    def save(self, stage_dir: str | Path) -> Path:
        """Write quantizer.npy/.json and tokenizer.json into ``stage_dir``; return the tokenizer.json path."""
        d = Path(stage_dir)
        self.quantizer.save(d / QUANTIZER_NPY)
        if self.scale is not None:
            with atomic_path(d / SCALE_NPY) as tmp, open(tmp, "wb") as f:
                np.save(f, self.scale)
        write_json(d / TOKENIZER_JSON, self.describe())
        return d / TOKENIZER_JSON


def load_tokenizer(stage_dir: str | Path, device: str = "cpu", batch_size: int = 16) -> Tokenizer:
    """The tokenizer recorded in ``<stage_dir>/tokenizer.json`` (written by the tokenize stage)."""
    d = Path(stage_dir)
    js = d / TOKENIZER_JSON
    if not js.is_file():
        raise TokenizerError(f"{js} not found: run the tokenize stage first (python -m alignslm.run --stage tokenize)")
    meta = read_json(js)
    try:
        kind = meta["encoder"]
        q_path = d / meta["quantizer"]
    except KeyError as e:
        raise TokenizerError(f"{js}: missing key {e}; the file is corrupt, re-run the tokenize stage") from e
    enc = build_encoder(kind, meta.get("encoder_path"), layer=int(meta.get("layer", 11)),
                        pool=int(meta.get("pool", 1)), compute_type=meta.get("compute_type", "default"),
                        batch_size=batch_size, device=device,
                        norm=meta.get("norm", "utterance"),  # files written before tokenize.norm existed
                        cepstra=int(meta.get("cepstra", 19)))
    if abs(enc.frame_rate - float(meta.get("frame_rate", enc.frame_rate))) > 1e-6:
        raise TokenizerError(f"{js}: frame rate {meta['frame_rate']} recorded, but encoder gives {enc.frame_rate}")
    scale = np.load(d / meta["feature_scale"], allow_pickle=False) if meta.get("feature_scale") else None
    return Tokenizer(enc, load_quantizer(q_path), dedup=bool(meta.get("dedup", True)), scale=scale)


def quantizer_dim_problem(q_dim: int, enc_dim: int, quantizer: Any, encoder: str, layer: int | None = None
                          ) -> str | None:
    """The check that the quantizer's centroids have the encoder's feature dimension, or None when they do.

    One function for both callers: ``--dry-run`` (alignslm.run.cross_checks: the .npy header against the
    HuBERT config.json hidden_size, no model loaded) and the tokenize stage (the loaded quantizer and encoder).
    """
    if int(q_dim) == int(enc_dim):
        return None
    at = f" layer {layer}" if layer is not None else ""
    return (f"tokenize.quantizer={quantizer}: dimension {q_dim} does not match encoder {encoder}: "
            f"use the k-means trained on this encoder's{at} features")
