// k-means core: kernel dispatch, a small parallel-for, assignment, k-means++ and Lloyd iterations.
#include "kmeans.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif

namespace km {
namespace {

bool cpu_has(const char* feature) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (std::strcmp(feature, "avx512") == 0)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
  if (std::strcmp(feature, "avx2") == 0) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  (void)feature;
#endif
  return false;
}

const KernelTable* by_name(const std::string& name) {
#if defined(ALIGNSLM_HAVE_X86_KERNELS)
  if (name == "avx512") return cpu_has("avx512") ? km_table_avx512() : nullptr;
  if (name == "avx2") return cpu_has("avx2") ? km_table_avx2() : nullptr;
#endif
  if (name == "generic") return km_table_generic();
  return nullptr;
}

const KernelTable* pick_default() {
  const char* env = std::getenv("ALIGNSLM_KMEANS_KERNEL");
  if (env && *env) {
    if (const KernelTable* t = by_name(env)) return t;
  }
  for (const char* n : {"avx512", "avx2"})
    if (const KernelTable* t = by_name(n)) return t;
  return km_table_generic();
}

const KernelTable* g_kernel = pick_default();

// Runs f(chunk, thread) for chunk in [0, nchunks) on up to n_threads threads (dynamic scheduling).
template <class F>
void parallel_for(int64_t nchunks, int n_threads, F&& f) {
  int t = static_cast<int>(std::min<int64_t>(std::max(1, n_threads), nchunks));
  if (t <= 1) {
    for (int64_t c = 0; c < nchunks; ++c) f(c, 0);
    return;
  }
  std::atomic<int64_t> next{0};
  auto body = [&](int tid) {
    for (int64_t c = next++; c < nchunks; c = next++) f(c, tid);
  };
  std::vector<std::thread> pool;
  pool.reserve(t - 1);
  for (int i = 1; i < t; ++i) pool.emplace_back(body, i);
  body(0);
  for (auto& th : pool) th.join();
}

int resolve_threads(int n_threads) { return n_threads > 0 ? n_threads : default_threads(); }

// Centroids packed into panels [P][D][NR] (zero padding) and their squared norms (+inf padding).
struct Packed {
  int64_t Kpad;
  std::vector<float> B, c2;
};

Packed pack_centroids(const float* C, int64_t K, int64_t D, int nr) {
  Packed p;
  p.Kpad = (K + nr - 1) / nr * nr;
  p.B.assign(p.Kpad * D, 0.f);
  p.c2.assign(p.Kpad, INFINITY);
  for (int64_t j = 0; j < K; ++j) {
    const float* c = C + j * D;
    float* dst = p.B.data() + (j / nr) * D * nr + (j % nr);
    double s = 0;
    for (int64_t d = 0; d < D; ++d) {
      dst[d * nr] = c[d];
      s += double(c[d]) * c[d];
    }
    p.c2[j] = float(s);
  }
  return p;
}

constexpr int64_t kKC = 192;  // depth slice: B micro-panel KC x NR floats stays in L1

double sqnorm(const float* x, int64_t D) {
  double s = 0;
  for (int64_t d = 0; d < D; ++d) s += double(x[d]) * x[d];
  return s;
}

}  // namespace

const KernelTable* kernel() { return g_kernel; }

void set_kernel(const std::string& name) {
  const KernelTable* t = by_name(name);
  if (!t) throw std::invalid_argument("k-means kernel '" + name + "' is not available on this CPU/build");
  g_kernel = t;
}

