"""k-means quantizer: correctness against scikit-learn, both implementations, loading, bad input."""

from __future__ import annotations

import json
import pickle

import joblib
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from alignslm.speech import quantizer as q

IMPLS = ["numpy", pytest.param("cpp", marks=pytest.mark.skipif(q._C is None, reason="alignslm._C not built"))]


@pytest.fixture(params=IMPLS)
def impl(request):
    return request.param


def brute_dist(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Exact squared distances in float64. -> (N, K)"""
    X64, C64 = X.astype(np.float64), C.astype(np.float64)
    return (X64 ** 2).sum(1)[:, None] - 2 * X64 @ C64.T + (C64 ** 2).sum(1)[None, :]


def assert_same_up_to_ties(got: np.ndarray, want: np.ndarray, X: np.ndarray, C: np.ndarray, rtol=1e-5):
    """Labels equal, except where both centroids are at the same distance up to float32 rounding."""
    d = brute_dist(X, C)
    rows = np.flatnonzero(got != want)
    gap = np.abs(d[rows, got[rows]] - d[rows, want[rows]])
    scale = (X[rows].astype(np.float64) ** 2).sum(1) + 1.0
    assert np.all(gap <= rtol * scale), f"{len(rows)} non-tie mismatches, gaps {gap[:5]}"
    assert len(rows) <= max(2, len(got) // 500)


@pytest.mark.parametrize("n,d,k", [(3000, 24, 40), (257, 33, 37), (600, 400, 70), (50, 3, 1)])
def test_assign_matches_sklearn_predict(impl, n, d, k):
    rng = np.random.default_rng(n + d + k)
    X = rng.standard_normal((n, d), dtype=np.float32)
    km = KMeans(k, n_init=1, max_iter=1, random_state=0).fit(X)
    C = km.cluster_centers_.astype(np.float32)
    got = q.assign(X, C, impl=impl)
    assert got.dtype == np.int64 and got.shape == (n,)
    assert_same_up_to_ties(got, km.predict(X), X, C)


def test_assign_exact_ties_take_first_centroid(impl):
    C = np.array([[1, 0], [1, 0], [0, 5], [1, 0]], dtype=np.float32)  # three identical centroids
    X = np.array([[1, 0.1], [0.9, 0], [0, 4]], dtype=np.float32)
    np.testing.assert_array_equal(q.assign(X, C, impl=impl), [0, 0, 2])


@pytest.mark.skipif(q._C is None, reason="alignslm._C not built")
@pytest.mark.parametrize("kernel", ["avx512", "avx2", "generic"])
def test_every_simd_kernel_agrees(kernel):
    before = q._C.kernel_name()
    try:
        q._C.set_kernel(kernel)
    except ValueError:
        pytest.skip(f"{kernel} not supported on this CPU")
    try:
        rng = np.random.default_rng(1)
        X = rng.standard_normal((1001, 197), dtype=np.float32)  # odd sizes: every remainder path
        C = rng.standard_normal((67, 197), dtype=np.float32)
        labels, dist = q._C.assign_dist(X, C)
        assert_same_up_to_ties(labels, brute_dist(X, C).argmin(1), X, C)
        np.testing.assert_allclose(dist, brute_dist(X, C)[np.arange(len(X)), labels], rtol=1e-4, atol=1e-3)
        np.testing.assert_array_equal(q._C.assign(X, C, n_threads=1), labels)
    finally:
        q._C.set_kernel(before)


def test_inertia_matches_brute_force(impl):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((500, 16), dtype=np.float32)
    C = X[:9].copy()
    want = brute_dist(X, C).min(1).clip(0).sum()
    assert q.inertia(X, C, impl=impl) == pytest.approx(want, rel=1e-5)


def test_fit_inertia_within_1pct_of_sklearn(impl):
    X, _ = make_blobs(6000, n_features=20, centers=12, cluster_std=1.0, random_state=3)
    X = X.astype(np.float32)
    ref = np.median([KMeans(12, n_init=1, max_iter=50, random_state=s).fit(X).inertia_ for s in range(3)])
    ours = np.median([q.inertia(X, q.fit(X, 12, iters=50, seed=s, impl=impl)) for s in range(3)])
    assert ours <= ref * 1.01, (ours, ref)


def test_fit_is_deterministic(impl):
    X, _ = make_blobs(3000, n_features=8, centers=6, random_state=4)
    X = X.astype(np.float32)
    a, b = q.fit(X, 6, 10, seed=7, impl=impl), q.fit(X, 6, 10, seed=7, impl=impl)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (6, 8) and a.dtype == np.float32


@pytest.mark.skipif(q._C is None, reason="alignslm._C not built")
def test_cpp_fit_independent_of_thread_count():
    X, _ = make_blobs(20000, n_features=12, centers=30, random_state=5)
    X = X.astype(np.float32)
    np.testing.assert_array_equal(q._C.fit(X, 30, 10, 3, n_threads=1), q._C.fit(X, 30, 10, 3, n_threads=3))


def test_empty_cluster_is_repaired(impl):
    rng = np.random.default_rng(6)
    X = rng.standard_normal((2000, 8), dtype=np.float32)
    init = X[:5].copy()
    init[0] = 1000.0  # owns no point after the first assignment
    C = q.fit(X, 5, iters=10, init=init, impl=impl)
    counts = np.bincount(q.assign(X, C, impl=impl), minlength=5)
    assert np.all(counts > 0), counts
    assert np.abs(C).max() < 10


def test_fit_with_duplicate_points_has_no_nan(impl):
    X = np.repeat(np.eye(3, 4, dtype=np.float32), 50, axis=0)  # 3 distinct points, k = 5
    C = q.fit(X, 5, iters=5, impl=impl)
    assert np.isfinite(C).all()
    assert q.inertia(X, C, impl=impl) == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- bad input (criterion 11)
GOOD = np.ones((10, 4), dtype=np.float32)


@pytest.mark.parametrize("X,msg", [
    (np.zeros((0, 4), np.float32), "X is empty"),
    (np.zeros((5, 0), np.float32), "X is empty"),
    (np.ones((10, 4), np.float64), "dtype float32, got float64"),
    (np.ones((10, 4), np.int32), "dtype float32, got int32"),
    (np.ones(10, np.float32), "must be 2-D"),
    ([[1.0, 2.0]], "must be a numpy.ndarray"),
    (np.array([[1, 2], [np.nan, 0]], np.float32), r"NaN or inf \(first in row 1\)"),
    (np.array([[1, 2], [0, np.inf]], np.float32), "NaN or inf"),
])
def test_bad_X_is_a_clear_error(impl, X, msg):
    with pytest.raises(ValueError, match=msg):
        q.assign(X, np.ones((2, 4 if getattr(X, "ndim", 0) != 2 else max(X.shape[1], 1)), np.float32), impl=impl)
    with pytest.raises(ValueError, match=msg):
        q.fit(X, 1, impl=impl)


def test_bad_centroids_and_k(impl):
    with pytest.raises(ValueError, match="dimension mismatch: X has D=4 but centroids have D=5"):
        q.assign(GOOD, np.ones((3, 5), np.float32), impl=impl)
    with pytest.raises(ValueError, match="centroids contains NaN"):
        q.assign(GOOD, np.full((3, 4), np.nan, np.float32), impl=impl)
    with pytest.raises(ValueError, match="centroids must have dtype float32"):
        q.assign(GOOD, np.ones((3, 4), np.float16), impl=impl)
    with pytest.raises(ValueError, match="k=11 is larger than the number of points N=10"):
        q.fit(GOOD, 11, impl=impl)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        q.fit(GOOD, 0, impl=impl)
    with pytest.raises(ValueError, match=r"init must have shape \(k, D\)"):
        q.fit(GOOD, 2, init=np.ones((3, 4), np.float32), impl=impl)


def test_non_contiguous_input_is_accepted(impl):
    rng = np.random.default_rng(8)
    X = rng.standard_normal((300, 10), dtype=np.float32)
    C = X[::7, :].copy()
    Xf = np.asfortranarray(X)
    np.testing.assert_array_equal(q.assign(Xf, C, impl=impl), q.assign(X, C, impl=impl))


# --------------------------------------------------------------------------- files (criteria 4 and 10)
def test_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(9)
    X = rng.standard_normal((400, 6), dtype=np.float32)
    qz = q.train_quantizer(X, 7, iters=5)
    out = qz.save(tmp_path / "quantizer")
    assert out == tmp_path / "quantizer.npy"
    meta = json.loads((tmp_path / "quantizer.json").read_text())
    assert meta["k"] == 7 and meta["dim"] == 6 and "numpy" in meta["versions"]
    back = q.load_quantizer(out)
    np.testing.assert_array_equal(back.centroids, qz.centroids)
    np.testing.assert_array_equal(back.assign(X), qz.assign(X))
    assert q.load_quantizer(tmp_path / "quantizer").k == 7  # path without extension
    saved = (tmp_path / "quantizer.json").read_bytes()
    back.save(tmp_path / "quantizer")  # a resumed tokenize stage saves what it loaded: the same bytes
    assert (tmp_path / "quantizer.json").read_bytes() == saved and "path" not in json.loads(saved)


def _sklearn_bin(tmp_path, k=5, d=6):
    rng = np.random.default_rng(10)
    X = rng.standard_normal((200, d), dtype=np.float32)
    km = KMeans(k, n_init=1, random_state=0).fit(X)
    path = tmp_path / "km.bin"
    joblib.dump(km, path)
    return path, km, X


def test_sklearn_joblib_needs_trust_pickle(tmp_path):
    path, km, X = _sklearn_bin(tmp_path)
    with pytest.raises(PermissionError, match="trust_pickle=True.*convert"):
        q.load_quantizer(path)
    qz = q.load_quantizer(path, trust_pickle=True)
    np.testing.assert_array_equal(qz.centroids, km.cluster_centers_.astype(np.float32))
    np.testing.assert_array_equal(qz.assign(X), km.predict(X))
    assert qz.meta["format"] == "sklearn-joblib" and "sklearn" in qz.meta["versions"]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this calls open(marker, "w"): it creates a file
        return (open, (str(self.marker), "w"))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    for name, dump in [("evil.bin", lambda p: joblib.dump(_Evil(marker), p)),
                       ("evil.pkl", lambda p: p.write_bytes(pickle.dumps(_Evil(marker))))]:
        path = tmp_path / name
        dump(path)
        with pytest.raises(PermissionError, match="can run arbitrary code"):
            q.load_quantizer(path)
        assert not marker.exists()
        assert q.main(["convert", str(path), str(tmp_path / "out.npy")]) == 2  # no --trust-pickle
        assert not marker.exists() and not (tmp_path / "out.npy").exists()
    # the file really is hostile: trusting it runs the code (then fails: it is no KMeans)
    with pytest.raises(ValueError, match="expected a scikit-learn KMeans"):
        q.load_quantizer(tmp_path / "evil.pkl", trust_pickle=True)
    assert marker.exists()


def test_pickled_npy_is_refused(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickled objects are refused"):
        q.load_quantizer(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_joblib_is_a_clear_error(tmp_path, damage):
    path, _, _ = _sklearn_bin(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"\x80\x04not a pickle at all" * 10)
    with pytest.raises(ValueError, match="corrupt or unreadable joblib/pickle k-means file"):
        q.load_quantizer(path, trust_pickle=True)


def test_missing_and_non_kmeans_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="quantizer file not found"):
        q.load_quantizer(tmp_path / "nope.npy")
    path = tmp_path / "list.bin"
    joblib.dump([1, 2, 3], path)
    with pytest.raises(ValueError, match="expected a scikit-learn KMeans"):
        q.load_quantizer(path, trust_pickle=True)
    bad = tmp_path / "c.npy"
    np.save(bad, np.ones(5, np.float32))
    with pytest.raises(ValueError, match="invalid centroids"):
        q.load_quantizer(bad)


def test_convert_cli(tmp_path, capsys):
    path, km, X = _sklearn_bin(tmp_path)
    assert q.main(["convert", str(path), str(tmp_path / "conv.npy"), "--trust-pickle"]) == 0
    qz = q.load_quantizer(tmp_path / "conv.npy")  # no pickle involved any more
    np.testing.assert_array_equal(qz.assign(X), km.predict(X))
    assert json.loads((tmp_path / "conv.json").read_text())["format"] == "sklearn-joblib"
    assert "k=5" in capsys.readouterr().out
