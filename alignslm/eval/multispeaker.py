"""Multi-speaker Spoken StoryCloze: sSC/tSC whose stories are not spoken by one voice throughout, reported
beside the single-speaker sets (which inflate sSC: the two endings come in the voice the model has just
heard).

Layout: the single-speaker one (alignslm.eval.benchdata.load_storycloze): a directory holding ``ssc/`` and/or
``tsc/`` (also ``sSC/``, ``sStoryCloze/``, ``tStoryCloze/`` ..., any case), each with
``<story>_correct.wav`` and ``<story>_incorrect.wav`` per story (sub-folders searched too).  A real set is
read from ``benchmarks.multispeaker_root``; the demo builds one under ``data/multispeaker``
(alignslm.demo.multispeaker: the demo's own sSC/tSC stories, the context in one voice and both endings in
another).

Scoring is sSC/tSC's (accuracy = share of pairs whose correct story scores strictly higher, ties counted),
with continuation-only scoring beside it when ``eval.continuation_only`` is on (one pass gives both:
alignslm.eval.continuation).  Results: ``benchmarks["ssc_multispeaker"]`` / ``["tsc_multispeaker"]`` (and
``..._multispeaker_continuation``), each with ``all`` and ``seconds``; when the single-speaker set has the
same story ids (the demo's do), ``same_stories`` gives both accuracies on the shared stories and their paired
difference with a bootstrap 95% CI over stories.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alignslm import logger
from alignslm.eval.benchdata import STORYCLOZE_DIRS, BenchmarkError, BenchmarkSet, find_subdir, load_storycloze
from alignslm.eval.tables import Cell, Column, bench, benchmark, first_benchmarks, model_table

SUFFIX = "_multispeaker"  # results key: "ssc_multispeaker", "tsc_multispeaker"
KINDS = ("ssc", "tsc")


def load_multispeaker(root: str | Path, check_audio: bool = True) -> dict[str, BenchmarkSet]:
    """``ssc_multispeaker`` / ``tsc_multispeaker`` -> the set, for each of ssc/ and tsc/ that ``root`` holds (at
    least one)."""
    root = Path(root).expanduser()
    out = {}
    for kind in KINDS:
        if find_subdir(root, STORYCLOZE_DIRS[kind]) is not None:
            bs = load_storycloze(root, kind, check_audio)
            bs.name = f"{kind}{SUFFIX}"
            out[bs.name] = bs
    if not out:
        names = ", ".join(n for kind in KINDS for n in STORYCLOZE_DIRS[kind])
        raise BenchmarkError(root, [f"no ssc or tsc directory (one of {names}, any case)"],
                             "Point benchmarks.multispeaker_root at a folder holding ssc/ and/or tsc/ with "
                             "<story>_correct.wav and <story>_incorrect.wav per story, or leave it unset.")
    return out


def score(lm: Any, units: Mapping[str, Mapping[str, Sequence[int]]], sets: Mapping[str, BenchmarkSet], mode: str,
          batch_size: int = 64, continuation_only: bool = True) -> dict[str, dict]:
    """Each set's sSC/tSC result (and, with ``continuation_only``, its continuation-only one from the same pass)."""
    from alignslm.eval.continuation import score_storycloze_both
    from alignslm.eval.scoring import score_storycloze, score_units

    if continuation_only:
        return score_storycloze_both(lm, units, sets, mode, batch_size)
    out: dict[str, dict] = {}
    for name, bset in sets.items():
        t0, stats = time.perf_counter(), {}
        scores = score_units(lm, units[name], mode, batch_size, stats)
        res = score_storycloze(bset.pairs, scores)
        res.update(scores=scores, n_utterances=len(scores), windowed=stats.get("windowed", 0),
                   seconds=round(time.perf_counter() - t0, 3))
        out[name] = res
        logger.info("%s: %.4f (%d pairs, %.1fs)", name, res["all"], res["n_pairs"], res["seconds"])
    return out