int default_threads() {
  if (const char* env = std::getenv("ALIGNSLM_NUM_THREADS")) {
    int v = std::atoi(env);
    if (v > 0) return v;
  }
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

int64_t first_nonfinite(const float* a, int64_t n, int n_threads) {
  const int64_t chunk = 1 << 20;
  const int64_t nchunks = (n + chunk - 1) / chunk;
  std::vector<int64_t> first(nchunks, -1);
  parallel_for(nchunks, resolve_threads(n_threads), [&](int64_t c, int) {
    const int64_t lo = c * chunk, hi = std::min(n, lo + chunk);
    int bad = 0;
    for (int64_t i = lo; i < hi; ++i) bad |= !(std::fabs(a[i]) <= 3.402823466e38f);  // NaN fails too
    if (!bad) return;
    for (int64_t i = lo; i < hi; ++i)
      if (!std::isfinite(a[i])) {
        first[c] = i;
        return;
      }
  });
  for (int64_t f : first)
    if (f >= 0) return f;
  return -1;
}

void assign(const float* X, int64_t N, int64_t D, const float* C, int64_t K, int64_t* labels, float* dist,
            int n_threads) {
  const KernelTable* kt = g_kernel;
  Packed p = pack_centroids(C, K, D, kt->nr);
  const int64_t mc = kt->mr * 8;
  const int64_t kc = std::min<int64_t>(kKC, D);
  const int64_t mcp = (mc + kt->mr - 1) / kt->mr * kt->mr;
  const int64_t work_floats = mcp * kc + mcp * p.Kpad + 2 * mcp * 16 + 64;
  const int nt = resolve_threads(n_threads);
  std::vector<std::vector<float>> work(nt, std::vector<float>(work_floats));
  std::vector<float> minval_buf(dist ? 0 : N);
  float* minval = dist ? dist : minval_buf.data();
  const int64_t rows = mc * 4;  // rows per scheduled chunk
  parallel_for((N + rows - 1) / rows, nt, [&](int64_t c, int tid) {
    const int64_t i0 = c * rows, n = std::min(rows, N - i0);
    kt->assign_block(X + i0 * D, n, D, p.B.data(), p.c2.data(), p.Kpad, mc, kc, work[tid].data(), labels + i0,
                     minval + i0);
    if (dist)
      for (int64_t i = i0; i < i0 + n; ++i) dist[i] = float(std::max(0.0, sqnorm(X + i * D, D) + minval[i]));
  });
}

int64_t auto_init_sample(int64_t N, int64_t K) { return std::min<int64_t>(N, std::max<int64_t>(10000, 40 * K)); }

namespace {

// Greedy k-means++ on the rows S (S x D) -> centroids (K, D).
void kmeanspp(const float* S, int64_t n, int64_t D, int64_t K, std::mt19937_64& rng, int nt, float* out) {
  const int trials = 2 + int(std::log(double(K)));
  const int64_t chunk = 2048, nchunks = (n + chunk - 1) / chunk;
  std::uniform_real_distribution<double> U(0.0, 1.0);
  std::vector<float> closest(n), cand_d(size_t(trials) * n);
  std::vector<double> cum(n), part(size_t(nchunks) * trials);
  int64_t first = std::min<int64_t>(n - 1, int64_t(U(rng) * n));
  std::memcpy(out, S + first * D, D * sizeof(float));
  parallel_for(nchunks, nt, [&](int64_t c, int) {
    const int64_t lo = c * chunk, m = std::min(chunk, n - lo);
    g_kernel->sqdist_few(S + lo * D, m, D, out, 1, closest.data() + lo, n);
  });
  std::vector<int64_t> cand(trials);
  for (int64_t k = 1; k < K; ++k) {
    double total = 0;
    for (int64_t i = 0; i < n; ++i) cum[i] = (total += closest[i]);
    for (int t = 0; t < trials; ++t) {
      if (total <= 0) {
        cand[t] = std::min<int64_t>(n - 1, int64_t(U(rng) * n));
      } else {
        double r = U(rng) * total;
        cand[t] = std::min<int64_t>(n - 1, std::upper_bound(cum.begin(), cum.end(), r) - cum.begin());
      }
    }
    std::vector<float> Y(size_t(trials) * D);
    for (int t = 0; t < trials; ++t) std::memcpy(&Y[t * D], S + cand[t] * D, D * sizeof(float));
    parallel_for(nchunks, nt, [&](int64_t c, int) {  // per-chunk partial potentials: deterministic sums
      const int64_t lo = c * chunk, m = std::min(chunk, n - lo);
      g_kernel->sqdist_few(S + lo * D, m, D, Y.data(), trials, cand_d.data() + lo, n);
      for (int t = 0; t < trials; ++t) {
        double s = 0;
        for (int64_t i = lo; i < lo + m; ++i) s += std::min(closest[i], cand_d[t * n + i]);
        part[c * trials + t] = s;
      }
    });
    int best = 0;
    double best_pot = INFINITY;
    for (int t = 0; t < trials; ++t) {
      double pot = 0;
      for (int64_t c = 0; c < nchunks; ++c) pot += part[c * trials + t];
      if (pot < best_pot) best_pot = pot, best = t;
    }
    std::memcpy(out + k * D, S + cand[best] * D, D * sizeof(float));
    for (int64_t i = 0; i < n; ++i) closest[i] = std::min(closest[i], cand_d[best * n + i]);
  }
}

// Moves each empty cluster onto one of the points farthest from their centroid.
void repair_empty(int64_t N, int64_t K, const float* dist, int64_t* labels, std::vector<int64_t>& counts) {
  std::vector<int64_t> empty;
  for (int64_t j = 0; j < K; ++j)
    if (counts[j] == 0) empty.push_back(j);
  if (empty.empty()) return;
  std::vector<int64_t> order(N);
  for (int64_t i = 0; i < N; ++i) order[i] = i;
  const int64_t m = std::min<int64_t>(int64_t(empty.size()), N);
  std::partial_sort(order.begin(), order.begin() + m, order.end(), [&](int64_t a, int64_t b) {
    return dist[a] > dist[b] || (dist[a] == dist[b] && a < b);
  });
  for (int64_t e = 0; e < m; ++e) {
    const int64_t i = order[e];
    if (counts[labels[i]] <= 1) continue;  // never empty the donor
    --counts[labels[i]];
    labels[i] = empty[e];
    ++counts[empty[e]];
  }
}

// centroids[j] = mean of rows labelled j (clusters with no rows keep their centroid).
void update_means(const float* X, int64_t N, int64_t D, int64_t K, const int64_t* labels,
                  const std::vector<int64_t>& counts, int nt, float* C) {
  std::vector<int64_t> start(K + 1, 0), order(N);
  for (int64_t j = 0; j < K; ++j) start[j + 1] = start[j] + counts[j];
  std::vector<int64_t> pos(start.begin(), start.end() - 1);
  for (int64_t i = 0; i < N; ++i) order[pos[labels[i]]++] = i;  // counting sort: members in index order
  parallel_for(K, nt, [&](int64_t j, int) {
    if (counts[j] == 0) return;
    std::vector<double> acc(D, 0.0);
    for (int64_t q = start[j]; q < start[j + 1]; ++q) {
      const float* x = X + order[q] * D;
      for (int64_t d = 0; d < D; ++d) acc[d] += x[d];
    }
    for (int64_t d = 0; d < D; ++d) C[j * D + d] = float(acc[d] / double(counts[j]));
  });
}

// k-means++ on the whole of X, or on init_sample random rows of it.
void init_centroids(const float* X, int64_t N, int64_t D, int64_t K, int64_t init_sample, std::mt19937_64& rng,
                    int nt, float* C) {
  int64_t S = init_sample > 0 ? std::min(init_sample, N) : auto_init_sample(N, K);
  S = std::max(S, K);
  if (S >= N) {
    kmeanspp(X, N, D, K, rng, nt, C);
  } else {  // partial Fisher-Yates: S distinct rows, gathered in ascending order
    std::vector<int64_t> idx(N);
    for (int64_t i = 0; i < N; ++i) idx[i] = i;
    for (int64_t i = 0; i < S; ++i) std::swap(idx[i], idx[i + int64_t(rng() % uint64_t(N - i))]);
    std::sort(idx.begin(), idx.begin() + S);
    std::vector<float> sample(size_t(S) * D);
    for (int64_t i = 0; i < S; ++i) std::memcpy(&sample[i * D], X + idx[i] * D, D * sizeof(float));
    kmeanspp(sample.data(), S, D, K, rng, nt, C);
  }
}

}  // namespace

void fit(const float* X, int64_t N, int64_t D, int64_t K, int iters, uint64_t seed, int64_t init_sample,
         int n_threads, const float* init, float* C) {
  const int nt = resolve_threads(n_threads);
  std::mt19937_64 rng(seed);
  if (init) {
    std::memcpy(C, init, size_t(K) * D * sizeof(float));
  } else {
    init_centroids(X, N, D, K, init_sample, rng, nt, C);
  }
  std::vector<int64_t> labels(N), prev(N, -1), counts(K);
  std::vector<float> dist(N);
  for (int it = 0; it < iters; ++it) {
    assign(X, N, D, C, K, labels.data(), dist.data(), nt);
    std::fill(counts.begin(), counts.end(), 0);
    for (int64_t i = 0; i < N; ++i) ++counts[labels[i]];
    repair_empty(N, K, dist.data(), labels.data(), counts);
    if (labels == prev) break;  // converged: the means would not move
    update_means(X, N, D, K, labels.data(), counts, nt, C);
    prev.swap(labels);
  }
}

}  // namespace km
