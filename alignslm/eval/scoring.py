"""Benchmark scoring: utterance log-likelihoods under the unit LM, ZeroSpeech 2021 scoring (sWUGGY =
lexical, sBLIMP = syntactic) exactly as the official scorer computes it, sSC/tSC pair accuracy, and the
export of a ZeroSpeech submission.

Protocol (stated in the report):
- utterance score = log-likelihood of ``[BOS, units, EOS]`` under the unit LM, summed over the predicted
  tokens (units + EOS) or averaged per token (``eval.score``: ``sum`` | ``mean``); higher = more probable;
- lexical/syntactic: a pair scores 1 if s(correct) > s(incorrect), 0.5 on a tie, 0 otherwise; the pair
  scores are averaged over the voices of a pair id, then over ids (``all``); lexical also per frequency band
  (``oov``, ``1-5``, ``6-20``, ``21-100``, ``>100`` with the official bin edges [0, 1, 5, 20, 100, inf) and
  in-vocabulary (every band but oov); syntactic also per type.  The plain mean over all (id, voice) pairs
  is reported next to it as ``pair_mean``;
- sSC/tSC: accuracy = share of pairs whose correct version scores strictly higher (ties are counted).
- submission: every file of the split is written (the official tool rejects an incomplete one); a file
  the loader rejected as bad audio gets the score that loses its pair (-inf correct / +inf incorrect
  side, :data:`LOSING_SCORE`), so the official number is a lower bound, and is listed in
  ``submission_filled``.  Our own numbers leave those pairs out (``dropped_pairs``).

The official tool (PyPI ``zerospeech-benchmarks``) computes the same numbers; tests/test_zerospeech_official.py
checks that on the same score files.  The official leaderboard averages the per-id scores after writing them
to CSV with 4 decimals; our numbers are the unrounded means (they differ by < 5e-5).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from alignslm import logger
from alignslm.rundir import write_text
from alignslm.speech.audio import AudioError, audio_info

BAND_EDGES = (0, 1, 5, 20, 100, math.inf)  # pandas.cut(..., right=False) in the official scorer
BAND_LABELS = ("oov", "1-5", "6-20", "21-100", ">100")
SCORE_MODES = ("mean", "sum")


class EvalInputError(ValueError):
    """Benchmark data or models that cannot be scored; the message names the files and the fix."""


class Scorer(Protocol):
    """What alignslm.lm.unitlm.UnitLM provides for scoring."""

    n_units: int

    def score_sequences(self, seqs: list[list[int]], add_bos_eos: bool = True, reduce: str = "sum",
                        batch_size: int = 64) -> np.ndarray: ...

    def max_context(self) -> int | None: ...


# --------------------------------------------------------------------------------------------------
# Checks that run before any scoring
# --------------------------------------------------------------------------------------------------


def _stem(f: str) -> str:
    return Path(str(f)).stem if ("/" in str(f) or str(f).endswith(".wav")) else str(f)


def _listing(xs: Sequence[str], n: int = 10) -> str:
    more = f" (and {len(xs) - n} more)" if len(xs) > n else ""
    return ", ".join(map(str, xs[:n])) + more


def check_benchmark(name: str, items: Sequence[tuple[str, str | Path]], pairs: Sequence[Mapping],
                    read_headers: bool = True) -> None:
    """Every wav exists (and has a readable header) and both sides of every pair are among the items.

    Raises :class:`EvalInputError` listing every problem of this benchmark at once.
    """
    problems: list[str] = []
    ids = {str(fid) for fid, _ in items}
    missing = [str(p) for _, p in items if not Path(p).is_file()]
    if missing:
        problems.append(f"{len(missing)} wav file(s) missing: {_listing(missing)}")
    elif read_headers:
        bad = []
        for _, p in items:
            try:
                audio_info(p)
            except AudioError as e:
                bad.append(str(e))
        if bad:
            problems.append(f"{len(bad)} unreadable wav file(s): {_listing(bad, 5)}")
    incomplete = []
    for i, pr in enumerate(pairs):
        sides = [pr.get("correct_file"), pr.get("incorrect_file")]
        lost = [str(s) for s in sides if s is None or _stem(s) not in ids]
        if lost:
            incomplete.append(f"pair {pr.get('id', i)} (voice {pr.get('voice', '-')}) lacks {'/'.join(lost)}")
    if incomplete:
        problems.append(f"{len(incomplete)} incomplete pair(s): {_listing(incomplete)}")
    if not pairs:
        problems.append("no pairs at all")
    if problems:
        raise EvalInputError(f"benchmark '{name}' cannot be scored: " + "; ".join(problems)
                             + ". Re-create or re-download the benchmark (stage 'benchmarks').")


def check_unit_counts(lm_units: int, quantizer_units: int, lm_source: str, quantizer_source: str) -> None:
    """The unit LM must model exactly the quantizer's units, otherwise scores are meaningless."""
    if int(lm_units) != int(quantizer_units):
        raise EvalInputError(
            f"the unit LM ({lm_source}) has {lm_units} units but the quantizer ({quantizer_source}) produces "
            f"{quantizer_units}: they were not trained together. Use the LM trained on this tokenizer's "
            f"units (or set unitlm.n_units / tokenize.quantizer to a matching pair).")


