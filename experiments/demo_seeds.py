"""The demo's gate on several seeds (issue 16, criterion 4).

For each seed, runs the cold demo (``python -m alignslm.run run.seed=S``) in its own run directory with its
own, initially empty, cache (so every seed builds its world, its LM and its vocoder from scratch), then
reads the finished run directories and writes ``experiments/demo_seeds.json``: per seed the paired win rate
of the last round against the base model (same held-out prompt and seed; a rejected continuation loses, two
rejects tie, ties count half) with its 95% bootstrap CI over prompts, the judge gain, the reject-share,
tSC and auto-BLEU differences, the held-out reward accuracy (the round-1 policy on round-2 pairs whose
prompts round 1 never saw), the signal's calibration and the wall time.  Everything in the JSON is read
from the run directories by this script, never written by hand.  Every metric across the seeds (mean, sd,
95% t-interval) goes to ``<root>/merged/seeds.md`` (alignslm.seeds).

    python experiments/demo_seeds.py --seeds 0-4                  # run what is missing, then collect
    python experiments/demo_seeds.py --seeds 0-4 --collect-only   # only read finished run directories
    python experiments/demo_seeds.py --seeds 0-2 -- unitlm.steps=800   # extra config overrides for every seed

A seed's gate holds when: the win rate's CI is above 0.5; the reject share does not rise significantly (its
paired CI is not above 0); tSC does not drop by more than 1 point; auto-BLEU does not rise significantly;
the held-out reward accuracy is >= 0.60.  The issue's goal: the gate holds in at least 4 of 5 seeds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignslm.eval.stats import paired_win_rate, reject_share_diff  # noqa: E402
from alignslm.rundir import read_json, read_jsonl, write_json  # noqa: E402
from alignslm.seeds import MergeError, merge_dirs  # noqa: E402

MIN_HELDOUT_ACCURACY = 0.60
MAX_TSC_DROP = 0.01


def parse_seeds(text: str) -> list[int]:
    """'0-4' -> [0, 1, 2, 3, 4]; '0,2,5' -> [0, 2, 5]."""
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return out


def run_seed(seed: int, root: Path, overrides: list[str]) -> None:
    """Run (or resume) the demo for one seed; the wall time of a run that started cold is recorded."""
    run_dir, cache = root / f"seed-{seed}", root / f"seed-{seed}" / "cache"
    if (run_dir / "report" / "headline.md").is_file() and (run_dir / "wall.json").is_file():
        return
    cold = not (run_dir / "manifest.json").exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "alignslm.run", f"run.seed={seed}", f"run.run_dir={run_dir}",
           f"run.cache_dir={cache}", *overrides]
    t0 = time.time()
    with open(run_dir / "demo_seeds.log", "a") as log:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    wall = time.time() - t0
    if rc != 0:
        raise SystemExit(f"seed {seed}: the demo failed (rc {rc}); see {run_dir / 'demo_seeds.log'}")
    write_json(run_dir / "wall.json", {"wall_s": round(wall, 1), "cold": cold, "load_end": os.getloadavg()[0],
                                       "overrides": overrides})


def _ci(d: dict | None) -> list | None:
    return None if not d or d.get("lo") is None else [d["lo"], d["hi"]]


def collect(seed: int, run_dir: Path) -> dict:
    """One seed's row, read from its finished run directory."""
    res = read_json(run_dir / "evaluate" / "results.json")
    manifest = read_json(run_dir / "manifest.json")["stages"]
    rounds = sorted(int(k.split("-")[1]) for k in res["models"] if k.startswith("round-"))
    last = f"round-{rounds[-1]}"
    comp = res["comparisons"][last]
    metric = (res["models"][last].get("generation") or {}).get("judge_metric", "sense")
    gens = {m: read_jsonl(run_dir / "evaluate" / m / "generations.jsonl") for m in ("base", last)}
    win = comp.get("win_rate") or paired_win_rate(gens["base"], gens[last], metric, 2000, 0)
    rej = comp.get("reject_share") or reject_share_diff(gens["base"], gens[last], metric, 2000, 0)
    heldout = (manifest.get(f"round-{rounds[-1]}/train", {}).get("summary") or {}).get("prior_policy_reward_accuracy")
    tsc = comp["benchmarks"].get("tsc")
    ab = comp.get("autobleu") or {}
    cal = res.get("calibration") or {}
    wall = read_json(run_dir / "wall.json") if (run_dir / "wall.json").is_file() else {}
    checks = {"win_rate_ci_above_0.5": win.get("lo") is not None and win["lo"] > 0.5,
              "reject_share_not_up": rej.get("lo") is None or rej["lo"] <= 0,
              "tsc_drop_le_1pt": tsc is not None and tsc >= -MAX_TSC_DROP,
              "autobleu_not_up": ab.get("lo") is None or ab["lo"] <= 0,
              "heldout_reward_accuracy_ge_0.60": heldout is not None and heldout >= MIN_HELDOUT_ACCURACY}
    base_b = res["models"]["base"]["benchmarks"]
    return {
        "seed": seed, "run_dir": str(run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir.resolve()),
        "model": last, "gate_met": all(checks.values()), "checks": checks,
        "win_rate": win.get("mean"), "win_rate_ci": _ci(win), "win_pairs": win.get("pairs"),
        "judge_metric": metric, "judge_gain": (comp.get("judge_gain") or {}).get("diff"),
        "judge_gain_ci": _ci({"lo": (comp.get("judge_gain") or {}).get("lo"),
                              "hi": (comp.get("judge_gain") or {}).get("hi")}),
        "reject_rate_base": res["models"]["base"]["generation"].get("reject_share"),
        "reject_rate_diff": rej.get("diff"), "reject_rate_diff_ci": _ci(rej),
        "tsc_base": base_b.get("tsc", {}).get("all"), "tsc_diff": tsc,
        "ssc_diff": comp["benchmarks"].get("ssc"), "swuggy_diff": comp["benchmarks"].get("lexical"),
        "sblimp_diff": comp["benchmarks"].get("syntactic"),
        "autobleu_diff": ab.get("diff"), "autobleu_diff_ci": _ci(ab),
        "heldout_reward_accuracy": heldout,
        "calibration": {"true_vs_base": (cal.get("wins", {}).get("base sample") or {}).get("mean"),
                        "true_vs_random": (cal.get("wins", {}).get("random units") or {}).get("mean"),
                        "base_vs_random": (cal.get("base_vs_random") or {}).get("mean"),
                        "gates": cal.get("gates")},
        "verdict": (res.get("verdict") or {}).get("line"),
        "wall_s": wall.get("wall_s"), "cold": wall.get("cold"), "load_1min_at_end": wall.get("load_end"),
        "stage_seconds": {k: v.get("seconds") for k, v in manifest.items()},
    }


