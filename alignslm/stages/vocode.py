"""Stage ``vocode`` (per round): continuation units -> wavs, and the prompt audio cut from the original.

Reads ``round-N/sample/samples.jsonl`` (prompt_id, utt_id, k, continuation, prompt_end_s), the vocoder
(``vocoder/vocoder.json``) and ``corpus/manifest.jsonl`` (utt_id -> path).  Writes ``wav/<prompt>_<k>.wav``
per continuation, ``prompt/<prompt>.wav`` per prompt (the original utterance from 0 to prompt_end_s) and
``audio.jsonl`` (prompt_id, k, path, seconds, prompt_path; paths relative to this directory).
Continuations are vocoded in batches of ``vocoder.batch_size``; an empty continuation, unit ids outside
the vocoder's table, or an unreadable original are rejects, never a failed batch.  Resumable per shard.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from alignslm import logger
from alignslm.rundir import StageContext, read_jsonl, run_sharded
from alignslm.speech.audio import SAMPLE_RATE, AudioError, write_prompt_wav, write_wav

AUDIO_JSONL = "audio.jsonl"


def _safe(name: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(name))


def _prompt_wav(ctx: StageContext, row: dict, manifest: dict[str, dict]) -> str:
    """Write (once) and return the relative path of the prompt audio; AudioError if it cannot be cut."""
    rel = f"prompt/{_safe(row['prompt_id'])}.wav"
    if (ctx.out / rel).is_file():
        return rel
    m = manifest.get(row.get("utt_id", row["prompt_id"]))
    if m is None:
        raise AudioError(str(row.get("utt_id")), "utterance not in corpus/manifest.jsonl")
    write_prompt_wav(ctx.inputs["corpus"] / m["path"], float(row["prompt_end_s"]), ctx.out / rel)
    return rel


def run(ctx: StageContext) -> dict:
    from alignslm.vocoder import load_vocoder, unit_problem, vocode_16k

    rows = read_jsonl(ctx.inputs["sample"] / "samples.jsonl")
    manifest = {r["utt_id"]: r for r in read_jsonl(ctx.inputs["corpus"] / "manifest.jsonl")}
    voc = load_vocoder(ctx.inputs["vocoder"], device=ctx.cfg.run.device)
    bs = ctx.cfg.vocoder.batch_size
    if voc.sample_rate != SAMPLE_RATE:
        logger.warning("vocoder sample rate %d Hz: wavs are resampled to %d Hz", voc.sample_rate, SAMPLE_RATE)

    def process(chunk: list[dict]) -> list[dict]:
        ok: list[tuple[dict, str]] = []
        for r in chunk:
            item = f"{r['prompt_id']}/{r['k']}"
            problem = unit_problem(r.get("continuation"), voc.n_units)
            if problem:
                ctx.rejects.add(item, problem)
                continue
            try:
                ok.append((r, _prompt_wav(ctx, r, manifest)))
            except AudioError as e:
                ctx.rejects.add(item, f"prompt audio: {e}")
        wavs = vocode_16k(voc, [r["continuation"] for r, _ in ok], bs, ctx.cfg.vocoder.threads)
        out = []
        for (r, prompt_rel), w in zip(ok, wavs):
            rel = f"wav/{_safe(r['prompt_id'])}_{int(r['k'])}.wav"
            write_wav(ctx.out / rel, w)
            out.append({"prompt_id": r["prompt_id"], "k": r["k"], "path": rel,
                        "seconds": round(w.size / SAMPLE_RATE, 3), "prompt_path": prompt_rel})
        return out

    merged = run_sharded(ctx, rows, max(bs * 4, 1), process, AUDIO_JSONL)
    secs = [r["seconds"] for r in merged]
    empty = sum(not r.get("continuation") for r in rows)  # the LM ended at once: a result, not a failure
    return {"continuations": len(merged), "empty_continuations": empty, "items_tried": len(rows),
            "items_failed": len(rows) - len(merged) - empty,
            "audio_seconds": round(float(np.sum(secs)), 1) if secs else 0.0,
            "mean_seconds": round(float(np.mean(secs)), 3) if secs else 0.0}
