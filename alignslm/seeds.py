"""Merge several run directories, one per seed, into one report across seeds.

    python -m alignslm.seeds merge runs/seed-0 runs/seed-1 runs/seed-2 --out runs/seeds

Each run directory must hold a finished evaluate stage (``evaluate/results.json``) and its ``config.yaml``.
The configs must be equal except ``run.seed``, ``run.run_dir`` and ``run.cache_dir``; any other difference is
named and refused unless ``--allow-config-diff`` (then the report lists it).  Two runs with the same
``run.seed`` are refused: they would count one seed twice.

Writes ``DIR/seeds.md`` and ``DIR/seeds.json``.  For every metric of every model (benchmarks, the judge
metric, reject share, auto-BLEU, ...), for every round-vs-base difference (win rate, judge gain, reject-share
and auto-BLEU differences, benchmark differences) and for the signal calibration: the per-seed values, their
mean, the sample standard deviation (n - 1) and a 95% t-interval across seeds,
``mean +- t(0.975, n - 1) * sd / sqrt(n)`` (n/a with one seed).  Each run's own bootstrap CIs measure the
noise of its held-out prompts; the interval here measures the run-to-run noise on top of it.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from alignslm.rundir import read_json, write_json, write_text

SEED_KEYS = ("run.seed", "run.run_dir", "run.cache_dir")
BENCH_LABELS = {"lexical": "sWUGGY", "syntactic": "sBLIMP", "ssc": "sSC", "tsc": "tSC",
                "ssc_multispeaker": "sSC multi-speaker", "tsc_multispeaker": "tSC multi-speaker"}
GEN_LABELS = {"autobleu": "auto-BLEU", "reject_share": "reject share",
              "log_perplexity": "judge ln-perplexity", "perplexity": "judge perplexity",
              "perplexity_median": "judge perplexity median", "prompt_wer": "prompt WER",
              "judge_score": "judge score", "sense": "signal (sense)"}
DIFF_LABELS = {"judge_gain": "judge gain (> 0 = better)", "score": "judge score diff",
               **{k: f"{v} diff" for k, v in GEN_LABELS.items()}}
CI_TEXT = ("95% CI across seeds: Student t-interval, mean +- t(0.975, n-1) * sd / sqrt(n), sd the sample "
           "standard deviation (n-1); n/a with one seed. Seeds with no value for a metric are left out "
           "of its n.")


class MergeError(Exception):
    """The run directories cannot be merged (the message says why and what to do)."""


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------


def across_seeds(values: Sequence[float | None]) -> dict[str, Any]:
    """Per-seed values -> n, mean, sd (n - 1) and the 95% t-interval; None and NaN values are left out."""
    vals = [None if v is None or math.isnan(float(v)) else float(v) for v in values]
    xs = [v for v in vals if v is not None]
    n = len(xs)
    out: dict[str, Any] = {"values": vals, "n": n}
    out.update(mean=None, sd=None, lo=None, hi=None)
    if n == 0:
        return out
    mean = statistics.mean(xs)  # exact (fractions): equal values give sd 0, not 1e-16
    out["mean"] = mean
    if n == 1:
        return out
    sd = statistics.stdev(xs)
    from scipy.stats import t

    half = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    out.update(sd=sd, lo=mean - half, hi=mean + half)
    return out


# --------------------------------------------------------------------------------------------------
# Reading the run directories
# --------------------------------------------------------------------------------------------------


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_run(run_dir: Path) -> dict[str, Any]:
    """A run directory's flat config and evaluate results."""
    cfg_path, res_path = run_dir / "config.yaml", run_dir / "evaluate" / "results.json"
    for p, what in ((cfg_path, "its config"), (res_path, "a finished evaluate stage")):
        if not p.is_file():
            raise MergeError(f"{run_dir}: {p.name} not found ({what}); is this a finished run directory?")
    cfg = _flatten(yaml.safe_load(cfg_path.read_text()) or {})
    results = read_json(res_path)
    return {"run_dir": str(run_dir), "seed": cfg.get("run.seed"), "config": cfg, "results": results}


def config_diff(runs: Sequence[Mapping]) -> dict[str, list]:
    """Config keys whose values differ between the runs: key -> the value in each run (None = absent)."""
    keys = sorted(set().union(*(r["config"] for r in runs)))
    diff = {}
    for k in keys:
        vals = [r["config"].get(k) for r in runs]
        if any(v != vals[0] for v in vals[1:]):
            diff[k] = vals
    return diff