def table(rows: list[dict]) -> str:
    """The README's table: one line per seed."""
    f = lambda x, p="{:.3f}": "n/a" if x is None else p.format(x)  # noqa: E731
    lines = ["| seed | win rate [95% CI] | reject share diff | tSC diff (pt) | auto-BLEU diff | held-out reward acc. "
             "| signal: truth > base / > random | cold wall (min) | gate |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = r["win_rate_ci"] or [None, None]
        cal = r["calibration"]
        lines.append(f"| {r['seed']} | {f(r['win_rate'])} [{f(ci[0])}, {f(ci[1])}] "
                     f"| {f(r['reject_rate_diff'], '{:+.3f}')} "
                     f"| {f(None if r['tsc_diff'] is None else 100 * r['tsc_diff'], '{:+.1f}')} "
                     f"| {f(r['autobleu_diff'], '{:+.4f}')} | {f(r['heldout_reward_accuracy'])} "
                     f"| {f(cal['true_vs_base'])} / {f(cal['true_vs_random'])} "
                     f"| {f(None if r['wall_s'] is None else r['wall_s'] / 60, '{:.1f}')} "
                     f"| {'held' if r['gate_met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0-4", help="seeds, e.g. 0-4 or 0,2,5")
    ap.add_argument("--root", type=Path, default=ROOT / "runs" / "demo-seeds", help="one run directory per seed")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "demo_seeds.json")
    ap.add_argument("--collect-only", action="store_true", help="do not run; read finished run directories")
    a = ap.parse_args(argv)
    seeds = parse_seeds(a.seeds)
    if not a.collect_only:
        for s in seeds:
            run_seed(s, a.root, overrides)
    rows = [collect(s, a.root / f"seed-{s}") for s in seeds
            if (a.root / f"seed-{s}" / "evaluate" / "results.json").is_file()]
    held = sum(r["gate_met"] for r in rows)
    out = {"seeds": rows, "n_seeds": len(rows), "gate_held": held,
           "goal": "gate holds in >= 4 of 5 seeds", "goal_met": len(rows) >= 5 and held >= 4,
           "machine": {"cpus": os.cpu_count()}}
    write_json(a.out, out)
    print(table(rows))
    print(f"gate held in {held} of {len(rows)} seeds; written {a.out}")
    if rows:  # every metric across the seeds: mean, sd, t-interval (python -m alignslm.seeds merge)
        try:
            merge_dirs([a.root / f"seed-{r['seed']}" for r in rows], a.root / "merged")
            print(f"across seeds: {a.root / 'merged' / 'seeds.md'}")
        except MergeError as e:
            print(f"not merged across seeds: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
