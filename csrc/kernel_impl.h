// Fused "distance tile + argmin" kernel, compiled once per instruction set.
//
// Included by kernel_avx512.cpp / kernel_avx2.cpp / kernel_generic.cpp, each of which defines
//   KM_NS  (namespace name), KM_W (float lanes per vector), KM_MR (rows per micro-tile)
// and is compiled with its own -m flags. The runtime dispatcher in kmeans.cpp picks one.
//
// Only plain C++ and GCC vector extensions here (no std:: templates): inline functions
// instantiated under different -m flags must not be merged by the linker (ODR), so
// everything lives in an ISA-specific namespace.
//
// Problem: for rows x_i (N, D) and centroids c_j (K, D), find argmin_j ||c_j||^2 - 2 x_i.c_j.
// Blocking (BLIS style, the N x K product is never stored beyond a (MC, Kpad) tile in L2):
//   thread row block of MC rows
//     for each depth slice of KC dims:    pack A (MC x KC) into micro-panels [MC/MR][KC][MR]
//       for each centroid panel (NR = 2*W centroids, pre-packed [P][D][NR]):  B slice KC x NR in L1
//         for each micro-panel:           MR x NR register tile, FMA over KC
//           last slice -> fused epilogue: v = c2 - 2*acc, running per-lane (min, index)
//           else       -> accumulate into the tile buffer
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kernel_api.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace KM_NS {

constexpr int W = KM_W;
constexpr int MR = KM_MR;
constexpr int NV = 2;
constexpr int NR = W * NV;
typedef float vf __attribute__((vector_size(W * 4)));
typedef int32_t vi __attribute__((vector_size(W * 4)));

static inline __attribute__((always_inline)) vf load(const float* p) {
  vf v;
  memcpy(&v, p, sizeof(v));
  return v;
}
static inline __attribute__((always_inline)) void store(float* p, vf v) { memcpy(p, &v, sizeof(v)); }
static inline __attribute__((always_inline)) vf bcast(float x) {  // GCC builds vf{x,...} badly: intrinsics
#if defined(__AVX512F__) && KM_W == 16
  return (vf)_mm512_set1_ps(x);
#elif defined(__AVX__) && KM_W == 8
  return (vf)_mm256_set1_ps(x);
#elif defined(__SSE__) && KM_W == 4
  return (vf)_mm_set1_ps(x);
#else
  vf v;
  for (int l = 0; l < W; ++l) v[l] = x;
  return v;
#endif
}
static inline __attribute__((always_inline)) vi loadi(const int32_t* p) {
  vi v;
  memcpy(&v, p, sizeof(v));
  return v;
}
static inline __attribute__((always_inline)) void storei(int32_t* p, vi v) { memcpy(p, &v, sizeof(v)); }

// Pack rows [0, m) x dims [d0, d0+kc) of X (row stride D) into micro-panels: Ap[mp][d][r], zero padded.
static void pack_a(const float* X, int64_t D, int64_t m, int64_t d0, int64_t kc, float* Ap) {
  for (int64_t mp = 0; mp * MR < m; ++mp) {
    float* dst = Ap + mp * kc * MR;
    int64_t rows = m - mp * MR < MR ? m - mp * MR : MR;
    for (int64_t r = 0; r < MR; ++r) {
      if (r < rows) {
        const float* src = X + (mp * MR + r) * D + d0;
        for (int64_t d = 0; d < kc; ++d) dst[d * MR + r] = src[d];
      } else {
        for (int64_t d = 0; d < kc; ++d) dst[d * MR + r] = 0.f;
      }
    }
  }
}

// One MR x NR register tile over kc dims. first: start from zero, else from tile T (row stride ldt).
// last: fused argmin epilogue into (bv, bi) [MR][NV... folded to W lanes]; else store to T.
static inline __attribute__((always_inline)) void micro(const float* Ap, const float* Bp, int64_t kc,
                                                        float* T, int64_t ldt, bool first, bool last,
                                                        const float* c2p, int32_t j0, float* bv, int32_t* bi) {
  vf acc[MR][NV];
  if (first) {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = vf{};
  } else {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = load(T + r * ldt + v * W);
  }
  for (int64_t d = 0; d < kc; ++d) {
    vf b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = load(Bp + d * NR + v * W);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      vf a = bcast(Ap[d * MR + r]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
  if (!last) {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) store(T + r * ldt + v * W, acc[r][v]);
    return;
  }
  vi lane;
  for (int l = 0; l < W; ++l) lane[l] = l;
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    vf best = load(bv + r * W);
    vi bidx = loadi(bi + r * W);
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      vf val = load(c2p + v * W) - 2.0f * acc[r][v];
      vi idx = lane + (j0 + v * W);
      vi lt = val < best;  // strict: the earlier centroid wins exact ties, like numpy argmin
      best = lt ? val : best;
      bidx = lt ? idx : bidx;
    }
    store(bv + r * W, best);
    storei(bi + r * W, bidx);
  }
}