def check_runs(runs: Sequence[Mapping], allow_config_diff: bool) -> dict[str, list]:
    """The config differences; raises MergeError on a repeated seed or a difference outside SEED_KEYS."""
    seeds = [r["seed"] for r in runs]
    for i, s in enumerate(seeds):
        if s in seeds[:i]:
            other = runs[seeds.index(s)]["run_dir"]
            raise MergeError(f"{other} and {runs[i]['run_dir']} both have run.seed={s}: "
                             "merging them would count one seed twice")
    diff = config_diff(runs)
    other = {k: v for k, v in diff.items() if k not in SEED_KEYS}
    if other and not allow_config_diff:
        lines = [f"  {k}: " + ", ".join(f"{r['run_dir']}={v!r}" for r, v in zip(runs, vals))
                 for k, vals in other.items()]
        raise MergeError("the runs differ in more than run.seed/run_dir/cache_dir:\n" + "\n".join(lines)
                         + "\n(pass --allow-config-diff to merge them anyway; the report lists these keys)")
    return diff


# --------------------------------------------------------------------------------------------------
# Which numbers
# --------------------------------------------------------------------------------------------------


def _judge_name(results: Mapping) -> str:
    for m in results.get("models", {}).values():
        metric = (m.get("generation") or {}).get("judge_metric")
        if metric:
            return str(metric)
    return "score"


def _bench_order(benchmarks: Mapping) -> list[tuple[str, Any]]:
    """The paper's order (sWUGGY, sBLIMP, sSC, tSC), then any other benchmark by name."""
    rank = {k: i for i, k in enumerate(BENCH_LABELS)}
    return sorted(benchmarks.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))


def model_metrics(results: Mapping, name: str) -> Iterator[tuple[str, float | None]]:
    """(metric, value) of one model: benchmark accuracies, then the generation metrics, the judge's first (CI
    dicts: their mean; plain floats such as reject_share and prompt_wer as they are; counts are left out)."""
    m = results.get("models", {}).get(name) or {}
    for key, b in _bench_order(m.get("benchmarks") or {}):
        if isinstance(b, Mapping) and "all" in b:
            yield BENCH_LABELS.get(key, key), b["all"]
    g = m.get("generation") or {}
    for key, v in sorted(g.items(), key=lambda kv: (kv[0] != "judge", kv[0])):  # the judge metric first
        label = f"judge ({_judge_name(results)})" if key == "judge" else GEN_LABELS.get(key, key)
        if isinstance(v, Mapping) and "mean" in v:
            yield label, v["mean"]
        elif isinstance(v, float):
            yield label, v


def comparison_metrics(results: Mapping, name: str) -> Iterator[tuple[str, float | None]]:
    """(metric, value) of one round against the base model: the paired win rate, the paired differences
    (model - base; the judge gain is signed so that > 0 is better) and the benchmark differences."""
    c = (results.get("comparisons") or {}).get(name) or {}
    if c.get("win_rate") is not None:
        yield "win rate", c["win_rate"].get("mean")
    for key, v in c.items():
        if isinstance(v, Mapping) and "diff" in v:
            yield DIFF_LABELS.get(key, f"{key} diff"), v["diff"]
    for key, v in _bench_order(c.get("benchmarks") or {}):
        yield f"{BENCH_LABELS.get(key, key)} diff", v


def calibration_metrics(results: Mapping) -> Iterator[tuple[str, float | None]]:
    """(metric, value) of the signal calibration: the truth's wins per class, base vs random units, the mean
    signal and accepted share per candidate class, and each gate as 1 (met) or 0."""
    cal = results.get("calibration") or {}
    for cls, w in (cal.get("wins") or {}).items():
        yield f"true continuation beats {cls}", (w or {}).get("mean")
    if cal.get("base_vs_random"):
        yield "base sample beats random units", cal["base_vs_random"].get("mean")
    for cls, c in (cal.get("classes") or {}).items():
        yield f"{cls}: mean signal", c.get("mean")
        yield f"{cls}: accepted", c.get("accepted")
    for gate, ok in (cal.get("gates") or {}).items():
        if isinstance(ok, bool):
            yield f"gate {gate} (1 = met)", float(ok)


def _table(per_run: Sequence[Mapping[str, float | None]]) -> dict[str, dict]:
    """Per-run {metric: value} -> {metric: across_seeds(...)}; first-seen order; all-None metrics dropped."""
    names = list(dict.fromkeys(k for d in per_run for k in d))
    out = {}
    for k in names:
        vals = [d.get(k) for d in per_run]
        if any(v is not None for v in vals):
            out[k] = across_seeds(vals)
    return out


