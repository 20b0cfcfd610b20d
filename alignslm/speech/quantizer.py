"""k-means quantizer: frames (N, D) float32 -> units (N,) int64.

Public API::

    fit(X, k, iters=20, seed=0) -> centroids (k, D) float32     # k-means++ init, Lloyd, empty-cluster repair
    assign(X, centroids) -> (N,) int64                          # nearest centroid, squared L2
    Quantizer(centroids, meta).assign(X) / .save(path)          # path.npy + path.json
    load_quantizer(path, trust_pickle=False) -> Quantizer       # .npy (+ .json) or a joblib KMeans .bin

    python -m alignslm.speech.quantizer convert in.bin out.npy --trust-pickle

The implementation is chosen once at import: the C++ extension ``alignslm._C`` when it was built,
else numpy. ``ALIGNSLM_IMPL=cpp|numpy`` forces one; every public function also takes ``impl=``.
Both paths validate inputs identically and raise ``ValueError`` naming the problem.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from alignslm import __version__, logger
from alignslm.impl import impl_for
from alignslm.rundir import atomic_path, write_text

# The "source" recorded in a trained quantizer's JSON. It names the fitting function as the first release
# wrote it (the module was alignslm.quantizer then); kept as it is so that quantizer files stay byte-identical.
FIT_SOURCE = "alignslm.quantizer.fit"
_ROWS_PER_BLOCK = 4096  # numpy path: rows per distance block, so (block, K) stays small


# ----------------------------------------------------------------------------------------------
# implementation selection (once, at import)
# ----------------------------------------------------------------------------------------------
def _load_ext() -> Any | None:
    try:
        from alignslm import _C  # type: ignore[attr-defined]
    except ImportError as e:
        return e
    return _C


_EXT = _load_ext()
_C = None if isinstance(_EXT, ImportError) else _EXT


_UNAVAILABLE = {"cpp": None if _C is not None else
                f"the C++ extension alignslm._C is not built ({_EXT}); reinstall with `pip install -e .` "
                "(and a C++ compiler), or unset ALIGNSLM_IMPL"}


def _impl(impl: str | None) -> str:
    """``impl`` argument > alignslm.impl (test override, ALIGNSLM_IMPL) > cpp when built, else numpy."""
    return impl_for("kmeans", _UNAVAILABLE, requested=impl)


def _select_impl() -> str:
    """The k-means implementation at import (alignslm.impl: ALIGNSLM_IMPL=cpp|numpy forces one), logged once."""
    impl = _impl(None)
    if impl == "cpp":
        logger.info("k-means quantizer: C++ extension alignslm._C (%s)", _C.build_info())
    else:
        why = "forced by ALIGNSLM_IMPL" if _C is not None else f"alignslm._C not available: {_EXT}"
        logger.info("k-means quantizer: numpy path (%s)", why)
    return impl


IMPL: str = _select_impl()


# ----------------------------------------------------------------------------------------------
# validation (the same rules as the C++ binding boundary)
# ----------------------------------------------------------------------------------------------
def _check_matrix(a: Any, name: str, finite: bool = True) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a numpy.ndarray of float32, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise ValueError(f"{name} must have dtype float32, got {a.dtype}; "
                         f"convert with {name}.astype(np.float32)")
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {a.shape}); need at least one row and one column")
    if finite:
        for s in range(0, a.shape[0], _ROWS_PER_BLOCK):  # blockwise: no N x D boolean temporary
            ok = np.isfinite(a[s:s + _ROWS_PER_BLOCK]).all(axis=1)
            if not ok.all():
                raise ValueError(f"{name} contains NaN or inf (first in row {s + int(np.flatnonzero(~ok)[0])})")
    return np.ascontiguousarray(a)


def _check_pair(X: Any, centroids: Any) -> tuple[np.ndarray, np.ndarray]:
    X = _check_matrix(X, "X")
    C = _check_matrix(centroids, "centroids")
    _check_dims(X, C)
    return X, C


def _check_dims(X: np.ndarray, C: np.ndarray) -> None:
    if X.shape[1] != C.shape[1]:
        raise ValueError(f"dimension mismatch: X has D={X.shape[1]} but centroids have D={C.shape[1]}")


# ----------------------------------------------------------------------------------------------
# numpy reference path
# ----------------------------------------------------------------------------------------------
def _np_assign(X: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid and its squared distance, in row blocks (never N x K). -> (N,) int64, (N,) float32"""
    c2 = np.einsum("kd,kd->k", C, C)  # (K,)
    labels = np.empty(X.shape[0], dtype=np.int64)
    dist = np.empty(X.shape[0], dtype=np.float32)
    for s in range(0, X.shape[0], _ROWS_PER_BLOCK):
        xb = X[s:s + _ROWS_PER_BLOCK]  # (B, D)
        d = c2[None, :] - 2.0 * (xb @ C.T)  # (B, K)  ||c||^2 - 2 x.c
        j = np.argmin(d, axis=1)
        labels[s:s + len(xb)] = j
        x2 = np.einsum("bd,bd->b", xb, xb)
        dist[s:s + len(xb)] = np.maximum(d[np.arange(len(xb)), j] + x2, 0.0)
    return labels, dist


