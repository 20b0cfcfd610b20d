"""SALMon (Maimon, Roth & Adi 2024, "A Suite for Acoustic Language Model Evaluation"): the loader for the
released layout and the official scoring rule.

Everything below follows the official code, ``salmon.py`` and ``baselines/inference.py`` of
github.com/slp-rl/salmon at commit 85e2daf7e73f15bcfa30ba2ad6da17f3c8a5edcd (read 2026-11):

* Layout: ``<salmon_root>/<part>/*.wav`` (one folder per part: ``bg_alignment``, ``bg_all_consistency``,
  ``bg_domain_consistency``, ``gender_consistency``, ``rir_consistency``, ``sentiment_alignment``,
  ``sentiment_consistency``, ``speaker_consistency``).  ``SalmonDataset`` groups the wavs of a part by
  ``int(stem.split("_")[1])`` (the ``i`` of ``sample_{i}_{j}.wav``), sorts each group's paths and takes the
  first as the positive and the second as the negative (``collate_fn``: ``pos, neg = zip(*batch)``), i.e.
  ``sample_{i}_0.wav`` positive, ``sample_{i}_1.wav`` negative; empty indices are skipped.  We load the same
  way and check what the official code assumes silently: every name is ``sample_{i}_{j}`` and every ``i`` has
  exactly ``_0`` and ``_1`` (a third option or a missing side is an error listing every offender).
* Rule: per pair, 1 if log-likelihood(positive) > log-likelihood(negative), 0.5 if they are equal, 0
  otherwise (``res[pos > neg] = 1; res[pos == neg] = 0.5; res[pos < neg] = 0``); the part's score is the plain
  mean over its pairs (no grouping by voice or id).  A NaN likelihood makes every comparison false: the pair
  scores 0 (counted here as ``undefined``).
* Likelihood (``SLMInferenceModel.log_likelihood`` for TWIST, ``mean_nll: true`` in every TWIST/pGSLM
  inference config): the units (+ offset) with *no* BOS and *no* EOS; the first unit is not predicted; the
  score is minus the mean cross-entropy of units 2..n given their prefix, i.e. the per-token mean of
  log p(u_t | u_<t) over t = 2..n (NaN for a single unit: 0 tokens).  ``salmon_score="official"`` computes
  exactly this (the softmax spans ``unitlm.support``; TWIST's own code uses the full vocabulary, our
  ``support=full``).  ``"eval"`` scores like the other benchmarks instead (``[BOS, units, EOS]``, the
  ``eval.score`` mean or sum), for comparison.

Equal unit sequences get exactly equal scores (alignslm.eval.loglik scores each distinct sequence once), so
a pair whose two files tokenise to the same units is a tie (0.5), as in the official code, where each file is
scored alone.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alignslm import logger
from alignslm.eval.benchdata import BenchmarkError, BenchmarkSet, check_wav, find_subdir
from alignslm.eval.tables import Column, bench, benchmark, first_benchmarks, model_table, pct

OFFICIAL_COMMIT = "85e2daf7e73f15bcfa30ba2ad6da17f3c8a5edcd"
# salmon.py's "all" (the leaderboard's eight parts), in its order
PARTS = ("bg_alignment", "bg_all_consistency", "bg_domain_consistency", "gender_consistency", "rir_consistency",
         "sentiment_alignment", "sentiment_consistency", "speaker_consistency")
LABELS = {"bg_alignment": "background alignment", "bg_all_consistency": "background consistency (random)",
          "bg_domain_consistency": "background consistency (in-domain)", "gender_consistency": "gender consistency",
          "rir_consistency": "room consistency", "sentiment_alignment": "sentiment alignment",
          "sentiment_consistency": "sentiment consistency", "speaker_consistency": "speaker consistency",
          "bg_level_consistency": "background level consistency (demo only)"}
SCORE_MODES = ("official", "eval")
PREFIX = "salmon/"  # results key of a part: "salmon/<part>"
_NAME = re.compile(r"^sample_(\d+)_(\d+)$")


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def find_parts(root: str | Path) -> list[str]:
    """Sub-folders of ``root`` holding ``*.wav`` files: the official parts in salmon.py's order, then others."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise BenchmarkError(root, ["SALMon directory does not exist"],
                             "Point benchmarks.salmon_root at the unpacked salmon_benchmark folder (one sub-folder "
                             "per part), or leave it unset.")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and any(d.glob("*.wav")))
    order = {p: i for i, p in enumerate(PARTS)}
    return sorted(found, key=lambda p: (order.get(p, len(order)), p))