# --------------------------------------------------------------------------------------------------
# Utterance scores
# --------------------------------------------------------------------------------------------------


def score_units(lm: Scorer, units: Mapping[str, Sequence[int]], mode: str = "mean",
                batch_size: int = 64, stats: dict | None = None) -> dict[str, float]:
    """Log-likelihood of [BOS, units, EOS] per utterance (``mode`` = sum | per-token mean).

    Sequences are sorted by length before batching (little padding) and the scores returned by id.
    A sequence longer than the model's context is scored with a sliding window (:func:`windowed_loglik`,
    stride = half the context); ``stats["windowed"]`` counts them.
    """
    if mode not in SCORE_MODES:
        raise EvalInputError(f"eval.score must be one of {SCORE_MODES}, got {mode!r}")
    ids = list(units)
    empty = [i for i in ids if len(units[i]) == 0]
    if empty:
        raise EvalInputError(f"{len(empty)} utterance(s) have no units (silent or too short audio): "
                             f"{_listing(empty)}")
    ctx = lm.max_context() if hasattr(lm, "max_context") else None
    long_ = [i for i in ids if ctx is not None and len(units[i]) + 2 > ctx]
    short = sorted((i for i in ids if ctx is None or len(units[i]) + 2 <= ctx), key=lambda i: len(units[i]))
    out: dict[str, float] = {}
    if short:
        scores = np.asarray(lm.score_sequences([list(map(int, units[i])) for i in short], add_bos_eos=True,
                                               reduce=mode, batch_size=batch_size), dtype=np.float64)  # (N,)
        if scores.shape != (len(short),):
            raise RuntimeError(f"unit LM returned {scores.shape} scores for {len(short)} utterances")
        out.update({i: float(v) for i, v in zip(short, scores)})
    for i in long_:
        total, n = windowed_loglik(lm, units[i], int(ctx))
        out[i] = total / n if mode == "mean" else total
    bad = [i for i in ids if not math.isfinite(out[i])]
    if bad:
        raise RuntimeError(f"non-finite scores for {len(bad)} utterance(s): {_listing(bad)}")
    if stats is not None:
        stats["windowed"] = stats.get("windowed", 0) + len(long_)
        stats["context"] = ctx
    if long_:
        logger.info("%d of %d utterances are longer than the context (%s tokens): sliding window", len(long_),
                    len(ids), ctx)
    return {i: out[i] for i in ids}


