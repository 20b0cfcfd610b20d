"""One benchmark harness and one CSV schema for every bench/bench_*.py (see docs/benchmarks.md).

    from harness import time_alternating, append_rows, device_name
    t = time_alternating({"ours": f, "peer": g}, repeats=7, warmup=1)   # A B A B ... -> seconds lists
    append_rows([row(...), ...])
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

COLUMNS = ["bench", "provider", "shape", "metric", "unit", "p50", "p20", "p80", "ratio_vs", "ratio",
           "device", "git_sha", "timestamp"]
RESULTS_CSV = Path(__file__).resolve().parent / "results.csv"


def device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} x{os.cpu_count()}"


def git_sha() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       cwd=Path(__file__).parent, stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def time_alternating(fns: dict[str, Callable[[], object]], repeats: int = 7, warmup: int = 1) -> dict[str, list[float]]:
    """Run each provider ``warmup`` times, then ``repeats`` rounds of A B A B ...; wall seconds per call."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            out[k].append(time.perf_counter() - t0)
    return out


def pcts(xs: list[float]) -> tuple[float, float, float]:
    a = np.asarray(xs, dtype=np.float64)
    return float(np.median(a)), float(np.percentile(a, 20)), float(np.percentile(a, 80))


def row(bench: str, provider: str, shape: str, metric: str, unit: str, values: list[float] | float,
        ratio_vs: str = "", ratio: float | None = None) -> dict:
    vals = values if isinstance(values, list) else [values]
    p50, p20, p80 = pcts(vals)
    return {"bench": bench, "provider": provider, "shape": shape, "metric": metric, "unit": unit,
            "p50": f"{p50:.6g}", "p20": f"{p20:.6g}", "p80": f"{p80:.6g}", "ratio_vs": ratio_vs,
            "ratio": "" if ratio is None else f"{ratio:.4g}", "device": device_name(), "git_sha": git_sha(),
            "timestamp": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def append_rows(rows: list[dict], path: Path = RESULTS_CSV) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        w.writerows(rows)


def print_table(rows: list[dict]) -> None:
    cols = ["bench", "provider", "shape", "metric", "unit", "p50", "ratio_vs", "ratio"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols))