def load_part(root: str | Path, part: str, check_audio: bool = True) -> BenchmarkSet:
    """The pairs of one part, as the official SalmonDataset groups them (see the module docstring)."""
    d = find_subdir(root, part)
    if d is None:
        raise BenchmarkError(Path(root) / part, [f"part folder {part} does not exist under {root}"])
    groups: dict[int, dict[int, Path]] = defaultdict(dict)
    problems = []
    for w in sorted(d.glob("*.wav")):  # the official code globs the folder itself, not sub-folders
        m = _NAME.match(w.stem)
        if not m:
            problems.append(f"{w.name}: name is not sample_<i>_<j>.wav")
            continue
        i, j = int(m[1]), int(m[2])
        if j in groups[i]:
            problems.append(f"{w.name}: sample {i} option {j} appears twice ({groups[i][j].name})")
        groups[i][j] = w
    for i, g in sorted(groups.items()):
        if sorted(g) != [0, 1]:
            problems.append(f"sample {i}: options {sorted(g)}, expected exactly 0 (positive) and 1 (negative)")
    if not groups and not problems:
        problems.append("no sample_<i>_<j>.wav files")
    if problems:
        raise BenchmarkError(d, problems, "Each sample i needs sample_i_0.wav (positive) and sample_i_1.wav "
                                          "(negative), as in the released SALMon.")
    pairs, items = [], []
    for i, g in sorted(groups.items()):
        pos, neg = g[0], g[1]
        pairs.append({"id": str(i), "voice": None, "correct_file": pos.stem, "incorrect_file": neg.stem,
                      "correct_path": str(pos.resolve()), "incorrect_path": str(neg.resolve())})
        items += [(pos.stem, str(pos.resolve())), (neg.stem, str(neg.resolve()))]
    bs = BenchmarkSet(PREFIX + part, "test", d.resolve(), items, pairs)
    return _screen(bs) if check_audio else bs


def _screen(bs: BenchmarkSet) -> BenchmarkSet:
    """Files that are not 16 kHz mono (or are empty) become rejects; their pairs are dropped and counted."""
    reasons = {fid: check_wav(p) for fid, p in bs.items}
    bad = {fid: why for fid, why in reasons.items() if why}
    if bad:
        bs.rejects = sorted(bad.items())
        bs.dropped = [p for p in bs.pairs if p["correct_file"] in bad or p["incorrect_file"] in bad]
        bs.pairs = [p for p in bs.pairs if p not in bs.dropped]
        logger.warning("%s: %d file(s) rejected, %d pair(s) dropped", bs.name, len(bad), len(bs.dropped))
    return bs


def load_salmon(root: str | Path, parts: Sequence[str] | None = None, check_audio: bool = True
                ) -> dict[str, BenchmarkSet]:
    """``"salmon/<part>"`` -> BenchmarkSet for every part under ``root`` (or the named ones); one
    BenchmarkError lists the problems of every part."""
    parts = list(parts) if parts else find_parts(root)
    if not parts:
        raise BenchmarkError(root, ["no part folder with sample_<i>_<j>.wav files"])
    out, problems = {}, []
    for p in parts:
        try:
            out[PREFIX + p] = load_part(root, p, check_audio)
        except BenchmarkError as e:
            problems += [f"{p}: {x}" for x in e.problems]
    if problems:
        raise BenchmarkError(root, problems, "Each part folder holds sample_<i>_0.wav (positive) and "
                                             "sample_<i>_1.wav (negative) for every i.")
    return out


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


def utterance_scores(lm: Any, units: Mapping[str, Sequence[int]], mode: str = "official", eval_score: str = "mean",
                     batch_size: int = 64) -> dict[str, float]:
    """file id -> log-likelihood under ``mode`` (official: no BOS/EOS, per-token mean over units 2..n, NaN with
    fewer than 2 units; eval: [BOS, units, EOS] with ``eval_score`` = mean | sum)."""
    from alignslm.eval.loglik import token_logprobs

    if mode not in SCORE_MODES:
        raise ValueError(f"eval.salmon_score must be one of {SCORE_MODES}, got {mode!r}")
    ids = list(units)
    official = mode == "official"
    seqs = [lm.units_to_ids(list(units[i])) if official else [lm.bos_id, *lm.units_to_ids(list(units[i])), lm.eos_id]
            for i in ids]
    out = {}
    for i, lp in zip(ids, token_logprobs(lm, seqs, batch_size)):
        if lp.size == 0:
            out[i] = math.nan  # the official 0/0
        elif official or eval_score == "mean":
            out[i] = float(lp.sum() / lp.size)
        else:
            out[i] = float(lp.sum())
    return out