// Nearest centroid for rows X[0, n): labels[i], minval[i] = min_j ||c_j||^2 - 2 x_i.c_j.
// Bp: centroids packed [P][D][NR] (P = Kpad / NR, padding centroids have c2 = +inf).
// work: scratch of at least work_floats(mc, kc, Kpad) floats.
void assign_block(const float* X, int64_t n, int64_t D, const float* Bp, const float* c2, int64_t Kpad,
                  int64_t mc, int64_t kc, float* work, int64_t* labels, float* minval) {
  const int64_t P = Kpad / NR;
  const int64_t mcp = (mc + MR - 1) / MR * MR;
  float* Ap = work;                         // [mcp/MR][kc][MR]
  float* T = Ap + mcp * kc;                 // [mcp/MR][P][MR][NR] partial dot products, tile-contiguous
  float* bv = T + mcp * Kpad;               // [mcp][W] running lane minima
  int32_t* bi = reinterpret_cast<int32_t*>(bv + mcp * W);  // [mcp][W]
  for (int64_t i0 = 0; i0 < n; i0 += mc) {
    const int64_t m = n - i0 < mc ? n - i0 : mc;
    const int64_t nmp = (m + MR - 1) / MR;
    for (int64_t q = 0; q < nmp * MR * W; ++q) {
      bv[q] = __builtin_inff();
      bi[q] = 0;
    }
    for (int64_t d0 = 0; d0 < D; d0 += kc) {
      const int64_t k = D - d0 < kc ? D - d0 : kc;
      const bool first = d0 == 0, last = d0 + k >= D;
      pack_a(X + i0 * D, D, m, d0, k, Ap);
      for (int64_t p = 0; p < P; ++p) {
        const float* B = Bp + (p * D + d0) * NR;
        for (int64_t mp = 0; mp < nmp; ++mp) {
          micro(Ap + mp * k * MR, B, k, T + (mp * P + p) * (MR * NR), NR, first, last, c2 + p * NR,
                (int32_t)(p * NR), bv + mp * MR * W, bi + mp * MR * W);
        }
      }
    }
    for (int64_t r = 0; r < m; ++r) {  // fold W lanes: min value, then the smallest index among equals
      float best = bv[r * W];
      int32_t idx = bi[r * W];
      for (int l = 1; l < W; ++l) {
        float v = bv[r * W + l];
        int32_t j = bi[r * W + l];
        if (v < best || (v == best && j < idx)) {
          best = v;
          idx = j;
        }
      }
      labels[i0 + r] = idx;
      minval[i0 + r] = best;
    }
  }
}

static inline __attribute__((always_inline)) float hsum(vf s) {
  float acc = 0.f;
  for (int l = 0; l < W; ++l) acc += s[l];
  return acc;
}

// k-means++ candidate distances: out[c * ldo + i] = ||x_i - y_c||^2 for c < m (m small).
// Four candidates at a time share each load of x and give four independent FMA chains.
void sqdist_few(const float* X, int64_t n, int64_t D, const float* Y, int64_t m, float* out, int64_t ldo) {
  const int64_t Dv = D / W * W;
  for (int64_t i = 0; i < n; ++i) {
    const float* x = X + i * D;
    int64_t c = 0;
    for (; c + 4 <= m; c += 4) {
      const float* y = Y + c * D;
      vf s0 = vf{}, s1 = vf{}, s2 = vf{}, s3 = vf{};
      for (int64_t d = 0; d < Dv; d += W) {
        vf xv = load(x + d);
        vf t0 = xv - load(y + d), t1 = xv - load(y + D + d), t2 = xv - load(y + 2 * D + d),
           t3 = xv - load(y + 3 * D + d);
        s0 += t0 * t0, s1 += t1 * t1, s2 += t2 * t2, s3 += t3 * t3;
      }
      float r[4] = {hsum(s0), hsum(s1), hsum(s2), hsum(s3)};
      for (int j = 0; j < 4; ++j) {
        for (int64_t d = Dv; d < D; ++d) r[j] += (x[d] - y[j * D + d]) * (x[d] - y[j * D + d]);
        out[(c + j) * ldo + i] = r[j];
      }
    }
    for (; c < m; ++c) {
      const float* y = Y + c * D;
      vf s = vf{};
      for (int64_t d = 0; d < Dv; d += W) {
        vf t = load(x + d) - load(y + d);
        s += t * t;
      }
      float acc = hsum(s);
      for (int64_t d = Dv; d < D; ++d) acc += (x[d] - y[d]) * (x[d] - y[d]);
      out[c * ldo + i] = acc;
    }
  }
}

}  // namespace KM_NS

extern "C++" {
const KernelTable* KM_TABLE_FN() {
  static const KernelTable t = {KM_NAME, KM_NS::NR, KM_NS::MR, &KM_NS::assign_block, &KM_NS::sqdist_few};
  return &t;
}
}
