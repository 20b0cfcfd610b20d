// k-means quantizer core: multithreaded assignment and Lloyd training (no Python here).
#pragma once

#include <cstdint>
#include <string>

#include "kernel_api.h"

namespace km {

// The kernel chosen at load time from the CPU's features (avx512 > avx2 > generic).
const KernelTable* kernel();
// Force a kernel by name (tests and benchmarks); throws std::invalid_argument if the CPU lacks it.
void set_kernel(const std::string& name);
// CPUs this process may run on (sched_getaffinity), or ALIGNSLM_NUM_THREADS when set.
int default_threads();

// labels[i] = argmin_j ||x_i - c_j||^2 (first index on exact ties); dist (optional) = that distance.
// X (N, D) and C (K, D) are row-major float32. Never stores the N x K matrix.
void assign(const float* X, int64_t N, int64_t D, const float* C, int64_t K, int64_t* labels, float* dist,
            int n_threads);

// k-means++ (greedy, 2 + log k trials, on a random subsample of init_sample rows; <= 0: automatic)
// followed by `iters` Lloyd iterations with empty-cluster repair. Writes centroids (K, D).
// init (optional, K x D): start from these centroids instead of k-means++.
// Deterministic for a given seed, independent of n_threads.
void fit(const float* X, int64_t N, int64_t D, int64_t K, int iters, uint64_t seed, int64_t init_sample,
         int n_threads, const float* init, float* centroids);

// The automatic k-means++ subsample size for N rows and K centroids.
int64_t auto_init_sample(int64_t N, int64_t K);

// Index of the first non-finite value in a[0, n), or -1.
int64_t first_nonfinite(const float* a, int64_t n, int n_threads);

}  // namespace km