def official_pair_score(pos: float, neg: float) -> float:
    """The official rule: 1 if pos > neg, 0.5 if equal, 0 otherwise (NaN compares false: 0)."""
    if pos > neg:
        return 1.0
    return 0.5 if pos == neg else 0.0


def score_part(pairs: Sequence[Mapping], scores: Mapping[str, float]) -> dict:
    """The part's score: the mean over pairs of :func:`official_pair_score`; ties and NaN pairs counted."""
    pos = np.array([scores[p["correct_file"]] for p in pairs], dtype=np.float64)  # (P,)
    neg = np.array([scores[p["incorrect_file"]] for p in pairs], dtype=np.float64)  # (P,)
    per = [official_pair_score(a, b) for a, b in zip(pos, neg)]
    return {"all": float(np.mean(per)) if per else None, "n_pairs": len(per), "ties": int((pos == neg).sum()),
            "undefined": int((np.isnan(pos) | np.isnan(neg)).sum()), "per_pair": per}


def score_salmon(lm: Any, units: Mapping[str, Mapping[str, Sequence[int]]], sets: Mapping[str, BenchmarkSet],
                 mode: str = "official", eval_score: str = "mean", batch_size: int = 64) -> dict[str, dict]:
    """``"salmon/<part>"`` -> result (``all``, ``n_pairs``, ``ties``, ``undefined``, ``per_pair``, ``scores``,
    ``seconds``, ``mode``) for every part."""
    import time

    out = {}
    for name, bs in sets.items():
        t0 = time.perf_counter()
        scores = utterance_scores(lm, units[name], mode, eval_score, batch_size)
        res = score_part(bs.pairs, scores)
        res.update(scores=scores, mode=mode, seconds=round(time.perf_counter() - t0, 3), n_utterances=len(scores))
        out[name] = res
        logger.info("%s: %.4f (%d pairs, %d ties)", name, res["all"], res["n_pairs"], res["ties"])
    return out


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def report_table(results: Mapping, label: Any = str) -> str:
    """Markdown: one row per model, one column per SALMon part (accuracy %, ties in the detail line)."""
    models = results.get("models", {})
    order = {p: i for i, p in enumerate(PARTS)}
    parts = sorted({k for m in models.values() for k in (m.get("benchmarks") or {}) if k.startswith(PREFIX)},
                   key=lambda k: (order.get(k[len(PREFIX):], len(order)), k))  # results.json sorts its keys
    info = results.get("salmon") or {}
    if not parts:
        return (info.get("note") or "Not measured (no SALMon data: set benchmarks.salmon_root).") + "\n"
    short = [p[len(PREFIX):] for p in parts]

    def mean(m: Mapping) -> str:
        ok = [v for v in (benchmark(m, p).get("all") for p in parts) if v is not None]
        return pct(np.mean(ok)) if ok else "n/a"

    lines = model_table(models, [Column(LABELS.get(s, s), bench(p)) for p, s in zip(parts, short)]
                        + [Column("mean", mean)], label)
    base = first_benchmarks(models)
    ties = ", ".join(f"{s}: {(base.get(p) or {}).get('ties', 'n/a')}/{(base.get(p) or {}).get('n_pairs', 'n/a')}"
                     for p, s in zip(parts, short))
    src = info.get("source", "n/a")
    sizes = sorted({int((base.get(p) or {}).get("n_pairs") or 0) for p in parts} - {0})
    noise = (f" A part of n pairs scored by a model at chance lands within 50 +- {98 / np.sqrt(sizes[0]):.1f} points "
             f"95% of the time (n = {', '.join(map(str, sizes))} here)." if sizes else "")
    lines += ["", f"Accuracy in % (50 = chance; ties count half, as in the official scorer). Source: {src}"
              + (f" ({info['note']})" if info.get("note") else "") + f". Ties (first model): {ties}.{noise}"]
    return "\n".join(lines) + "\n"
