"""The demo LM's gates: pretrain the demo unit LM (the real ``unitlm`` stage) and score the demo mini benchmarks.

    python experiments/pretrain_gates.py RUN_DIR [--train] [--modes mean,sum] [--tag NAME] [key=value ...]

``RUN_DIR`` must hold ``corpus/``, ``tokenize/`` and ``benchmarks/`` (copy or link them from a demo run).
With ``--train`` it runs ``python -m alignslm.run --stage unitlm run.run_dir=RUN_DIR key=value ...`` first
(wall time and load average recorded).  Scoring is the evaluation code's: ``tokenize_items`` with the
run's tokenizer, ``score_benchmarks`` (official pair scoring), every pair of the four demo benchmarks.
Rows go to experiments/results.csv (bench=pretrain_gates) and a JSON summary to RUN_DIR/gates.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_CSV = ROOT / "experiments" / "results.csv"  # the studies' rows (bench/harness.py schema)
sys.path.insert(0, str(ROOT / "bench"))  # the shared harness
sys.path.insert(0, str(ROOT))

from harness import append_rows, row  # noqa: E402

GATES = {"sWUGGY": 0.70, "sBLIMP": 0.60, "tSC": 0.65}


def train(run_dir: Path, overrides: list[str]) -> dict:
    cmd = [sys.executable, "-m", "alignslm.run", "--stage", "unitlm", "--force", "--quiet",
           f"run.run_dir={run_dir}", *overrides]
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()[0]
    meta = json.loads((run_dir / "unitlm" / "unitlm.json").read_text())
    return {"wall_s": round(wall, 1), "load_start": round(load0, 2), "load_end": round(load1, 2),
            "dev_loss": meta.get("dev_loss"), "params": meta.get("params"),
            "final_loss": meta["train_log"][-1]["loss"] if meta.get("train_log") else None}


def bench_units(run_dir: Path, benches: dict) -> dict:
    """Benchmark units with the run's tokenizer, cached in RUN_DIR/bench_units.json by tokenizer id."""
    from alignslm.eval.scoring import tokenize_items
    from alignslm.speech.tokenizer import load_tokenizer

    tok = load_tokenizer(run_dir / "tokenize")
    key = hashlib.sha1(json.dumps(tok.describe(), sort_keys=True, default=str).encode()).hexdigest()[:12]
    cache = run_dir / f"bench_units_{key}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    units = {name: tokenize_items(tok, b.items) for name, b in benches.items()}
    cache.write_text(json.dumps(units))
    return units


def score(run_dir: Path, modes: list[str]) -> dict:
    import torch

    from alignslm.eval.benchdata import load_all
    from alignslm.eval.scoring import headline, score_benchmarks
    from alignslm.lm.unitlm import load_unitlm

    torch.set_num_threads(1)
    benches = load_all(run_dir / "benchmarks" / "data")
    units = bench_units(run_dir, benches)
    lm = load_unitlm(run_dir / "unitlm")
    return {m: headline(score_benchmarks(lm, units, benches, mode=m)) for m in modes}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--modes", default="mean,sum")
    ap.add_argument("--tag", default="")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_intermixed_args()
    run_dir = Path(a.run_dir).resolve()
    out = {"run_dir": str(run_dir), "overrides": a.overrides}
    if a.train:
        out["train"] = train(run_dir, a.overrides)
        print("train", out["train"], flush=True)
    out["scores"] = score(run_dir, a.modes.split(","))
    tag = a.tag or run_dir.name
    rows = []
    for m, h in out["scores"].items():
        gates = " ".join(f"{k}{'>=' if h[k] >= g else '<'}{g}" for k, g in GATES.items())
        print(f"{tag} {m}: " + " ".join(f"{k} {v:.3f}" for k, v in h.items()) + f"  [{gates}]", flush=True)
        rows += [row("pretrain_gates", tag, f"score={m}", k, "acc", v) for k, v in h.items()]
    if "train" in out:
        rows.append(row("pretrain_gates", tag, f"load {out['train']['load_start']}", "pretrain_wall", "s",
                        out["train"]["wall_s"]))
    append_rows(rows, RESULTS_CSV)
    (run_dir / "gates.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
