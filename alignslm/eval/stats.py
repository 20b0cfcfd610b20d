"""Statistics of held-out generations and their confidence intervals (pure functions over rows).

Per model (base, round-1, ...), every continuation of every held-out prompt gets a judge score (1-5, or
None when the judge reply could not be parsed), a transcript perplexity when the judge provides one, and a
bigram auto-BLEU of its transcript.  A continuation without a usable score is a *reject*: it is counted
(``reject_share``), never scored as 0.

Confidence intervals are percentile bootstraps over *prompts* (the unit of sampling: the continuations
of one prompt are not independent).  The comparison of two models uses a paired bootstrap over the prompts
both models answered, with the same prompts and the same seeds on both sides.  The rows come from
:mod:`alignslm.eval.generation`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _finite(xs: Sequence[Any]) -> np.ndarray:
    a = np.array([float(x) for x in xs if x is not None and math.isfinite(float(x))], dtype=np.float64)
    return a


def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0,
                 alpha: float = 0.05) -> dict[str, float | None]:
    """Mean with a percentile bootstrap (1 - alpha) CI. None values are ignored (and counted)."""
    x = _finite(values)  # (N,)
    out: dict[str, float | None] = {"mean": None, "lo": None, "hi": None, "n": int(x.size)}
    if x.size == 0:
        return out
    out["mean"] = float(x.mean())
    if x.size == 1 or n_boot <= 0:
        out["lo"] = out["hi"] = out["mean"]
        return out
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))  # (B, N)
    means = x[idx].mean(axis=1)  # (B,)
    out["lo"], out["hi"] = (float(v) for v in np.quantile(means, [alpha / 2, 1 - alpha / 2]))
    return out


def paired_bootstrap(a: Mapping[str, float], b: Mapping[str, float], n_boot: int = 2000, seed: int = 0,
                     alpha: float = 0.05) -> dict[str, Any]:
    """Mean of b - a over the keys both have a value for, with a paired percentile bootstrap CI.

    ``p_le_0`` is the bootstrap share of resamples whose mean difference is <= 0 (a one-sided p-value for
    "b improves over a").
    """
    keys = sorted(k for k in a if k in b and a[k] is not None and b[k] is not None
                  and math.isfinite(a[k]) and math.isfinite(b[k]))
    out: dict[str, Any] = {"diff": None, "lo": None, "hi": None, "p_le_0": None, "n": len(keys)}
    if not keys:
        return out
    d = np.array([b[k] - a[k] for k in keys], dtype=np.float64)  # (N,)
    out["diff"] = float(d.mean())
    if d.size == 1 or n_boot <= 0:
        out["lo"] = out["hi"] = out["diff"]
        return out
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)  # (B,)
    out["lo"], out["hi"] = (float(v) for v in np.quantile(means, [alpha / 2, 1 - alpha / 2]))
    out["p_le_0"] = float((means <= 0).mean())
    return out


def per_prompt_mean(rows: Sequence[Mapping], field: str) -> dict[str, float]:
    """prompt_id -> mean of ``field`` over that prompt's continuations with a value (None skipped)."""
    acc: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        v = r.get(field)
        if v is not None and math.isfinite(float(v)):
            acc[str(r["prompt_id"])].append(float(v))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def log_perplexity_rows(rows: Sequence[Mapping]) -> list[dict]:
    """Rows with ``log_perplexity`` = ln(perplexity) (the judge's mean NLL per token) where a perplexity exists."""
    out = []
    for r in rows:
        v = r.get("perplexity")
        ok = v is not None and math.isfinite(float(v)) and float(v) > 0
        out.append({**r, "log_perplexity": math.log(float(v)) if ok else None})
    return out


JUDGE_FIELDS = {"score": "score", "perplexity": "log_perplexity", "sense": "sense"}
HIGHER_IS_BETTER = {"score": True, "perplexity": False, "sense": True}


