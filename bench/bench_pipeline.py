"""End-to-end throughput of the data loop: scored continuations per second, each stage's share, the bottleneck.

    python bench/bench_pipeline.py [--run-dir DIR] [--quick]

Without --run-dir it runs the demo pipeline (--quick: smoke sizes) into bench/out/pipeline-run and reads the
stage times the driver records in manifest.json.  A "scored continuation" is one that reached the judge
with a score (the unit of work of a round: sample -> vocode -> transcribe -> judge).  Rows are appended to
bench/results.csv; the peer pipeline's ratio comes from the per-stage benchmarks (bench_sampling, bench_asr,
bench_dpo), not from this script.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from harness import append_rows, print_table, row  # noqa: E402

LOOP = ("sample", "vocode", "transcribe", "judge", "pairs", "train")


def stage_times(run_dir: Path) -> tuple[dict[str, float], int, dict[str, float]]:
    """Seconds per round stage (summed over rounds), scored continuations, seconds of the shared stages."""
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    loop = {s: 0.0 for s in LOOP}
    other: dict[str, float] = {}
    scored = 0
    for key, e in stages.items():
        if not e.get("finished"):
            continue
        name = key.split("/")[-1]
        if key.startswith("round-") and name in loop:
            loop[name] += float(e["seconds"])
            if name == "judge":
                scored += int(e["summary"].get("judged", 0))
        else:
            other[key] = float(e["seconds"])
    return loop, scored, other


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", type=Path)
    ap.add_argument("--quick", action="store_true", help="smoke sizes")
    args = ap.parse_args()
    run_dir = args.run_dir
    if run_dir is None:
        run_dir = HERE / "out" / ("pipeline-smoke" if args.quick else "pipeline-demo")
        cmd = [sys.executable, "-m", "alignslm.run", "--quiet", f"run.run_dir={run_dir}"]
        subprocess.run(cmd + (["--smoke"] if args.quick else []), check=True, cwd=HERE.parent)
    loop, scored, other = stage_times(run_dir)
    total = sum(loop.values())
    shape = f"{run_dir.name}"
    rows = [row("pipeline", "alignslm", shape, "scored_continuations_per_s", "1/s", scored / max(total, 1e-9))]
    for s, sec in loop.items():
        rows.append(row("pipeline", s, shape, "share_of_loop_time", "frac", sec / max(total, 1e-9)))
    for k, sec in other.items():
        rows.append(row("pipeline", k, shape, "seconds", "s", sec))
    print_table(rows)
    bottleneck = max(loop, key=loop.get)
    print(f"\n{scored} scored continuations in {total:.1f} s of round stages "
          f"({scored / max(total, 1e-9):.2f}/s); bottleneck: {bottleneck} ({loop[bottleneck] / total:.0%})")
    append_rows(rows)


if __name__ == "__main__":
    main()
