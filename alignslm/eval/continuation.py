"""Continuation-only scoring of spoken StoryCloze (sSC, tSC): compare only the endings, given the shared story.

The usual protocol scores each whole story (``[BOS, context, ending, EOS]``) and compares the two.  With the
per-token mean (``eval.score=mean``) the context's tokens -- the same on both sides -- dilute the difference
between the endings by the story's length; "On the Fallacy of Global Token Perplexity in Spoken Language
Model Evaluation" (arXiv 2601.06329) argues for likelihoods restricted to the part being judged.  Here:

    s(story) = sum (or mean, per ``eval.score``) of log p(x_t | x_<t) over the ending's tokens and EOS,

with the whole story as the left context.  The wavs are whole stories, so the split point comes from the
units: the context is the longest common prefix of the correct and the incorrect unit sequences (the same
context audio gives the same units until the first frame that hears a different ending; the demo's stories
are spoken by one deterministic voice, so their contexts are sample-identical).  Both sides are scored from
that token on.  In sum mode this equals whole-story scoring whenever the prefix is all of the context
(the shared tokens add the same log-probability to both sides); in mean mode it removes the dilution.  The
result records the prefix's share of the shorter story (``prefix_share``) and how many pairs share no prefix
at all (then the whole sequences are compared), so a reader can see whether the split was found.

Accuracy: share of pairs whose correct story scores strictly higher; ties are counted (as
alignslm.eval.scoring.score_storycloze).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from alignslm import logger
from alignslm.eval.tables import Column, bench, first_benchmarks, model_table, pct

SUFFIX = "_continuation"  # results key: "ssc_continuation", "tsc_continuation"
STORY_SETS = {"ssc": "sSC", "tsc": "tSC", "ssc_multispeaker": "sSC multi-speaker",
              "tsc_multispeaker": "tSC multi-speaker"}  # the report's order and labels


def shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two unit sequences."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def story_scores(lm: Any, units: Mapping[str, Sequence[int]], pairs: Sequence[Mapping], mode: str = "mean",
                 batch_size: int = 64) -> tuple[dict[str, float], dict[str, float], list[int]]:
    """(whole-story scores, continuation-only scores, per-pair shared prefix in units), from one pass.

    Targets of ``[BOS, u_1..u_n, EOS]`` are u_1..u_n, EOS; the whole story scores all of them (as
    alignslm.eval.scoring.score_units), the ending of a side whose shared prefix is p units only targets p+1..n+1
    (u_{p+1}..u_n and EOS: never empty).
    """
    from alignslm.eval.loglik import token_logprobs

    if mode not in ("mean", "sum"):
        raise ValueError(f"eval.score must be mean or sum, got {mode!r}")
    prefix = [shared_prefix(units[p["correct_file"]], units[p["incorrect_file"]]) for p in pairs]
    sides = [(p[f"{s}_file"], k) for p, k in zip(pairs, prefix) for s in ("correct", "incorrect")]
    seqs = [[lm.bos_id, *lm.units_to_ids(list(units[f])), lm.eos_id] for f, _ in sides]
    whole: dict[str, float] = {}
    ending: dict[str, float] = {}
    for (f, k), lp in zip(sides, token_logprobs(lm, seqs, batch_size)):
        tail = lp[k:]  # (n + 1 - k,) the ending's units and EOS
        whole[f] = float(lp.sum() / lp.size) if mode == "mean" else float(lp.sum())
        ending[f] = float(tail.sum() / tail.size) if mode == "mean" else float(tail.sum())
    return whole, ending, prefix


def continuation_scores(lm: Any, units: Mapping[str, Sequence[int]], pairs: Sequence[Mapping], mode: str = "mean",
                        batch_size: int = 64) -> tuple[dict[str, float], list[int]]:
    """(file id -> score of its ending given the shared context, per-pair prefix lengths in units)."""
    _, ending, prefix = story_scores(lm, units, pairs, mode, batch_size)
    return ending, prefix


def continuation_result(pairs: Sequence[Mapping], units: Mapping[str, Sequence[int]], scores: Mapping[str, float],
                        prefix: Sequence[int], mode: str) -> dict:
    """Continuation-only accuracy of one StoryCloze set from its ending scores (see the module docstring)."""
    c = np.array([scores[p["correct_file"]] for p in pairs], dtype=np.float64)  # (P,)
    w = np.array([scores[p["incorrect_file"]] for p in pairs], dtype=np.float64)  # (P,)
    shorter = np.array([min(len(units[p["correct_file"]]), len(units[p["incorrect_file"]])) for p in pairs])
    share = np.array(prefix, dtype=np.float64) / np.maximum(shorter, 1)  # (P,)
    wins = (c > w).astype(np.float64)
    return {"all": float(wins.mean()) if len(pairs) else None, "n_pairs": len(pairs), "ties": int((c == w).sum()),
            "per_pair": wins.tolist(), "scores": dict(scores), "mode": mode,
            "prefix_share": {"mean": float(share.mean()) if len(pairs) else None,
                             "min": float(share.min()) if len(pairs) else None},
            "no_shared_prefix": int(sum(k == 0 for k in prefix))}


def score_continuation(lm: Any, units: Mapping[str, Sequence[int]], pairs: Sequence[Mapping], mode: str = "mean",
                       batch_size: int = 64) -> dict:
    """Continuation-only accuracy of one StoryCloze set, scored on its own."""
    t0 = time.perf_counter()
    scores, prefix = continuation_scores(lm, units, pairs, mode, batch_size)
    return {**continuation_result(pairs, units, scores, prefix, mode), "seconds": round(time.perf_counter() - t0, 3)}


def score_storycloze_both(lm: Any, units: Mapping[str, Mapping[str, Sequence[int]]], benches: Mapping[str, Any],
                          mode: str, batch_size: int = 64) -> dict[str, dict]:
    """Every StoryCloze set of ``benches`` (``ssc``, ``tsc``, ``ssc_multispeaker`` ...): its whole-story result
    (the one alignslm.eval.scoring.score_benchmarks gives) and ``<set>_continuation``, from one pass of per-token
    log-probs per set: continuation-only scoring costs only its slicing (its ``seconds``); the pass is counted
    in the whole-story ``seconds``."""
    from alignslm.eval.scoring import score_storycloze

    out: dict[str, dict] = {}
    for k in benches:
        t0 = time.perf_counter()
        pairs = benches[k].pairs
        whole, ending, prefix = story_scores(lm, units[k], pairs, mode, batch_size)
        t1 = time.perf_counter()
        ctx = lm.max_context()
        res = score_storycloze(pairs, whole)
        res.update(scores=whole, n_utterances=len(whole), seconds=round(t1 - t0, 3),
                   windowed=sum(ctx is not None and len(u) + 2 > ctx for u in units[k].values()))
        out[k] = res
        cont = continuation_result(pairs, units[k], ending, prefix, mode)
        out[f"{k}{SUFFIX}"] = {**cont, "seconds": round(time.perf_counter() - t1, 3)}
        logger.info("%s: %.4f, continuation only %.4f (%d pairs, %.1fs)", k, res["all"], cont["all"], len(pairs),
                    t1 - t0)
    return out


def report_table(results: Mapping, label: Any = str) -> str:
    """Markdown: whole-story vs continuation-only sSC/tSC (and their multi-speaker sets) per model."""
    models = results.get("models", {})
    keys = [k for k in STORY_SETS if any(f"{k}{SUFFIX}" in (m.get("benchmarks") or {}) for m in models.values())]
    if not keys:
        return "Not measured (eval.continuation_only=false).\n"
    cols = [c for k in keys for c in (Column(f"{STORY_SETS[k]} whole", bench(k)),
                                      Column(f"{STORY_SETS[k]} continuation only", bench(f"{k}{SUFFIX}")))]
    lines = model_table(models, cols, label)
    base = first_benchmarks(models)
    shares = []
    for k in keys:
        r = base.get(f"{k}{SUFFIX}") or {}
        share = pct((r.get("prefix_share") or {}).get("mean"))
        shares.append(f"{STORY_SETS[k]}: the shared context is {share}% of the shorter story's units on average, "
                      f"{r.get('no_shared_prefix', 'n/a')} pair(s) share none")
    shares = "; ".join(shares)
    lines += ["", f"Accuracy in % (ties count as wrong). {shares}."]
    return "\n".join(lines) + "\n"
