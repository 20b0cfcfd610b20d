"""k-means assignment and training: alignslm._C vs scikit-learn and faiss-cpu (issue 2, criterion 6).

    python bench/bench_kmeans.py [--quick] [--skip-fit] [--no-csv]

assign: N x D float32 rows to K centroids, providers alternated A B A B (harness.time_alternating):
  ours (alignslm._C.assign), sklearn KMeans.predict, faiss IndexFlatL2.search(k=1), and the floor:
  numpy X @ C.T of the same shape (the same 2 N D K FLOPs, no argmin) -> GFLOP/s ratio.
  Peak memory: extra resident memory (ru_maxrss high-water above the inputs) of one call, measured in
  a fresh subprocess per provider.
fit: alignslm fit(k, iters=10) vs sklearn KMeans(n_init=1, max_iter=10, algorithm="lloyd"); both
  inertias are computed by the same function and must agree within 1%. Two settings: (a) Lloyd only,
  both from the same initial centroids, at N; (b) each with its own k-means++ at --fit-n rows.
Correctness first: our labels equal sklearn's except at exact ties, or the run stops.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import append_rows, device_name, print_table, row, time_alternating  # noqa: E402

BENCH = "kmeans"
SQ = 3072  # side of the square matmul used as the practical peak


def data(n: int, d: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered float32 rows (like speech features) and K centroids drawn from them."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d), dtype=np.float32) * 2.0
    X = centers[rng.integers(k, size=n)] + rng.standard_normal((n, d), dtype=np.float32)
    C = X[rng.choice(n, size=k, replace=False)].copy()
    return X.astype(np.float32), C


def providers(X: np.ndarray, C: np.ndarray) -> dict:
    import faiss
    from sklearn.cluster import KMeans

    from alignslm import _C

    km = KMeans(C.shape[0], n_init=1, max_iter=1).fit(C)  # a fitted estimator, then our centroids
    km.cluster_centers_ = C.copy()
    index = faiss.IndexFlatL2(C.shape[1])
    index.add(C)
    CT = np.ascontiguousarray(C.T)
    A = np.random.default_rng(1).standard_normal((SQ, SQ), dtype=np.float32)
    return {
        "alignslm": lambda: _C.assign(X, C),
        "sklearn": lambda: km.predict(X),
        "faiss": lambda: index.search(X, 1)[1][:, 0],
        "numpy_matmul": lambda: X @ CT,
        "numpy_matmul_square": lambda: A @ A,  # the machine's practical float32 peak (2 SQ^3 FLOPs)
    }


def check_correct(X: np.ndarray, C: np.ndarray, fns: dict) -> None:
    ours, sk, fa = fns["alignslm"](), fns["sklearn"](), fns["faiss"]()
    for name, other in [("sklearn", sk), ("faiss", fa)]:
        rows = np.flatnonzero(ours != other)[:2000]
        x = X[rows].astype(np.float64)
        d_ours = ((x - C[ours[rows]]) ** 2).sum(1)
        d_other = ((x - C[other[rows]]) ** 2).sum(1)
        worst = float(np.max(np.abs(d_ours - d_other) / (1 + (x ** 2).sum(1)), initial=0.0))
        print(f"correctness vs {name}: {np.mean(ours != other) * 100:.4f}% labels differ, "
              f"max relative distance gap there {worst:.2e} (float32 near-ties)")
        if worst > 1e-5:
            raise SystemExit(f"alignslm disagrees with {name} beyond float32 ties")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def mem_child(provider: str, n: int, d: int, k: int) -> None:
    """Extra peak resident memory of one call: reset the high-water mark (VmHWM) after the inputs exist."""
    X, C = data(n, d, k)
    fns = providers(X, C)
    fns[provider]()  # warm (lazy allocations, thread pools)
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS
    out = fns[provider]()
    peak = _status_kib("VmHWM")
    del out
    print(json.dumps({"extra_mib": (peak - before) / 1024.0}))


def peak_memory(provider: str, n: int, d: int, k: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--mem-child", provider, "--n", str(n), "--d", str(d),
                          "--k", str(k)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["extra_mib"]


def bench_assign(n: int, d: int, k: int, repeats: int) -> list[dict]:
    X, C = data(n, d, k)
    fns = providers(X, C)
    check_correct(X, C, fns)
    t = time_alternating(fns, repeats=repeats, warmup=1)
    shape, flops = f"N={n},D={d},K={k}", 2.0 * n * d * k
    med = {p: float(np.median(v)) for p, v in t.items()}
    rows = []
    for p, v in t.items():
        sq = p == "numpy_matmul_square"
        f, shp = (2.0 * SQ ** 3, f"{SQ}x{SQ}x{SQ}") if sq else (flops, shape)
        rows.append(row(BENCH, p, shp, "assign_time", "s", v))
        rows.append(row(BENCH, p, shp, "assign_gflops", "GFLOP/s", [f / s / 1e9 for s in v]))
    for peer in ("sklearn", "faiss"):
        rows.append(row(BENCH, "alignslm", shape, "assign_speedup", "x", med[peer] / med["alignslm"],
                        ratio_vs=peer, ratio=med[peer] / med["alignslm"]))
    frac = med["numpy_matmul"] / med["alignslm"]
    rows.append(row(BENCH, "alignslm", shape, "assign_gflops_vs_matmul", "fraction", frac,
                    ratio_vs="numpy_matmul", ratio=frac))
    frac = (flops / med["alignslm"]) / (2.0 * SQ ** 3 / med["numpy_matmul_square"])
    rows.append(row(BENCH, "alignslm", shape, "assign_gflops_vs_matmul", "fraction", frac,
                    ratio_vs="numpy_matmul_square", ratio=frac))
    for p in ("alignslm", "sklearn", "faiss", "numpy_matmul"):
        rows.append(row(BENCH, p, shape, "assign_peak_extra_mem", "MiB", peak_memory(p, n, d, k)))
    return rows


def bench_fit(n: int, d: int, k: int, iters: int, repeats: int, same_init: bool) -> list[dict]:
    """same_init: both start Lloyd from the same k-means++ centroids (ours), so only Lloyd is timed;
    else each runs its own k-means++ (sklearn: greedy k-means++ on all rows; ours: on a subsample)."""
    from sklearn.cluster import KMeans

    from alignslm import _C

    X, _ = data(n, d, k, seed=1)
    C0 = _C.fit(X, k, 0, 123) if same_init else None
    res: dict[str, list] = {"alignslm": [], "sklearn": []}

    def ours():
        res["alignslm"].append(_C.fit(X, k, iters, len(res["alignslm"]), init=C0))

    def theirs():
        km = KMeans(k, n_init=1, max_iter=iters, algorithm="lloyd", random_state=len(res["sklearn"]),
                    init=C0 if same_init else "k-means++")
        res["sklearn"].append(km.fit(X).cluster_centers_.astype(np.float32))

    t = time_alternating({"alignslm": ours, "sklearn": theirs}, repeats=repeats, warmup=0)
    inert = {p: [_C.inertia(X, c) for c in cs] for p, cs in res.items()}
    ratio_i = float(np.median(inert["alignslm"]) / np.median(inert["sklearn"]))
    what = "lloyd_same_init" if same_init else "fit_with_init"
    print(f"{what}: inertia alignslm/sklearn = {ratio_i:.4f} (goal 0.99..1.01; <1 is better)")
    shape = f"N={n},D={d},K={k},iters={iters}"
    sp = float(np.median(t["sklearn"]) / np.median(t["alignslm"]))
    rows = [row(BENCH, p, shape, f"{what}_time", "s", v) for p, v in t.items()]
    rows += [row(BENCH, p, shape, f"{what}_inertia", "sum sq", v) for p, v in inert.items()]
    rows.append(row(BENCH, "alignslm", shape, f"{what}_inertia_ratio", "x", ratio_i, ratio_vs="sklearn",
                    ratio=ratio_i))
    rows.append(row(BENCH, "alignslm", shape, f"{what}_speedup", "x", sp, ratio_vs="sklearn", ratio=sp))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N=20000 (a smoke run, seconds)")
    ap.add_argument("--skip-fit", action="store_true")
    ap.add_argument("--skip-assign", action="store_true")
    ap.add_argument("--skip-lloyd", action="store_true", help="skip the Lloyd-from-shared-init comparison")
    ap.add_argument("--fit-n", type=int, default=20_000,
                    help="rows for the fit benchmark with each library's own k-means++ (sklearn's greedy "
                         "k-means++ on all rows is slow: ~10 min at 20000 rows on the 2-core VM); 0 skips it")
    ap.add_argument("--no-csv", action="store_true", help="print only, do not append to bench/results.csv")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--k", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--mem-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    n = args.n or (20_000 if args.quick else 200_000)
    if args.mem_child:
        return mem_child(args.mem_child, n, args.d, args.k)
    from alignslm import _C

    print(f"device: {device_name()}; alignslm._C {_C.build_info()}")
    t0 = time.time()
    rows = [] if args.skip_assign else bench_assign(n, args.d, args.k, args.repeats or (3 if args.quick else 5))
    if not args.skip_fit:
        if not args.skip_lloyd:
            rows += bench_fit(n, args.d, args.k, 10, args.repeats or (1 if args.quick else 2), same_init=True)
        if args.fit_n:
            rows += bench_fit(min(args.fit_n, n), args.d, args.k, 10, 1, same_init=False)
    print_table(rows)
    print(f"total {time.time() - t0:.0f} s")
    if not args.no_csv:
        append_rows(rows)


if __name__ == "__main__":
    os.environ.setdefault("ALIGNSLM_IMPL", "cpp")
    main()
