"""Stage ``corpus``: the speech the pipeline learns from.

* ``corpus.manifest`` set: a real JSONL manifest (utt_id, path[, text, words, split, ...]) is validated
  and copied to ``manifest.jsonl`` with absolute paths, a duration and a split; rows whose audio is
  missing, unreadable or empty go to ``rejects.jsonl``.
* otherwise: the demo corpus (alignslm.demo.corpus): seeded stories spoken by eSpeak NG, one utterance
  per story, plus ``stories.jsonl`` with the true texts, topics and ending facts.  Its wavs are copies
  under ``wavs/`` and their paths are relative to this directory (``corpus_dir / row["path"]`` reads
  both kinds), so the run directory can move.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from alignslm.rundir import StageContext, hash_str, read_jsonl, write_json, write_jsonl
from alignslm.speech.audio import SAMPLE_RATE, AudioError, audio_info

REQUIRED = ("utt_id", "path")


def run(ctx: StageContext) -> dict:
    c = ctx.cfg.corpus
    t0 = time.time()
    if c.manifest:
        rows = load_manifest(c.manifest, c.split, ctx)
        if not rows:
            raise ValueError(f"corpus.manifest {c.manifest}: no usable rows (see {ctx.rejects.path})")
        write_jsonl(ctx.out / "manifest.jsonl", rows)
        # a row the corpus stage cannot use (missing or unreadable audio, a bad field) is a failure
        return {**_summary(rows, time.time() - t0, source="manifest"), "items_tried": len(rows) + ctx.rejects.count,
                "items_failed": ctx.rejects.count}
    from alignslm.demo.corpus import build_demo_corpus

    rows, stories = build_demo_corpus(
        ctx.out, n_stories=c.n_stories, seed=ctx.cfg.run.seed, n_topics=c.n_topics, voices=c.voices,
        rates=c.rates, split=c.split, cache_dir=ctx.cfg.run.cache_dir, workers=min(2, os.cpu_count() or 1),
        reject=ctx.rejects.add)
    if not rows:
        raise RuntimeError(f"demo corpus: every story failed to synthesise (see {ctx.rejects.path})")
    write_jsonl(ctx.out / "stories.jsonl", stories)
    write_jsonl(ctx.out / "manifest.jsonl", rows)
    summary = _summary(rows, time.time() - t0, source="demo")
    summary["n_topics"] = len({r["topic"] for r in rows})
    write_json(ctx.out / "corpus.json", summary)
    return summary


def _summary(rows: list[dict], seconds: float, source: str) -> dict:
    hours = sum(r["duration"] for r in rows) / 3600
    out = {"source": source, "utterances": len(rows), "hours": round(hours, 3),
           "build_seconds": round(seconds, 2)}
    for s in ("train", "dev", "test"):
        out[f"n_{s}"] = sum(r.get("split") == s for r in rows)
    return out


def _split_of(utt_id: str, shares: tuple) -> str:
    """Deterministic split from the id's hash (for manifests without a split column)."""
    u = int(hash_str("split", utt_id)[:8], 16) / 0xFFFFFFFF
    tot = float(sum(shares))
    return "train" if u < shares[0] / tot else "dev" if u < (shares[0] + shares[1]) / tot else "test"


def load_manifest(path: str | Path, shares: tuple, ctx: StageContext) -> list[dict]:
    """Validate a real manifest: bad rows go to ctx.rejects with the line number and the reason."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"corpus.manifest {path} does not exist (a JSONL file: utt_id, path per line)")
    rows, seen = [], set()
    for i, r in enumerate(read_jsonl(path), 1):
        where = f"{path}:{i}"
        missing = [k for k in REQUIRED if not r.get(k)]
        if missing:
            ctx.rejects.add(where, f"missing field(s) {', '.join(missing)}: every row needs utt_id and path")
            continue
        uid = str(r["utt_id"])
        if uid in seen:
            ctx.rejects.add(uid, f"duplicate utt_id at {where}: utt_ids must be unique")
            continue
        wav = Path(r["path"]).expanduser()
        wav = wav if wav.is_absolute() else (path.parent / wav)
        try:
            if not wav.exists():
                raise AudioError(wav, "file does not exist")
            sr, ch, frames = audio_info(wav)
            if frames == 0:
                raise AudioError(wav, "zero-length audio")
        except AudioError as e:
            ctx.rejects.add(uid, f"bad audio: {e}")
            continue
        if sr != SAMPLE_RATE or ch != 1:
            from alignslm import logger

            logger.warning("%s: %d Hz, %d channel(s); readers convert it to 16 kHz mono", wav, sr, ch)
        seen.add(uid)
        words = r.get("words")
        if words is not None and not _words_ok(words):
            ctx.rejects.add(uid, f"bad words field at {where}: expected [{{word, start, end}}] in seconds")
            continue
        rows.append({**r, "utt_id": uid, "path": str(wav.resolve()), "duration": round(frames / sr, 4),
                     "split": r.get("split") or _split_of(uid, shares)})
    return rows


def _words_ok(words: object) -> bool:
    if not isinstance(words, list):
        return False
    for w in words:
        if not (isinstance(w, dict) and "word" in w and isinstance(w.get("start"), (int, float))
                and isinstance(w.get("end"), (int, float)) and w["end"] >= w["start"]):
            return False
    return True


def check(cfg) -> list[str]:  # noqa: ANN001 - Config
    """--dry-run: the demo's speech engine is importable (a real manifest's existence is checked once, from the
    stage graph's external inputs, by alignslm.run.check_paths)."""
    c = cfg.corpus
    if c.manifest:
        return []
    try:
        import espeakng_loader  # noqa: F401
    except ImportError:
        return ["the demo corpus needs espeakng-loader: pip install 'alignslm[demo]'"]
    return []
