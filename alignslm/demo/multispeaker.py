"""A multi-speaker Spoken StoryCloze for the demo world, in the single-speaker layout (``<root>/ssc/`` and
``<root>/tsc/``, ``<k>_correct.wav`` / ``<k>_incorrect.wav``, read back through
alignslm.eval.benchdata.load_storycloze like the real one).

Single-speaker sets inflate sSC: with one voice throughout, the model compares two endings in the voice it
has just heard.  Here story ``k`` is the ``k``-th story of the demo's sSC/tSC (the same context and the same
two endings, alignslm.demo.benchmarks.cloze_endings), but the context is spoken by voice A and both endings
by voice B != A, the ordered pair (A, B) drawn from ``benchmarks.voices`` per story and set.  So the two
versions of a story differ only in the ending's words, as in the single-speaker set, and the single- vs
multi-speaker accuracy on the same stories measures what the speaker change costs.

Each file is the context recording, a pause, then the ending recording, joined as 16-bit samples (no
rescaling: the context part is sample-identical in both versions, so continuation-only scoring finds the
whole context as the shared unit prefix).  The pause makes the gap between the context's last word and the
ending's first word :data:`PAUSE_S`, the pause eSpeak NG itself puts between two sentences of one
utterance (0.29-0.30 s at 175 wpm for the three demo voices, from its word times).

Deterministic given the seed: the voices of story ``k`` come from a generator seeded by (seed, set, k),
the speech from the TTS cache (a function of text, voice and rate: alignslm.demo.tts).
``texts.jsonl`` records each file's story id, texts and voices.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from alignslm import logger
from alignslm.demo.benchmarks import cloze_endings
from alignslm.demo.stories import rng_for
from alignslm.demo.tts import synthesize_many
from alignslm.rundir import atomic_path, write_jsonl
from alignslm.speech.audio import SAMPLE_RATE

KINDS = ("ssc", "tsc")
PAUSE_S = 0.3


def story_voices(seed: int, kind: str, k: int, voices: list[str]) -> tuple[str, str]:
    """(voice of the context, voice of both endings) of story ``k`` of ``kind``: two different voices."""
    a, b = rng_for(seed, "storycloze_multispeaker", kind, k).sample(sorted(set(voices)), 2)
    return a, b


def _pcm(path: str) -> np.ndarray:
    """A cached wav's 16-bit samples, as they are.  (T,) int16"""
    import soundfile as sf

    x, sr = sf.read(path, dtype="int16")
    if sr != SAMPLE_RATE or x.ndim != 1:
        raise ValueError(f"{path}: expected 16 kHz mono, got {sr} Hz, shape {x.shape}")
    return x


def joined(head: np.ndarray, head_words: list[dict], tail: np.ndarray, tail_words: list[dict]) -> np.ndarray:
    """``head``, silence, ``tail``: the silence tops up the recordings' own trailing and leading silences (from
    the word times) to PAUSE_S between the last word of ``head`` and the first of ``tail``.  (T,) int16"""
    trailing = len(head) / SAMPLE_RATE - float(head_words[-1]["end"]) if head_words else 0.0
    leading = float(tail_words[0]["start"]) if tail_words else 0.0
    gap = max(0, round((PAUSE_S - trailing - leading) * SAMPLE_RATE))
    return np.concatenate([head, np.zeros(gap, dtype=np.int16), tail])


def _write_pcm(path: Path, x: np.ndarray) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), x, SAMPLE_RATE, subtype="PCM_16", format="WAV")


def write_demo_multispeaker(root: Path, *, n_pairs: int, seed: int, voices: list[str], rate: int,
                            n_topics: int | None, cache_dir: str | Path, workers: int = 1) -> dict:
    """Write ``<root>/ssc`` and ``<root>/tsc`` (``n_pairs`` stories each) and ``<root>/texts.jsonl``.
    Returns {pairs: {set: n}, files, voices, tts_s, seconds}."""
    if n_pairs < 1 or len(set(voices)) < 2:
        raise ValueError("the multi-speaker StoryCloze needs n_pairs >= 1 and two different voices")
    t0 = time.perf_counter()
    plan = {kind: [(k, sid, " ".join(ctx), good, bad, *story_voices(seed, kind, k, voices))
                   for k, (sid, ctx, good, bad) in enumerate(cloze_endings(seed, n_pairs, n_topics, kind))]
            for kind in KINDS}
    jobs = sorted({j for rows in plan.values() for _, _, ctx, good, bad, a, b in rows
                   for j in ((ctx, a, int(rate)), (good, b, int(rate)), (bad, b, int(rate)))})
    synth = dict(zip(jobs, synthesize_many(jobs, cache_dir, workers)))
    failed = [f"{t[:40]!r} ({v}): {s['error']}" for (t, v, _), s in synth.items() if "error" in s]
    if failed:
        raise RuntimeError(f"demo multi-speaker StoryCloze: {len(failed)} utterance(s) failed to synthesise: "
                           f"{'; '.join(failed[:5])}")
    tts_s = time.perf_counter() - t0
    texts, files = [], 0
    for kind, rows in plan.items():
        for k, sid, ctx, good, bad, a, b in rows:
            head = synth[(ctx, a, int(rate))]
            for label, ending in (("correct", good), ("incorrect", bad)):
                tail = synth[(ending, b, int(rate))]
                _write_pcm(root / kind / f"{k}_{label}.wav",
                           joined(_pcm(head["path"]), head["words"], _pcm(tail["path"]), tail["words"]))
                files += 1
                texts.append({"benchmark": kind, "file": f"{k}_{label}", "story_id": sid, "context": ctx,
                              "ending": ending, "context_voice": a, "ending_voice": b,
                              "correct": int(label == "correct")})
    write_jsonl(root / "texts.jsonl", texts)
    out = {"pairs": {kind: len(rows) for kind, rows in plan.items()}, "files": files, "voices": sorted(set(voices)),
           "tts_s": round(tts_s, 2), "seconds": round(time.perf_counter() - t0, 2)}
    logger.info("demo multi-speaker StoryCloze: %d files under %s (%.1fs)", files, root, out["seconds"])
    return out
