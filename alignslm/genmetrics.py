"""Generation metrics on held-out prompts and their confidence intervals.

Per model (base, round-1, ...), every continuation of every held-out prompt gets a judge score (1-5, or
None when the judge reply could not be parsed), a transcript perplexity when the judge provides one, and a
bigram auto-BLEU of its transcript.  A continuation without a usable score is a *reject*: it is counted
(``reject_share``), never scored as 0.

Confidence intervals are percentile bootstraps over *prompts* (the unit of sampling: the continuations
of one prompt are not independent).  The comparison of two models uses a paired bootstrap over the prompts
both models answered, with the same prompts and the same seeds on both sides.
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


def summarize_generations(rows: Sequence[Mapping], n_boot: int = 2000, seed: int = 0,
                          prompt_wer: float | None = None) -> dict[str, Any]:
    """Metrics of one model's continuations.

    ``rows``: one per continuation with prompt_id, k, score (float|None), perplexity (float|None),
    autobleu (float|None), reject (str|None: why the continuation has no usable score).
    """
    n = len(rows)
    rejected = [r for r in rows if r.get("reject") or r.get("score") is None]
    per_prompt = {f: per_prompt_mean(rows, f) for f in ("score", "perplexity", "autobleu")}
    ppl = _finite([r.get("perplexity") for r in rows])
    out = {
        "n_prompts": len({str(r["prompt_id"]) for r in rows}),
        "n_continuations": n,
        "judge_score": bootstrap_ci(list(per_prompt["score"].values()), n_boot, seed),
        "perplexity": bootstrap_ci(list(per_prompt["perplexity"].values()), n_boot, seed) if ppl.size else None,
        "perplexity_median": float(np.median(ppl)) if ppl.size else None,
        "autobleu": bootstrap_ci(list(per_prompt["autobleu"].values()), n_boot, seed),
        "reject_share": (len(rejected) / n) if n else None,
        "n_rejects": len(rejected),
        "prompt_wer": prompt_wer,
        "per_prompt": per_prompt,
    }
    return out


def compare_models(base: Mapping[str, Any], other: Mapping[str, Any], n_boot: int = 2000,
                   seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap of ``other - base`` per metric over the prompts both models answered."""
    out = {}
    for f in ("score", "perplexity", "autobleu"):
        a = base.get("per_prompt", {}).get(f, {})
        b = other.get("per_prompt", {}).get(f, {})
        out[f] = paired_bootstrap(a, b, n_boot, seed)
    return out


def score_histogram(scores: Sequence[float | None], bins: Sequence[float] = (0.5, 1.5, 2.5, 3.5, 4.5, 5.5)
                    ) -> dict[str, Any]:
    """Counts of judge scores in unit bins around 1..5 (None counted as missing)."""
    x = _finite(scores)
    counts, _ = np.histogram(x, bins=np.asarray(bins))
    return {"bins": list(bins), "counts": counts.tolist(), "missing": len(scores) - int(x.size)}
