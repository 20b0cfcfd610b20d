// pybind11 module alignslm._C: the k-means quantizer. Every input is validated here and a bad one
// raises ValueError with the same wording as the numpy path in alignslm/speech/quantizer.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "kmeans.h"

#ifndef ALIGNSLM_VERSION
#define ALIGNSLM_VERSION "unknown"
#endif

namespace py = pybind11;
using FArray = py::array_t<float, py::array::c_style>;

namespace {

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// Checks type, dtype, rank, emptiness and finiteness; returns a C-contiguous float32 view (or copy).
FArray check_matrix(const py::handle& obj, const char* name, int n_threads) {
  const std::string nm(name);
  if (!py::isinstance<py::array>(obj))
    throw py::value_error(nm + " must be a numpy.ndarray of float32, got " +
                          std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<float>()))
    throw py::value_error(nm + " must have dtype float32, got " + std::string(py::str(a.dtype())) +
                          "; convert with " + nm + ".astype(np.float32)");
  if (a.ndim() != 2) throw py::value_error(nm + " must be 2-D (N, D), got shape " + shape_str(a));
  if (a.shape(0) == 0 || a.shape(1) == 0)
    throw py::value_error(nm + " is empty (shape " + shape_str(a) + "); need at least one row and one column");
  FArray f = FArray::ensure(a);  // same dtype: at most a contiguous copy
  if (!f) throw py::error_already_set();
  int64_t bad;
  {
    py::gil_scoped_release nogil;
    bad = km::first_nonfinite(f.data(), int64_t(f.size()), n_threads);
  }
  if (bad >= 0)
    throw py::value_error(nm + " contains NaN or inf (first in row " + std::to_string(bad / f.shape(1)) + ")");
  return f;
}

void check_pair(const FArray& X, const FArray& C) {
  if (X.shape(1) != C.shape(1))
    throw py::value_error("dimension mismatch: X has D=" + std::to_string(X.shape(1)) + " but centroids have D=" +
                          std::to_string(C.shape(1)));
}

py::tuple assign_dist(const py::handle& Xo, const py::handle& Co, int n_threads) {
  FArray X = check_matrix(Xo, "X", n_threads), C = check_matrix(Co, "centroids", n_threads);
  check_pair(X, C);
  const int64_t N = X.shape(0), D = X.shape(1), K = C.shape(0);
  py::array_t<int64_t> labels(N);
  py::array_t<float> dist(N);
  {
    py::gil_scoped_release nogil;
    km::assign(X.data(), N, D, C.data(), K, labels.mutable_data(), dist.mutable_data(), n_threads);
  }
  return py::make_tuple(labels, dist);
}

py::array_t<int64_t> assign(const py::handle& Xo, const py::handle& Co, int n_threads) {
  FArray X = check_matrix(Xo, "X", n_threads), C = check_matrix(Co, "centroids", n_threads);
  check_pair(X, C);
  const int64_t N = X.shape(0), D = X.shape(1), K = C.shape(0);
  py::array_t<int64_t> labels(N);
  {
    py::gil_scoped_release nogil;
    km::assign(X.data(), N, D, C.data(), K, labels.mutable_data(), nullptr, n_threads);
  }
  return labels;
}

double inertia(const py::handle& Xo, const py::handle& Co, int n_threads) {
  py::tuple ld = assign_dist(Xo, Co, n_threads);
  auto dist = ld[1].cast<py::array_t<float>>();
  double s = 0;
  for (py::ssize_t i = 0; i < dist.size(); ++i) s += dist.data()[i];
  return s;
}

FArray fit(const py::handle& Xo, int64_t k, int iters, uint64_t seed, int n_threads, int64_t init_sample,
           const py::object& init_o) {
  FArray X = check_matrix(Xo, "X", n_threads);
  const int64_t N = X.shape(0), D = X.shape(1);
  if (k < 1) throw py::value_error("k must be a positive integer, got " + std::to_string(k));
  if (k > N)
    throw py::value_error("k=" + std::to_string(k) + " is larger than the number of points N=" +
                          std::to_string(N) + "; use k <= N");
  if (iters < 0) throw py::value_error("iters must be >= 0, got " + std::to_string(iters));
  FArray init;
  const bool has_init = !init_o.is_none();
  if (has_init) {
    init = check_matrix(init_o, "init", n_threads);
    if (init.shape(0) != k || init.shape(1) != D)
      throw py::value_error("init must have shape (k, D) = (" + std::to_string(k) + ", " + std::to_string(D) +
                            "), got " + shape_str(init));
  }
  FArray C({k, D});
  {
    py::gil_scoped_release nogil;
    km::fit(X.data(), N, D, k, iters, seed, init_sample, n_threads, has_init ? init.data() : nullptr,
            C.mutable_data());
  }
  return C;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "alignslm C++ k-means quantizer (fit / assign), multithreaded, runtime-dispatched SIMD kernels";
  m.attr("__version__") = ALIGNSLM_VERSION;
  m.def("assign", &assign, py::arg("X"), py::arg("centroids"), py::arg("n_threads") = 0,
        "Nearest centroid per row: X (N, D) float32, centroids (K, D) float32 -> (N,) int64.");
  m.def("assign_dist", &assign_dist, py::arg("X"), py::arg("centroids"), py::arg("n_threads") = 0,
        "Like assign, plus the squared distance to that centroid: -> ((N,) int64, (N,) float32).");
  m.def("inertia", &inertia, py::arg("X"), py::arg("centroids"), py::arg("n_threads") = 0,
        "Sum of squared distances of each row to its nearest centroid.");
  m.def("fit", &fit, py::arg("X"), py::arg("k"), py::arg("iters") = 20, py::arg("seed") = 0,
        py::arg("n_threads") = 0, py::arg("init_sample") = 0, py::arg("init") = py::none(),
        "k-means++ (on init_sample rows; 0: automatic) or init (k, D) + Lloyd iterations -> (k, D) float32.");
  m.def("kernel_name", [] { return std::string(km::kernel()->name); }, "The SIMD kernel in use.");
  m.def("set_kernel", &km::set_kernel, py::arg("name"), "Force the kernel: avx512 | avx2 | generic.");
  m.def("default_threads", &km::default_threads);
  m.def("auto_init_sample", &km::auto_init_sample, py::arg("N"), py::arg("K"));
  m.def("build_info", [] {
    return std::string("v") + ALIGNSLM_VERSION + ", kernel " + km::kernel()->name + ", " +
           std::to_string(km::default_threads()) + " threads";
  });
}
