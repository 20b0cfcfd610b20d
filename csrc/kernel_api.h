// Interface between the per-ISA kernels (kernel_*.cpp) and the dispatcher (kmeans.cpp).
#pragma once

#include <stdint.h>

struct KernelTable {
  const char* name;  // "avx512", "avx2", "generic"
  int nr;            // centroids per packed panel
  int mr;            // rows per register tile
  // see kernel_impl.h: assign_block
  void (*assign_block)(const float* X, int64_t n, int64_t D, const float* Bp, const float* c2, int64_t Kpad,
                       int64_t mc, int64_t kc, float* work, int64_t* labels, float* minval);
  // out[c * ldo + i] = ||x_i - y_c||^2
  void (*sqdist_few)(const float* X, int64_t n, int64_t D, const float* Y, int64_t m, float* out, int64_t ldo);
};

const KernelTable* km_table_avx512();
const KernelTable* km_table_avx2();
const KernelTable* km_table_generic();