def _np_min_dist(X: np.ndarray, x2: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared distance of each row of c (M, D) to every row of X (N, D); x2 = ||X||^2. -> (M, N) float64"""
    c2 = np.einsum("md,md->m", c, c).astype(np.float64)  # (M,)
    d = x2[None, :] + c2[:, None] - 2.0 * (c @ X.T).astype(np.float64)  # (M, N)
    return np.maximum(d, 0.0)


def _np_kmeanspp(X: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ (2 + log k local trials per centre). -> (k, D) float32"""
    n = X.shape[0]
    trials = 2 + int(math.log(k))
    x2 = np.einsum("nd,nd->n", X, X).astype(np.float64)  # (N,)
    centers = np.empty((k, X.shape[1]), dtype=np.float32)
    centers[0] = X[rng.integers(n)]
    closest = _np_min_dist(X, x2, centers[:1])[0]  # (N,)
    for c in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than k: any point will do
            cand = rng.integers(n, size=trials)
        else:
            cand = np.searchsorted(np.cumsum(closest), rng.random(trials) * total)
            cand = np.minimum(cand, n - 1)
        d = np.minimum(closest[None, :], _np_min_dist(X, x2, X[cand]))  # (trials, N)
        best = int(np.argmin(d.sum(axis=1)))
        centers[c] = X[cand[best]]
        closest = d[best]
    return centers


def auto_init_sample(n: int, k: int) -> int:
    """Rows used for k-means++ (the C++ path uses the same rule): min(N, max(10000, 40 K))."""
    return min(n, max(10_000, 40 * k))


def _np_fit(X: np.ndarray, k: int, iters: int, seed: int, init: np.ndarray | None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if init is not None:
        C = init.copy()
    else:
        s = auto_init_sample(X.shape[0], k)
        sample = X if s >= X.shape[0] else X[np.sort(rng.choice(X.shape[0], size=s, replace=False))]
        C = _np_kmeanspp(sample, k, rng)
    prev = None
    for _ in range(iters):
        labels, dist = _np_assign(X, C)
        counts = np.bincount(labels, minlength=k)
        _np_repair_empty(labels, dist, counts)
        if prev is not None and np.array_equal(labels, prev):
            break  # converged: the means would not move
        prev = labels
        sums = _np_cluster_sums(X, labels, k)  # (k, D) float64
        keep = counts > 0
        C[keep] = (sums[keep] / counts[keep, None]).astype(np.float32)
    return C


def _np_repair_empty(labels: np.ndarray, dist: np.ndarray, counts: np.ndarray) -> None:
    """Move each empty cluster onto one of the points farthest from their centroid (in place)."""
    empty = np.flatnonzero(counts == 0)
    if not len(empty):
        return
    far = np.argsort(-dist, kind="stable")[:len(empty)]
    for e, i in zip(empty, far):
        if counts[labels[i]] <= 1:  # never empty the donor
            continue
        counts[labels[i]] -= 1
        labels[i] = e
        counts[e] += 1


def _np_cluster_sums(X: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per-cluster sums of the rows of X, blockwise with sort + reduceat. -> (k, D) float64"""
    sums = np.zeros((k, X.shape[1]), dtype=np.float64)
    for s in range(0, X.shape[0], 16 * _ROWS_PER_BLOCK):
        lb = labels[s:s + 16 * _ROWS_PER_BLOCK]
        o = np.argsort(lb, kind="stable")
        ls = lb[o]
        starts = np.flatnonzero(np.r_[True, ls[1:] != ls[:-1]])
        sums[ls[starts]] += np.add.reduceat(X[s:s + len(lb)][o].astype(np.float64), starts, axis=0)
    return sums


# ----------------------------------------------------------------------------------------------
# public functions
# ----------------------------------------------------------------------------------------------
def fit(X: np.ndarray, k: int, iters: int = 20, seed: int = 0, impl: str | None = None,
        init: np.ndarray | None = None) -> np.ndarray:
    """k-means++ then ``iters`` Lloyd iterations on X (N, D) float32. -> centroids (k, D) float32

    k-means++ (greedy, 2 + log k trials) runs on ``auto_init_sample(N, k)`` random rows; Lloyd stops
    early when no label changes; an empty cluster takes the point farthest from its centroid.
    ``init`` (k, D) float32 replaces k-means++ (a warm start).
    """
    cpp = _impl(impl) == "cpp"
    X = _check_matrix(X, "X", finite=not cpp)  # the C++ binding checks finiteness itself (threaded)
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > X.shape[0]:
        raise ValueError(f"k={k} is larger than the number of points N={X.shape[0]}; use k <= N")
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    if cpp:
        return _C.fit(X, int(k), int(iters), int(seed), init=init)
    if init is not None:
        init = _check_matrix(init, "init")
        if init.shape != (k, X.shape[1]):
            raise ValueError(f"init must have shape (k, D) = ({k}, {X.shape[1]}), got {init.shape}")
    return _np_fit(X, int(k), int(iters), int(seed), init)


def assign(X: np.ndarray, centroids: np.ndarray, impl: str | None = None) -> np.ndarray:
    """Index of the nearest centroid (squared L2) for each row of X (N, D). -> (N,) int64"""
    if _impl(impl) == "cpp":
        return _C.assign(X, centroids)  # validates shapes, dtype, NaN/inf with the same messages
    X, C = _check_pair(X, centroids)
    return _np_assign(X, C)[0]


def inertia(X: np.ndarray, centroids: np.ndarray, impl: str | None = None) -> float:
    """Sum of squared distances of each row of X to its nearest centroid."""
    if _impl(impl) == "cpp":
        return float(_C.inertia(X, centroids))
    X, C = _check_pair(X, centroids)
    return float(_np_assign(X, C)[1].astype(np.float64).sum())


def _versions() -> dict[str, str]:
    v = {"alignslm": __version__, "numpy": np.__version__, "impl": IMPL}
    if _C is not None:
        v["alignslm._C"] = _C.__version__
    return v


class Quantizer:
    """Centroids (K, D) float32 plus metadata {k, dim, source, versions}."""

    def __init__(self, centroids: np.ndarray, meta: dict | None = None):
        self.centroids = _check_matrix(centroids, "centroids")
        k, dim = self.centroids.shape
        self.meta = {"source": FIT_SOURCE, "versions": _versions(), **(meta or {}),
                     "k": k, "dim": dim}

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def assign(self, X: np.ndarray) -> np.ndarray:
        """X (N, D) float32 -> (N,) int64 units."""
        return assign(X, self.centroids)

    def save(self, path: str | os.PathLike) -> Path:
        """Write <path>.npy and <path>.json atomically (a trailing .npy is accepted). -> the .npy path"""
        p = Path(path)
        base = p.with_suffix("") if p.suffix == ".npy" else p
        npy, js = base.parent / (base.name + ".npy"), base.parent / (base.name + ".json")
        with atomic_path(npy) as tmp, open(tmp, "wb") as f:
            np.save(f, self.centroids)
        meta = {k: v for k, v in self.meta.items() if k != "path"}  # where it was loaded from is not content
        write_text(js, json.dumps(meta, indent=2, sort_keys=True))
        return npy

    def __repr__(self) -> str:
        return f"Quantizer(k={self.k}, dim={self.dim}, source={self.meta.get('source')!r})"


def train_quantizer(X: np.ndarray, k: int, iters: int = 20, seed: int = 0) -> Quantizer:
    """fit() wrapped in a Quantizer with metadata."""
    C = fit(X, k, iters, seed)
    return Quantizer(C, {"source": FIT_SOURCE, "n_train": int(X.shape[0]), "iters": iters,
                         "seed": seed, "inertia": inertia(X, C)})


# ----------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------
def _load_npy(p: Path) -> Quantizer:
    try:
        C = np.load(p, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{p}: not a plain .npy array of centroids "
                         f"(pickled objects are refused): {e}") from e
    except (OSError, EOFError) as e:
        raise ValueError(f"{p}: cannot read .npy centroids: {e}") from e
    if C.dtype != np.float32:
        if C.dtype.kind != "f":
            raise ValueError(f"{p}: centroids must be floating point, got {C.dtype}")
        C = C.astype(np.float32)
    meta: dict = {"source": str(p)}
    js = p.with_suffix(".json")
    if js.exists():
        try:
            meta = {**json.loads(js.read_text()), "path": str(p)}
        except json.JSONDecodeError as e:
            raise ValueError(f"{js}: invalid quantizer metadata JSON: {e}") from e
    try:
        return Quantizer(C, meta)
    except ValueError as e:
        raise ValueError(f"{p}: invalid centroids: {e}") from e


def _load_joblib(p: Path, trust_pickle: bool) -> Quantizer:
    if not trust_pickle:
        raise PermissionError(
            f"{p} is a pickle/joblib file, and loading it can run arbitrary code. If you trust its source, "
            f"pass trust_pickle=True (config: tokenize.trust_pickle=true), or convert it once to plain "
            f"centroids with: python -m alignslm.speech.quantizer convert {p} {p.with_suffix('.npy')} "
            "--trust-pickle")
    try:
        import joblib
    except ImportError as e:
        raise ImportError("loading a scikit-learn .bin quantizer needs joblib and scikit-learn: "
                          "pip install 'alignslm[sklearn]'") from e
    try:
        with warnings.catch_warnings(record=True) as caught:  # sklearn warns when versions differ
            warnings.simplefilter("always")
            obj = joblib.load(p)
    except Exception as e:  # joblib/pickle raise many types for a damaged file
        raise ValueError(f"{p}: corrupt or unreadable joblib/pickle k-means file "
                         f"({type(e).__name__}: {e})") from e
    C = getattr(obj, "cluster_centers_", None)
    if C is None:
        C = obj if isinstance(obj, np.ndarray) else None
    if C is None:
        raise ValueError(f"{p}: expected a scikit-learn KMeans (with cluster_centers_), "
                         f"got {type(obj).__name__}")
    versions = _versions()
    try:
        import sklearn

        versions["sklearn"] = sklearn.__version__
    except ImportError:
        pass
    saved_with = next((getattr(w.message, "original_sklearn_version", None) for w in caught
                       if hasattr(w.message, "original_sklearn_version")), None)
    if saved_with:
        logger.warning("%s was saved with scikit-learn %s (installed: %s); only its centroids are used",
                       p, saved_with, versions.get("sklearn"))
    meta = {"source": str(p), "format": "sklearn-joblib", "versions": versions}
    if saved_with:
        meta["sklearn_saved_version"] = str(saved_with)
    return Quantizer(np.asarray(C, dtype=np.float32), meta)


def load_quantizer(path: str | os.PathLike, trust_pickle: bool = False) -> Quantizer:
    """Load centroids from a .npy (+ optional .json) or a joblib scikit-learn KMeans (.bin/.pkl/.joblib)."""
    p = Path(path)
    if not p.exists() and p.suffix == "" and p.with_suffix(".npy").exists():
        p = p.with_suffix(".npy")
    if not p.is_file():
        raise FileNotFoundError(f"quantizer file not found: {p}")
    with open(p, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        return _load_npy(p)
    if p.suffix == ".npy":
        raise ValueError(f"{p}: not a .npy file (bad magic {magic!r})")
    return _load_joblib(p, trust_pickle)


# ----------------------------------------------------------------------------------------------
# CLI: one-time conversion of a pickle quantizer to plain .npy + .json
# ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m alignslm.speech.quantizer", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    cv = sub.add_parser("convert", help="Convert a joblib sklearn KMeans (.bin) to <out>.npy + <out>.json")
    cv.add_argument("src")
    cv.add_argument("dst")
    cv.add_argument("--trust-pickle", action="store_true",
                    help="Required: confirms you trust the file (unpickling can run code).")
    args = ap.parse_args(argv)
    try:
        q = load_quantizer(args.src, trust_pickle=args.trust_pickle)
    except (PermissionError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = q.save(args.dst)
    print(f"wrote {out} and {out.with_suffix('.json')} (k={q.k}, dim={q.dim})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