def windowed_loglik(lm: Any, units: Sequence[int], context: int) -> tuple[float, int]:
    """(sum of log p, number of predicted tokens) of [BOS, units, EOS] with windows of ``context`` tokens.

    Window w covers tokens [b, b + context); it scores only the targets after the previous window's end,
    so every target is predicted once, with at least ``context // 2`` tokens of left context (stride =
    context // 2) -- the usual strided evaluation of sequences longer than a model's context.
    """
    import torch

    seq = [lm.bos_id, *lm.units_to_ids(list(units)), lm.eos_id]  # (L,)
    stride = max(1, context // 2)
    total, scored_to, begin = 0.0, 1, 0  # targets are positions 1..L-1; [1, scored_to) are done
    with torch.no_grad():
        while scored_to < len(seq):
            end = min(begin + context, len(seq))
            ids = torch.tensor([seq[begin:end]], device=lm.device)  # (1, W)
            logits = lm.model(input_ids=ids).logits[:, :-1]  # (1, W-1, V)
            tok = lm.token_logprobs(logits, ids[:, 1:])[0]  # (W-1,) targets begin+1 .. end-1
            total += float(tok[scored_to - begin - 1:].double().sum())
            scored_to = end
            begin += stride
    return total, len(seq) - 1


def pair_score(a: float, b: float) -> float:
    """Official pair score: 1 if a > b, 0.5 on a tie, 0 otherwise."""
    return 0.5 * (a == b) + float(a > b)


def _sides(pairs: Sequence[Mapping], scores: Mapping[str, float]) -> list[tuple[float, float]]:
    """(score of the correct file, of the incorrect file) per pair; every file missing from ``scores`` is
    named in one EvalInputError (a submission lacking a file cannot be scored)."""
    missing = [_stem(p[f"{s}_file"]) for p in pairs for s in ("correct", "incorrect")
               if _stem(p[f"{s}_file"]) not in scores]
    if missing:
        raise EvalInputError(f"{len(missing)} file(s) of the benchmark have no score: {_listing(missing)}; "
                             "a submission needs one '<filename> <score>' line per wav of the split")
    return [(scores[_stem(p["correct_file"])], scores[_stem(p["incorrect_file"])]) for p in pairs]


def _pair_rows(pairs: Sequence[Mapping], scores: Mapping[str, float]) -> list[tuple[Mapping, float]]:
    return [(p, pair_score(c, w)) for p, (c, w) in zip(pairs, _sides(pairs, scores))]


def _agg(vals: list[float]) -> dict:
    n = len(vals)
    mean = float(np.mean(vals)) if n else None
    std = float(np.std(vals, ddof=1)) if n > 1 else None
    return {"n": n, "score": mean, "std": std}


def _by_id(rows: list[tuple[Mapping, float]], keys: tuple[str, ...]) -> OrderedDict[tuple, list]:
    """Group (pair, score) rows by ``keys`` (first occurrence order); value: [first pair, scores...]."""
    groups: OrderedDict[tuple, list] = OrderedDict()
    for p, s in rows:
        k = tuple(str(p.get(x)) for x in keys)
        groups.setdefault(k, [p]).append(s)
    return groups


def frequency_band(freq: Any) -> str | None:
    """Official band of a word frequency (left-closed bins [0,1) [1,5) [5,20) [20,100) [100,inf))."""
    try:
        f = float(freq)
    except (TypeError, ValueError):
        return None
    if math.isnan(f):
        return None
    for lo, hi, lab in zip(BAND_EDGES[:-1], BAND_EDGES[1:], BAND_LABELS):
        if lo <= f < hi:
            return lab
    return None


def score_lexical(pairs: Sequence[Mapping], scores: Mapping[str, float]) -> dict:
    """sWUGGY as the official scorer: per-id mean over voices, then mean over ids; bands; in-vocab."""
    rows = _pair_rows(pairs, scores)
    groups = _by_id(rows, ("id",))
    by_pair = [{"id": k[0], "frequency": g[0].get("frequency"), "length": g[0].get("length"),
                "score": float(np.mean(g[1:]))} for k, g in groups.items()]
    bands: dict[str, list[float]] = {b: [] for b in BAND_LABELS}
    lengths: dict[Any, list[float]] = defaultdict(list)
    for r in by_pair:
        b = frequency_band(r["frequency"])
        if b is not None:
            bands[b].append(r["score"])
        if r["length"] is not None:
            lengths[r["length"]].append(r["score"])
    invocab = [s for b in BAND_LABELS[1:] for s in bands[b]]
    return {
        "all": float(np.mean([r["score"] for r in by_pair])),
        "invocab": float(np.mean(invocab)) if invocab else None,
        "pair_mean": float(np.mean([s for _, s in rows])),
        "by_frequency": {b: _agg(v) for b, v in bands.items()},
        "by_length": {str(k): _agg(v) for k, v in sorted(lengths.items(), key=lambda kv: float(kv[0]))},
        "n_ids": len(by_pair), "n_pairs": len(rows),
        "by_pair": by_pair,
    }


def score_syntactic(pairs: Sequence[Mapping], scores: Mapping[str, float]) -> dict:
    """sBLIMP as the official scorer: per (type, subtype, id) mean over voices, then mean; per type."""
    rows = _pair_rows(pairs, scores)
    groups = _by_id(rows, ("type", "subtype", "id"))
    by_pair = [{"type": k[0], "subtype": k[1], "id": k[2], "score": float(np.mean(g[1:]))}
               for k, g in groups.items()]
    types: dict[str, list[float]] = defaultdict(list)
    for r in by_pair:
        types[r["type"]].append(r["score"])
    return {
        "all": float(np.mean([r["score"] for r in by_pair])),
        "pair_mean": float(np.mean([s for _, s in rows])),
        "by_type": {t: _agg(v) for t, v in sorted(types.items())},
        "n_ids": len(by_pair), "n_pairs": len(rows),
        "by_pair": by_pair,
    }


def score_storycloze(pairs: Sequence[Mapping], scores: Mapping[str, float]) -> dict:
    """sSC/tSC: share of pairs whose correct story scores strictly higher; ties are counted separately."""
    sides = np.array(_sides(pairs, scores), dtype=np.float64).reshape(-1, 2)  # (P, 2)
    c, w = sides[:, 0], sides[:, 1]  # (P,), (P,)
    wins = (c > w).astype(np.float64)
    return {"all": float(wins.mean()), "pair_mean": float(wins.mean()), "n_pairs": len(pairs),
            "ties": int((c == w).sum()), "per_pair": wins.tolist()}


SCORERS = {"lexical": score_lexical, "syntactic": score_syntactic, "ssc": score_storycloze,
           "tsc": score_storycloze}


# --------------------------------------------------------------------------------------------------
# Submission export (official ZeroSpeech 2021 layout)
# --------------------------------------------------------------------------------------------------


# A file the loader rejected (not 16 kHz mono, empty) has no score, but the official tool needs every file of
# the split.  It gets the value that makes its pair lost whatever the other side scores: -inf (the lowest
# possible log-likelihood) on the correct side, +inf on the incorrect side; a partner file of such a pair that
# was not scored gets its side's value too.  The official number is then a lower bound (a dropped pair counts
# as wrong, never as right or as a tie); every such file is listed (score_benchmarks: ``submission_filled``).
LOSING_SCORE = {"correct": -math.inf, "incorrect": math.inf}


def losing_scores(dropped: Sequence[Mapping], scores: Mapping[str, float],
                  rejects: Sequence[tuple[str, str]] = ()) -> dict[str, dict]:
    """file id -> {score, side, pair, voice, reason} for every file of a dropped pair that has no score."""
    why = {str(f): r for f, r in rejects}
    out: dict[str, dict] = {}
    for pr in dropped:
        for side in ("correct", "incorrect"):
            fid = _stem(pr[f"{side}_file"])
            if fid in scores or fid in out:
                continue
            out[fid] = {"file": fid, "score": LOSING_SCORE[side], "side": side, "pair": pr.get("id"),
                        "voice": pr.get("voice"),
                        "reason": why.get(fid, "its pair was dropped (the other side was rejected)")}
    return out


def write_submission(sub_dir: str | Path, kind: str, split: str, items: Sequence[tuple[str, Any]],
                     scores: Mapping[str, float], dropped: Sequence[Mapping] = (),
                     rejects: Sequence[tuple[str, str]] = ()) -> Path:
    """``<sub>/<kind>/<split>.txt``: one line ``<file-stem> <score>`` per wav of the split: the items, in
    their order, then the files of ``dropped`` pairs (their rejected audio has no score: see LOSING_SCORE).

    Scores are written with ``repr`` (round-trip exact) so the official tool sees our exact values.
    """
    if kind not in ("lexical", "syntactic"):
        raise ValueError(f"ZeroSpeech submissions have lexical/ and syntactic/ parts, not {kind!r}")
    filled = losing_scores(dropped, scores, rejects)
    lines, seen = [], set()
    for fid in [str(f) for f, _ in items] + [_stem(p[f"{s}_file"]) for p in dropped for s in ("correct", "incorrect")]:
        if _stem(fid) in seen:
            continue
        seen.add(_stem(fid))
        s = scores.get(fid)
        if s is None:
            s = filled.get(_stem(fid), {}).get("score")
        if s is None:
            raise EvalInputError(f"no score for {fid} in {kind}/{split}: every file must appear exactly once")
        lines.append(f"{_stem(fid)} {float(s)!r}")
    path = Path(sub_dir) / kind / f"{split}.txt"
    write_text(path, "\n".join(lines) + "\n")
    meta = Path(sub_dir) / "meta.yaml"
    if not meta.exists():
        write_text(meta, _META)
    return path


_META = """\
# ZeroSpeech 2021 submission written by alignslm (fill in author/affiliation before uploading)
author: alignslm
affiliation: ''
description: 'unit LM log-likelihood of [BOS, units, EOS]'
open_source: true
train_set: ''
gpu_budget: 0
parameters:
  phonetic: {metric: cosine, frame_shift: 0.01}
  semantic: {metric: cosine, pooling: mean}
"""


def read_submission(path: str | Path, expected: Iterable[str] | None = None) -> dict[str, float]:
    """Read ``<stem> <score>`` lines back (used to score exactly what was exported).

    With ``expected`` (the file ids of the split, e.g. ``[f for f, _ in BenchmarkSet.items]``) the file must
    hold each of them exactly once and nothing else: a missing, unknown or repeated file is an error naming it.
    """
    out: dict[str, float] = {}
    repeated: list[str] = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        parts = line.split()
        if len(parts) != 2:
            raise EvalInputError(f"{path}:{i}: expected '<filename> <score>', got {line!r}")
        try:
            score = float(parts[1])
        except ValueError:
            raise EvalInputError(f"{path}:{i}: score {parts[1]!r} is not a number") from None
        if parts[0] in out:
            repeated.append(parts[0])
        out[parts[0]] = score
    if expected is not None:
        want = [_stem(f) for f in expected]
        missing = [f for f in want if f not in out]
        unknown = sorted(set(out) - set(want))
        problems = [f"{len(x)} {what} file(s): {_listing(x)}" for x, what in
                    ((missing, "missing"), (unknown, "unknown"), (repeated, "repeated")) if x]
        if problems:
            raise EvalInputError(f"{path}: " + "; ".join(problems) + " (one line per wav of the split, each once)")
    return out


# --------------------------------------------------------------------------------------------------
# The whole benchmark evaluation for one model
# --------------------------------------------------------------------------------------------------


def score_benchmarks(lm: Scorer, units: Mapping[str, Mapping[str, Sequence[int]]],
                     benches: Mapping[str, Any], mode: str = "mean", batch_size: int = 64,
                     submission_dir: Path | None = None, split: str = "dev") -> dict:
    """Score every benchmark for one model.

    ``units``: benchmark name -> file id -> units (tokenised once, shared by every model);
    ``benches``: benchmark name -> BenchmarkSet (``.items``, ``.pairs``).  Returns name -> metrics
    (plus ``seconds`` and the utterance ``scores``).
    """
    out: dict[str, Any] = {}
    for name, bset in benches.items():
        t0, stats = time.perf_counter(), {}
        scores = score_units(lm, units[name], mode, batch_size, stats)
        res = SCORERS[name](bset.pairs, scores)
        res["seconds"] = round(time.perf_counter() - t0, 3)
        res["windowed"] = stats.get("windowed", 0)  # utterances longer than the context (sliding window)
        res["n_utterances"] = len(scores)
        if submission_dir is not None and name in ("lexical", "syntactic"):
            dropped, rejects = bset.dropped, bset.rejects
            write_submission(submission_dir, name, split, bset.items, scores, dropped, rejects)
            filled = losing_scores(dropped, scores, rejects)
            res["submission_filled"] = [{**f, "score": repr(f["score"])} for f in filled.values()]
            if filled:
                logger.warning("%s submission: %d file(s) without a score (rejected audio, or its pair's partner) "
                               "written with the pair-losing score (-inf correct / inf incorrect): the official "
                               "number is a lower bound; see submission_filled in results.json", name, len(filled))
        res["scores"] = scores
        out[name] = res
        logger.info("%s: %.4f (%d pairs, %.1fs)", name, res["all"], res["n_pairs"], res["seconds"])
    return out


def headline(bench_results: Mapping[str, Mapping]) -> dict[str, float | None]:
    """The four numbers of the paper's table (fractions): sWUGGY, sBLIMP, sSC, tSC."""
    key = {"sWUGGY": "lexical", "sBLIMP": "syntactic", "sSC": "ssc", "tSC": "tsc"}
    return {k: (bench_results[v]["all"] if v in bench_results else None) for k, v in key.items()}


def tokenize_items(tokenizer: Any, items: Sequence[tuple[str, Any]], batch_size: int = 16) -> dict[str, list[int]]:
    """file id -> units, through ``tokenizer.encode(list of 16 kHz waveforms)`` (alignslm.speech.tokenizer).

    Audio that cannot be read raises :class:`EvalInputError` naming the file (before any scoring).
    """
    from alignslm.speech.audio import read_audio

    out: dict[str, list[int]] = {}
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        try:
            wavs = [read_audio(p) for _, p in chunk]  # [(T_i,)]
        except AudioError as e:
            raise EvalInputError(f"benchmark audio cannot be used: {e}") from e
        for (fid, _), enc in zip(chunk, tokenizer.encode(wavs)):
            units = enc[0] if isinstance(enc, tuple) else enc
            out[str(fid)] = [int(u) for u in units]
    return out