def summarize_generations(rows: Sequence[Mapping], n_boot: int = 2000, seed: int = 0,
                          prompt_wer: float | None = None, judge_metric: str = "score") -> dict[str, Any]:
    """Metrics of one model's continuations.

    ``rows``: one per continuation with prompt_id, k, score (float|None), perplexity (float|None),
    autobleu (float|None), reject (str|None: why the continuation has no usable judgement).
    ``judge_metric`` names the judge's signal (the one the pairs were built from): ``score`` (1-5, higher is
    better), ``perplexity`` (the judge LM's perplexity of the transcript given the prompt's; compared as
    ln(perplexity), lower is better) or ``sense`` (alignslm.judge.signal, higher is better).  ``judge`` holds that
    metric's per-prompt mean with its CI.
    """
    if judge_metric not in JUDGE_FIELDS:
        raise ValueError(f"judge_metric={judge_metric!r}: expected one of {sorted(JUDGE_FIELDS)}")
    n = len(rows)
    rows = log_perplexity_rows(rows)
    field_ = JUDGE_FIELDS[judge_metric]
    rejected = [r for r in rows if r.get("reject") or r.get(field_) is None]
    per_prompt = {f: per_prompt_mean(rows, f) for f in ("score", "perplexity", "log_perplexity", "autobleu", "sense")}
    ppl = _finite([r.get("perplexity") for r in rows])
    out = {
        "n_prompts": len({str(r["prompt_id"]) for r in rows}),
        "n_continuations": n,
        "judge_metric": judge_metric,
        "judge": bootstrap_ci(list(per_prompt[field_].values()), n_boot, seed),
        "judge_score": bootstrap_ci(list(per_prompt["score"].values()), n_boot, seed),
        "perplexity": bootstrap_ci(list(per_prompt["perplexity"].values()), n_boot, seed) if ppl.size else None,
        "log_perplexity": (bootstrap_ci(list(per_prompt["log_perplexity"].values()), n_boot, seed)
                           if ppl.size else None),
        "perplexity_median": float(np.median(ppl)) if ppl.size else None,
        "autobleu": bootstrap_ci(list(per_prompt["autobleu"].values()), n_boot, seed),
        "reject_share": (len(rejected) / n) if n else None,
        "n_rejects": len(rejected),
        "prompt_wer": prompt_wer,
        "per_prompt": per_prompt,
    }
    return out


def summarize_genppl(rows: Sequence[Mapping], n_boot: int = 2000, seed: int = 0) -> dict:
    """exp of the bootstrap CI of the per-prompt mean ln GenPPL (a geometric mean with its CI)."""
    per = per_prompt_mean(rows, "log_genppl")
    ci = bootstrap_ci(list(per.values()), n_boot, seed)
    out = {k: (math.exp(ci[k]) if ci[k] is not None else None) for k in ("mean", "lo", "hi")}
    out.update(n=ci["n"], missing=sum(r.get("log_genppl") is None for r in rows), log=ci)
    return out


def compare_models(base: Mapping[str, Any], other: Mapping[str, Any], n_boot: int = 2000,
                   seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap of ``other - base`` per metric over the prompts both models answered.

    ``judge_gain`` is the improvement in the judge's own metric, signed so that > 0 is better: ``other -
    base`` for a 1-5 score, ``base - other`` for ln(perplexity); its ``p_le_0`` is the one-sided bootstrap
    p-value of "no improvement".
    """
    out: dict[str, Any] = {}
    for f in ("score", "perplexity", "log_perplexity", "autobleu", "sense", "log_genppl"):
        a = base.get("per_prompt", {}).get(f, {})
        b = other.get("per_prompt", {}).get(f, {})
        out[f] = paired_bootstrap(a, b, n_boot, seed)
    metric = other.get("judge_metric", base.get("judge_metric", "score"))
    f = JUDGE_FIELDS.get(metric, "score")
    a = base.get("per_prompt", {}).get(f, {})
    b = other.get("per_prompt", {}).get(f, {})
    out["judge_metric"] = metric
    higher = HIGHER_IS_BETTER.get(metric, True)
    out["judge_gain"] = paired_bootstrap(a, b, n_boot, seed) if higher else paired_bootstrap(b, a, n_boot, seed)
    return out


def _outcome(a: Mapping, b: Mapping, key: str) -> float:
    """1 if a beats b, 0.5 for a tie, 0 if b wins.  A rejected item loses against an accepted one; two
    rejects tie; otherwise the higher ``key`` wins."""
    va = None if a.get("reject") else a.get(key)
    vb = None if b.get("reject") else b.get(key)
    if va is None or vb is None:
        return 0.5 if va is None and vb is None else (1.0 if vb is None else 0.0)
    return 1.0 if va > vb else 0.5 if va == vb else 0.0


def win_rate(a_rows: Sequence[Mapping], b_rows: Sequence[Mapping], key: str = "sense", n_boot: int = 2000,
             seed: int = 0) -> dict[str, Any]:
    """How often a prompt's ``a`` row beats its ``b`` rows (every a x b pair of the same prompt_id; ties
    half, rejects lose): the mean over prompts of each prompt's share, with a bootstrap CI over prompts."""
    by_a: dict[str, list[Mapping]] = defaultdict(list)
    for r in a_rows:
        by_a[str(r["prompt_id"])].append(r)
    per: dict[str, list[float]] = defaultdict(list)
    for r in b_rows:
        for x in by_a.get(str(r["prompt_id"]), []):
            per[str(r["prompt_id"])].append(_outcome(x, r, key))
    out = bootstrap_ci([float(np.mean(v)) for v in per.values()], n_boot, seed)
    out["pairs"] = sum(len(v) for v in per.values())
    return out


