"""Stage ``tokenize``: corpus audio -> deduplicated k-means units.

Reads ``corpus/manifest.jsonl`` (utt_id, path[, split]); writes ``units.jsonl`` (utt_id, units, durations,
n_frames, encoder, quantizer), ``quantizer.npy`` + ``.json`` and ``tokenizer.json`` (see
alignslm.speech.tokenizer.load_tokenizer).  With ``tokenize.quantizer`` unset it trains K-means on up to
``fit_max_frames`` frames of the train split (utterances in a seeded random order); otherwise it loads the
given file, and a dimension that differs from the encoder's stops the stage before any audio is read.
Unreadable, empty, silent, non-finite, too short or too long audio is listed in ``rejects.jsonl``.
Resumable per shard of ``shard_size`` utterances; the trained quantizer is saved before the first shard.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from alignslm import logger
from alignslm.impl import resolve_device
from alignslm.rundir import StageContext, read_jsonl, run_sharded
from alignslm.speech.audio import SAMPLE_RATE, AudioError, read_audio
from alignslm.speech.encoders import Encoder, build_encoder
from alignslm.speech.quantizer import Quantizer, load_quantizer, train_quantizer
from alignslm.speech.tokenizer import (
    QUANTIZER_NPY,
    SCALE_NPY,
    TOKENIZER_JSON,
    Tokenizer,
    TokenizerError,
    feature_scale,
    quantizer_dim_problem,
)

if TYPE_CHECKING:
    from alignslm.config import Config

UNITS_JSONL = "units.jsonl"
CACHE_MAX_BYTES = 512 * 2**20


def check(cfg: Config) -> list[str]:
    """Cheap --dry-run checks: encoder kind, quantizer pickle policy (the paths' existence is checked once, from
    the stage graph's external inputs, by alignslm.run.check_paths)."""
    t = cfg.tokenize
    problems = []
    if t.encoder == "hubert" and not t.encoder_path:
        problems.append("tokenize.encoder=hubert needs tokenize.encoder_path (a HubertModel directory)")
    if t.quantizer:
        q = Path(t.quantizer).expanduser()
        if q.is_file() and q.suffix != ".npy" and not t.trust_pickle:
            problems.append(f"tokenize.quantizer={q} is a pickle/joblib file: set tokenize.trust_pickle=true "
                            f"if you trust it, or convert it: python -m alignslm.speech.quantizer convert {q} out.npy "
                            "--trust-pickle")
    if t.pool < 1 or t.n_units < 2 or t.batch_size < 1 or t.shard_size < 1:
        problems.append("tokenize.pool, batch_size and shard_size must be >= 1 and n_units >= 2")
    return problems


def _read(row: dict, enc: Encoder) -> np.ndarray:
    """One manifest row's audio (path made absolute by :func:`run`), checked against what the encoder
    accepts (AudioError otherwise)."""
    if "path" not in row:
        raise AudioError(row.get("utt_id", "?"), "manifest row has no 'path'")
    wav = read_audio(row["path"])
    if enc.n_frames(wav.size) < 1:
        raise AudioError(row["path"], f"too short ({wav.size} samples) for one {enc.name} frame")
    if enc.max_seconds is not None and wav.size > enc.max_seconds * SAMPLE_RATE:
        raise AudioError(row["path"], f"{wav.size / SAMPLE_RATE:.1f} s is longer than the {enc.max_seconds:.0f} s "
                                      "the encoder accepts; split long recordings into utterances first")
    return wav


def _encode_safe(enc: Encoder, wavs: list[np.ndarray], ids: list[str], ctx: StageContext) -> list[Any]:
    """Encode a batch; if it fails, encode one at a time so only the bad items are rejected."""
    try:
        return list(enc.encode(wavs))
    except Exception:  # noqa: BLE001 - isolate the offending item below
        out: list[Any] = []
        for w, i in zip(wavs, ids):
            try:
                out.append(enc.encode([w])[0])
            except Exception as e:  # noqa: BLE001
                ctx.rejects.add(i, f"encoder failed: {type(e).__name__}: {e}")
                out.append(None)
        return out


def _fit_quantizer(ctx: StageContext, enc: Encoder, rows: list[dict], timing: dict[str, float]
                   ) -> tuple[Quantizer, np.ndarray | None, dict[str, np.ndarray]]:
    """K-means on up to fit_max_frames frames of the train split; returns the features it encoded too."""
    t = ctx.cfg.tokenize
    pool = [r for r in rows if r.get("split", "train") == "train"] or rows
    order = np.random.default_rng(ctx.seed("fit")).permutation(len(pool))
    feats: dict[str, np.ndarray] = {}
    n = 0
    for s in range(0, len(order), t.batch_size):
        batch = []
        for j in order[s:s + t.batch_size]:
            try:
                batch.append((pool[j]["utt_id"], _read(pool[j], enc)))
            except AudioError:
                continue  # recorded as a reject when the main pass reaches it
        t0 = time.perf_counter()
        for (uid, _), f in zip(batch, enc.encode([w for _, w in batch])):
            feats[uid] = f
            n += f.shape[0]
        timing["encode_s"] += time.perf_counter() - t0
        if n >= t.fit_max_frames:
            break
    if n < t.n_units:
        raise RuntimeError(f"only {n} usable frames in the train split to fit K={t.n_units} units; "
                           "add audio or lower tokenize.n_units")
    X = np.concatenate(list(feats.values()))[: t.fit_max_frames]  # (N, D)
    scale = feature_scale(X) if t.standardize else None
    if scale is not None:
        X = X * scale
    logger.info("tokenize: fitting K=%d on %d frames from %d utterances", t.n_units, X.shape[0], len(feats))
    q = train_quantizer(np.ascontiguousarray(X, dtype=np.float32), t.n_units, t.fit_iters, ctx.seed("kmeans"))
    q.meta.update({"encoder": enc.name, "n_utterances": len(feats), "feature_scale": scale is not None})
    if X.nbytes > CACHE_MAX_BYTES:  # keep the fit features for the main pass only while they are small
        feats = {}
    return q, scale, feats


def _quantizer(ctx: StageContext, enc: Encoder, rows: list[dict], timing: dict[str, float]
               ) -> tuple[Quantizer, np.ndarray | None, dict[str, np.ndarray]]:
    """The given quantizer (raw features), the one a previous attempt trained, or a new one."""
    t = ctx.cfg.tokenize
    if t.quantizer:
        return load_quantizer(Path(t.quantizer).expanduser(), trust_pickle=t.trust_pickle), None, {}
    if ctx.rank != 0:  # rank 0 fits; the others wait for its tokenizer.json
        _wait_for_file(ctx.out / TOKENIZER_JSON)
    if (ctx.out / TOKENIZER_JSON).is_file():  # written after the fit: a resumed run keeps the same units
        logger.info("tokenize: resuming with the quantizer trained earlier (%s)", ctx.out / QUANTIZER_NPY)
        scale = np.load(ctx.out / SCALE_NPY) if (ctx.out / SCALE_NPY).is_file() else None
        return load_quantizer(ctx.out / QUANTIZER_NPY), scale, {}
    return _fit_quantizer(ctx, enc, rows, timing)


def _wait_for_file(path: Path, timeout_s: float = 4 * 3600) -> None:
    t0 = time.time()
    while not path.is_file():
        if time.time() - t0 > timeout_s:
            raise RuntimeError(f"{path} never appeared: did rank 0 fail while fitting the quantizer?")
        time.sleep(1.0)


def run(ctx: StageContext) -> dict:
    t = ctx.cfg.tokenize
    manifest = ctx.inputs["corpus"] / "manifest.jsonl"
    rows = [{**r, "path": str(manifest.parent / r["path"])} if "path" in r else r for r in read_jsonl(manifest)]
    ids = [r.get("utt_id") for r in rows]
    if not rows or None in ids or len(set(ids)) != len(ids):
        raise ValueError(f"{manifest}: need a non-empty manifest with a unique utt_id on every row")
    enc = build_encoder(t.encoder, t.encoder_path, layer=t.layer, batch_size=t.batch_size, pool=t.pool,
                        compute_type=t.compute_type, device=resolve_device(ctx.cfg.run.device), norm=t.norm,
                        cepstra=t.cepstra)
    if t.quantizer:  # fail fast on a mismatched file, before any audio is read
        q = load_quantizer(Path(t.quantizer).expanduser(), trust_pickle=t.trust_pickle)
        problem = quantizer_dim_problem(q.dim, enc.dim, t.quantizer, f"{enc.name} (dim {enc.dim})", t.layer)
        if problem:
            raise TokenizerError(problem)
    timing = {"encode_s": 0.0, "quantize_s": 0.0, "audio_s": 0.0}
    t0 = time.perf_counter()
    q, scale, cache = _quantizer(ctx, enc, rows, timing)
    tok = Tokenizer(enc, q, dedup=t.dedup, scale=scale)
    tok.save(ctx.out)  # before the shards, so a resumed run uses the same centroids
    fit_s = time.perf_counter() - t0

    def process(chunk: list[dict]) -> list[dict]:
        return _process(ctx, tok, chunk, cache, timing)

    out = run_sharded(ctx, rows, t.shard_size, process, UNITS_JSONL)
    n_units = np.array([len(r["units"]) for r in out]) if out else np.zeros(1)
    n_frames = np.array([r["n_frames"] for r in out]) if out else np.zeros(1)
    used = len({u for r in out for u in r["units"]})
    rejected = ctx.rejects.count  # distinct items, this attempt's and a crashed earlier one's
    return {"utterances": len(out), "rejected_total": rejected, "items_tried": len(rows),
            "items_failed": len(rows) - len(out),
            "encoder": enc.name, "n_units": q.k,
            "units_used": used, "frame_rate": enc.frame_rate, "quantizer": tok.quantizer_id,
            "mean_units": float(n_units.mean()), "dedup_ratio": float(n_units.sum() / max(1, n_frames.sum())),
            "fit_s": round(fit_s, 2), **{k: round(v, 2) for k, v in timing.items()},
            "x_realtime": round(timing["audio_s"] / max(1e-9, timing["encode_s"] + timing["quantize_s"]), 1)}


def _process(ctx: StageContext, tok: Tokenizer, chunk: list[dict], cache: dict[str, np.ndarray],
             timing: dict[str, float]) -> list[dict]:
    """Read, encode and quantise one shard; bad items go to rejects."""
    enc = tok.encoder
    good, wavs = [], []
    for row in chunk:
        try:
            wav = None if row["utt_id"] in cache else _read(row, enc)
        except AudioError as e:
            ctx.rejects.add(row["utt_id"], f"bad audio: {e.reason}", path=row.get("path"))
            continue
        good.append(row)
        wavs.append(wav)
    t0 = time.perf_counter()
    todo = [i for i, w in enumerate(wavs) if w is not None]
    feats = [cache.pop(r["utt_id"], None) for r in good]
    for i, f in zip(todo, _encode_safe(enc, [wavs[i] for i in todo], [good[i]["utt_id"] for i in todo], ctx)):
        feats[i] = f
    t1 = time.perf_counter()
    out = []
    for row, f in zip(good, feats):
        if f is None:
            continue
        units, durations = tok.units_of(f)
        out.append({"utt_id": row["utt_id"], "units": units.tolist(), "durations": durations.tolist(),
                    "n_frames": int(f.shape[0]), "encoder": enc.name, "quantizer": tok.quantizer_id})
    timing["encode_s"] += t1 - t0
    timing["quantize_s"] += time.perf_counter() - t1
    timing["audio_s"] += sum(f.shape[0] for f in feats if f is not None) / enc.frame_rate
    return out