def merge(runs: Sequence[Mapping], diff: Mapping[str, list]) -> dict[str, Any]:
    """The merged report as a JSON-able dict."""
    results = [r["results"] for r in runs]
    models = list(dict.fromkeys(n for res in results for n in res.get("models", {})))
    comps = list(dict.fromkeys(n for res in results for n in (res.get("comparisons") or {})))
    return {
        "runs": [{"run_dir": r["run_dir"], "seed": r["seed"]} for r in runs],
        "n_seeds": len(runs),
        "config_diff": dict(diff),
        "ci": CI_TEXT,
        "verdicts": [(res.get("verdict") or {}).get("state") for res in results],
        "models": {n: _table([dict(model_metrics(res, n)) for res in results]) for n in models},
        "comparisons": {n: _table([dict(comparison_metrics(res, n)) for res in results]) for n in comps},
        "calibration": _table([dict(calibration_metrics(res)) for res in results]),
    }


# --------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def stats_table(rows: Mapping[str, Mapping], seeds: Sequence[Any]) -> str:
    head = "| metric | " + " | ".join(f"seed {s}" for s in seeds) + " | n | mean | sd | 95% CI (t) |"
    lines = [head, "|---|" + "---|" * (len(seeds) + 4)]
    for name, s in rows.items():
        ci = "n/a" if s["lo"] is None else f"[{_fmt(s['lo'])}, {_fmt(s['hi'])}]"
        lines.append(f"| {name} | " + " | ".join(_fmt(v) for v in s["values"])
                     + f" | {s['n']} | {_fmt(s['mean'])} | {_fmt(s['sd'])} | {ci} |")
    return "\n".join(lines) + "\n"


def markdown(merged: Mapping) -> str:
    seeds = [r["seed"] for r in merged["runs"]]
    dirs = ", ".join(f"`{r['run_dir']}` (seed {r['seed']})" for r in merged["runs"])
    md = ["# alignslm: merged report across seeds", "",
          f"{merged['n_seeds']} run directories: {dirs}.", "", CI_TEXT, ""]
    other = {k: v for k, v in merged["config_diff"].items() if k not in SEED_KEYS}
    if other:
        md += ["**The configs differ beyond the seed** (merged with --allow-config-diff):", ""]
        for k, vals in other.items():
            md.append(f"- `{k}`: " + ", ".join(f"seed {s}: `{v!r}`" for s, v in zip(seeds, vals)))
        md.append("")
    else:
        md += ["Configs: equal except run.seed, run.run_dir and run.cache_dir.", ""]
    verdicts = ", ".join(f"seed {s}: {v or 'n/a'}" for s, v in zip(seeds, merged["verdicts"]))
    md += [f"Verdict per seed: {verdicts}.", "",
           "Benchmarks are accuracies in [0, 1]; differences are model - base (win rate: 0.5 = no change).", ""]
    md += ["## Each round against the base model", ""]
    for name, rows in merged["comparisons"].items():
        md += [f"### {name} vs base", "", stats_table(rows, seeds)]
    if not merged["comparisons"]:
        md += ["No rounds to compare.", ""]
    md += ["## Models", ""]
    for name, rows in merged["models"].items():
        md += [f"### {name}", "", stats_table(rows, seeds)]
    md += ["## Signal calibration", ""]
    md += [stats_table(merged["calibration"], seeds) if merged["calibration"] else "Not measured.\n"]
    return "\n".join(md)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def merge_dirs(run_dirs: Sequence[Path], out: Path, allow_config_diff: bool = False) -> dict[str, Any]:
    """Read, check and merge the run directories; write ``out/seeds.md`` and ``out/seeds.json``."""
    runs = [load_run(Path(d)) for d in run_dirs]
    diff = check_runs(runs, allow_config_diff)
    merged = merge(runs, diff)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "seeds.json", merged)
    write_text(out / "seeds.md", markdown(merged))
    return merged


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m alignslm.seeds", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("merge", help="merge run directories (one per seed) into seeds.md and seeds.json")
    m.add_argument("run_dirs", nargs="+", type=Path, help="finished run directories, one per seed")
    m.add_argument("--out", type=Path, required=True, help="directory for seeds.md and seeds.json")
    m.add_argument("--allow-config-diff", action="store_true",
                   help="merge even if the configs differ beyond run.seed/run_dir/cache_dir "
                        "(the report lists the keys)")
    a = ap.parse_args(argv)
    try:
        merged = merge_dirs(a.run_dirs, a.out, a.allow_config_diff)
    except MergeError as e:
        print(f"alignslm.seeds: {e}", file=sys.stderr)
        return 2
    other = sorted(k for k in merged["config_diff"] if k not in SEED_KEYS)
    print(f"merged {merged['n_seeds']} seeds into {a.out / 'seeds.md'} and {a.out / 'seeds.json'}"
          + (f"; configs differ in {', '.join(other)}" if other else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