def same_stories(single: Mapping, single_pairs: Sequence[Mapping], multi: Mapping, multi_pairs: Sequence[Mapping],
                 n_boot: int = 2000, seed: int = 0) -> dict | None:
    """Both accuracies on the stories the two sets share (by story id) and their paired difference (multi -
    single) with a percentile bootstrap 95% CI over those stories; None when they share none."""
    one = dict(zip((str(p["id"]) for p in single_pairs), single.get("per_pair") or []))
    two = dict(zip((str(p["id"]) for p in multi_pairs), multi.get("per_pair") or []))
    ids = [i for i in two if i in one]
    if not ids:
        return None
    a = np.array([one[i] for i in ids], dtype=np.float64)  # (S,)
    b = np.array([two[i] for i in ids], dtype=np.float64)  # (S,)
    d = b - a
    out = {"n": len(ids), "one_voice": float(a.mean()), "two_voices": float(b.mean()), "diff": float(d.mean()),
           "lo": None, "hi": None}
    if n_boot > 0 and len(ids) > 1:
        idx = np.random.default_rng(seed).integers(0, len(ids), size=(n_boot, len(ids)))  # (B, S)
        means = d[idx].mean(axis=1)
        out["lo"], out["hi"] = float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))
    return out


def add_same_stories(bench: dict, benches: Mapping[str, BenchmarkSet], sets: Mapping[str, BenchmarkSet],
                     n_boot: int = 2000) -> None:
    """Put ``same_stories`` (:func:`same_stories`) into each multi-speaker result whose single-speaker set was
    scored too (before the per-pair lists leave the results)."""
    for kind in KINDS:
        name = f"{kind}{SUFFIX}"
        if name in bench and kind in bench and kind in benches and name in sets:
            bench[name]["same_stories"] = same_stories(bench[kind], benches[kind].pairs, bench[name],
                                                       sets[name].pairs, n_boot)


def report_table(results: Mapping, label: Any = str) -> str:
    """Markdown: sSC/tSC with one voice vs with the context and the ending in different voices, per model."""
    models = results.get("models", {})
    info = results.get("multispeaker") or {}
    keys = [k for k in KINDS if any(f"{k}{SUFFIX}" in (m.get("benchmarks") or {}) for m in models.values())]
    if not keys:
        return (info.get("note") or "Not measured (set benchmarks.multispeaker_root).") + "\n"
    cols = [c for k in keys for c in (
        Column(f"{k[0]}SC one voice", bench(k)), Column(f"{k[0]}SC multi-speaker", bench(f"{k}{SUFFIX}")),
        Column("same stories: diff [95% CI]", _same_stories(k)))]
    lines = model_table(models, cols, label)
    base = first_benchmarks(models)
    counts = ", ".join(f"{k[0]}SC {(base.get(k) or {}).get('n_pairs', 'n/a')} one-voice / "
                       f"{(base.get(f'{k}{SUFFIX}') or {}).get('n_pairs', 'n/a')} multi-speaker pairs" for k in keys)
    lines += ["", f"Accuracy in % (ties count as wrong); {counts}. Same stories: multi-speaker minus one-voice "
              "accuracy on the stories both sets hold (paired bootstrap over stories; n/a when they share none)."
              + (f" Source: {info['note']}." if info.get("note") else "")]
    return "\n".join(lines) + "\n"


def protocol_line(results: Mapping) -> str:
    p = (results.get("protocol") or {}).get("multispeaker") or {}
    if not p.get("pairs"):
        return f"- Multi-speaker sSC / tSC: {p.get('note') or 'not measured'}."
    pairs = ", ".join(f"{k}: {n}" for k, n in p["pairs"].items())
    return (f"- Multi-speaker sSC / tSC ({pairs} pairs; source {p.get('source') or 'n/a'}): scored as sSC / tSC"
            + (" (whole story and continuation only)" if p.get("continuation_only") else "")
            + (f"; {p['note']}" if p.get("note") else "") + ".")


def _same_stories(kind: str) -> Cell:
    return lambda m: _diff(benchmark(m, f"{kind}{SUFFIX}").get("same_stories"))


def _diff(s: Mapping | None) -> str:
    if not s:
        return "n/a"
    ci = f" [{100 * s['lo']:+.1f}, {100 * s['hi']:+.1f}]" if s.get("lo") is not None else ""
    return f"{100 * s['diff']:+.1f}{ci} (n={s['n']})"