def paired_win_rate(base_rows: Sequence[Mapping], other_rows: Sequence[Mapping], judge_metric: str = "sense",
                    n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """How often ``other``'s continuation beats ``base``'s for the same prompt and continuation index ``k``
    (the same sampling seed on both sides).  A rejected continuation loses against an accepted one, two
    rejects tie, ties count half, so a model cannot win by having more of its outputs rejected.  Mean over
    prompts of each prompt's share, with a percentile bootstrap CI over prompts; 0.5 = no difference.
    """
    field_ = JUDGE_FIELDS[judge_metric]
    sign = 1.0 if HIGHER_IS_BETTER[judge_metric] else -1.0

    def keyed(rows: Sequence[Mapping]) -> dict[tuple[str, int], dict]:
        out = {}
        for r in log_perplexity_rows(rows):
            v = r.get(field_)
            ok = not r.get("reject") and v is not None and math.isfinite(float(v))
            out[(str(r["prompt_id"]), int(r.get("k", 0)))] = {"reject": None if ok else "rejected",
                                                                "v": sign * float(v) if ok else None}
        return out

    a, b = keyed(base_rows), keyed(other_rows)
    per: dict[str, list[float]] = defaultdict(list)
    for key in sorted(set(a) & set(b)):
        per[key[0]].append(_outcome(b[key], a[key], "v"))
    out = bootstrap_ci([float(np.mean(v)) for v in per.values()], n_boot, seed)
    out["pairs"] = sum(len(v) for v in per.values())
    out["unpaired"] = len(set(a) ^ set(b))
    return out


def reject_share_diff(base_rows: Sequence[Mapping], other_rows: Sequence[Mapping], judge_metric: str = "sense",
                      n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap over prompts of ``other``'s reject share minus ``base``'s (> 0: more rejects); a
    reject is what ``summarize_generations`` counts as one (a reason, or no value of the judge metric)."""
    field_ = JUDGE_FIELDS[judge_metric]

    def share(rows: Sequence[Mapping]) -> dict[str, float]:
        acc: dict[str, list[float]] = defaultdict(list)
        for r in log_perplexity_rows(rows):
            acc[str(r["prompt_id"])].append(1.0 if r.get("reject") or r.get(field_) is None else 0.0)
        return {k: float(np.mean(v)) for k, v in acc.items()}

    return paired_bootstrap(share(base_rows), share(other_rows), n_boot, seed)


def class_summary(rows: Sequence[Mapping], key: str = "sense", n_boot: int = 2000, seed: int = 0) -> dict:
    """Accepted share and the mean ``key`` (with a bootstrap CI) of one class of outputs."""
    vals = [r.get(key) for r in rows if not r.get("reject") and r.get(key) is not None]
    out = bootstrap_ci(vals, n_boot, seed)
    out["accepted"] = len(vals) / len(rows) if rows else None
    out["n_rows"] = len(rows)
    return out


def calibration_summary(classes: Mapping[str, Sequence[Mapping]], key: str = "sense", n_boot: int = 2000,
                        seed: int = 0, truth: str = "true continuation") -> dict[str, Any]:
    """The calibration block: per class (truth, base samples, random units, probes) the accepted share and
    mean signal; the truth's win rate against every other class; and whether the gates hold (truth beats
    base samples in >= 80% of pairs, random units in >= 95%, and no other class that the chain lets through
    has a higher mean than the truth)."""
    t = classes[truth]
    out: dict[str, Any] = {"key": key, "classes": {k: class_summary(v, key, n_boot, seed) for k, v in classes.items()},
                           "wins": {k: win_rate(t, v, key, n_boot, seed) for k, v in classes.items() if k != truth}}
    if "base sample" in classes and "random units" in classes:  # is the base model worth aligning? (>= 0.90)
        out["base_vs_random"] = win_rate(classes["base sample"], classes["random units"], key, n_boot, seed)
    tm = out["classes"][truth]["mean"]
    beaten_by = [k for k, c in out["classes"].items()
                 if k != truth and c["mean"] is not None and tm is not None and c["mean"] >= tm]
    w = out["wins"]
    out["gates"] = {"vs_base_ge_0.80": (w.get("base sample") or {}).get("mean", 0) is not None
                    and (w.get("base sample") or {}).get("mean", 0) >= 0.80,
                    "vs_random_ge_0.95": (w.get("random units") or {}).get("mean", 0) is not None
                    and (w.get("random units") or {}).get("mean", 0) >= 0.95,
                    "no_class_above_truth": not beaten_by, "classes_above_truth": beaten_by}
    return out
