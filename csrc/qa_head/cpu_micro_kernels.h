// The CPU micro-kernels of the fused QA head: fp32 math on kFwdRows (forward) or kRows (backward)
// token rows at a time, each weight vector load serving those rows and each hidden load both
// sides, on fp32 or raw-bf16 rows (bf16 as even/odd pairs, weights and partials to match),
// written with GCC/Clang vector extensions and compiled for AVX-512, AVX2+FMA and baseline x86-64
// (GCC's function multiversioning: the loader picks one per machine; the row kernels are written per
// instruction set where GCC's code for one was poor on another, see QA_PER_ISA). Also the
// multiversioned conversion loops the row loaders use.
//
// Included by qa_head_cpu.cpp only: its definitions have internal linkage (an anonymous namespace)
// and are compiled in that unit.
#pragma once

#include "common/bf16.h"

#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define QA_HAVE_F16C_PATH 1
#endif

// A 64-byte vector returned by value changes the ABI below AVX-512 (-Wpsabi): the helpers below
// are only ever inlined, and take vectors by reference. (Ignored for the rest of the including
// unit: GCC reports it where the unit ends, when it emits the inlined helpers.)
#pragma GCC diagnostic ignored "-Wpsabi"

namespace qa_kernels {
namespace {

// ------------------------------------------------------------------------------------------------
// The micro-kernels' shape (the drivers' work split: qa_head_cpu.cpp).
// ------------------------------------------------------------------------------------------------
constexpr int64_t kRows = 4;          // token rows per backward micro-kernel call (weights reused 4x)
// Token rows per forward micro-kernel call: 1, i.e. hidden read in memory order. Measured on an AMD
// EPYC (Zen 4) VM, one thread, 32x384x1024: fp32 2.2-2.4 ms with 1 row against 3.5-3.7 ms with 4
// interleaved rows (eager F.linear: 2.6-2.9), bf16 1.9-2.1 against 2.3 ms; the backward is faster
// with 4 (fp32 5.3 against 6.1-8.1 ms). The weights stay in L1 either way.
constexpr int64_t kFwdRows = 1;
// Token rows per call that adds softmax-weighted rows into the one-pass forward's running sums
// (2 x H fp32, loaded and stored once per call): 16, so that those loads and stores are a quarter
// of the rows' own. Measured (Intel Xeon VM, 2 threads, fp32 32x384x1024, cold, the forward op
// alone): with 4 rows a call the one-pass forward took 2.98 ms against 2.23 without the sums; with
// 16, 2.64 against 2.34. 16 bf16 rows of H = 1024 are 32 KiB, read back from L1 (fp32: from L2).
constexpr int64_t kAddRows = 16;
constexpr int64_t kLanes = 16;        // fp32 lanes per vector (one AVX-512 register; two AVX2 ones)
constexpr int64_t kBlock = 2 * kLanes;  // elements per micro-kernel step: 2 vectors (1 bf16 load)
constexpr int64_t kCacheLine = 64;    // bytes per software prefetch

using vfloat = float __attribute__((vector_size(kLanes * sizeof(float))));

// GCC >= 12 knows the x86-64-v3/v4 levels; elsewhere the kernels are compiled once, for the
// compiler's default target (still vectorized, through the same vector extensions).
// QA_PER_ISA(KERNELS, X) expands KERNELS(X, kWide, TARGET) three times, for GCC's function
// multiversioning (the loader picks one, as for target_clones), for the kernels whose best code
// differs by vector width: kWide is true where a vfloat is one register; TARGET, the attribute each
// function of KERNELS starts with.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) && defined(__linux__)
#define QA_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define QA_PER_ISA(KERNELS, X)                                      \
  KERNELS(X, true, __attribute__((target("arch=x86-64-v4"))))       \
  KERNELS(X, false, __attribute__((target("arch=x86-64-v3"))))      \
  KERNELS(X, false, __attribute__((target("default"))))
#else
#define QA_MULTIVERSION
#define QA_PER_ISA(KERNELS, X) KERNELS(X, false, )
#endif

// ------------------------------------------------------------------------------------------------
// Micro-kernels. Rows are fp32 or raw bf16 bits (uint16_t); the math is fp32 either way. A row is
// read kBlock elements at a time, as two fp32 vectors:
//   fp32 rows  elements [h, h + kLanes) and [h + kLanes, h + kBlock): two loads;
//   bf16 rows  ONE 64-byte load of kBlock bf16, taken as kLanes 32-bit pairs: the even elements are
//              pair << 16 and the odd ones pair & 0xFFFF0000 (exact; one in-lane op per vector).
//              Widening 16 bf16 into 16 fp32 lanes instead is a lane-crossing shuffle that GCC
//              splits in four shuffle-port uops (its x86-64-v4 tuning prefers 256-bit vectors):
//              measured, that made the bf16 backward slower than the fp32 one.
// The (H,) fp32 vectors a row meets (weights, grad_weight partials) come in the row's layout:
// natural for fp32 rows, paired (to_paired) for bf16 rows. Vectors are loaded and stored with
// memcpy: unaligned, no aliasing games. Row pointers and per-row scalars are copied into locals
// first: the gradient stores could alias the caller's arrays, and the compiler would reload them.
// The *_impl templates are inlined into the multiversioned wrappers, so each wrapper is compiled
// once per ISA.
// ------------------------------------------------------------------------------------------------
#define QA_INLINE inline __attribute__((always_inline))

using vu32 = uint32_t __attribute__((vector_size(kLanes * sizeof(uint32_t))));

// Rows of element type X pair their (H,) fp32 vectors in blocks: see to_paired.
template <typename X>
constexpr bool kPaired = std::is_same_v<X, uint16_t>;

QA_INLINE vfloat load_vec(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
QA_INLINE void store_vec(float* p, const vfloat& v) { std::memcpy(p, &v, sizeof(v)); }
// The low and high halves of a vfloat (lanes 0-7, 8-15).
using vhalf = float __attribute__((vector_size(kLanes / 2 * sizeof(float))));
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
QA_INLINE vhalf lo_half(const vfloat& v) { return __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7); }
QA_INLINE vhalf hi_half(const vfloat& v) { return __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15); }
#else
QA_INLINE vhalf lo_half(const vfloat& v) {
  vhalf h;
  std::memcpy(&h, &v, sizeof(h));
  return h;
}
QA_INLINE vhalf hi_half(const vfloat& v) {
  vhalf h;
  std::memcpy(&h, reinterpret_cast<const char*>(&v) + sizeof(h), sizeof(h));
  return h;
}
#endif
QA_INLINE vfloat splat(float s) {  // {s, s, ..., s}, bit for bit (-0.0 included)
  vfloat v;
  for (int64_t j = 0; j < kLanes; ++j) v[j] = s;
  return v;
}
QA_INLINE vfloat bits_to_vfloat(const vu32& bits) {
  vfloat v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

// v[0], v[1] = the block of kBlock elements at p, in its layout (natural, or even | odd for bf16).
QA_INLINE void load_block(const float* p, vfloat (&v)[2]) {
  v[0] = load_vec(p);
  v[1] = load_vec(p + kLanes);
}
QA_INLINE void load_block(const uint16_t* p, vfloat (&v)[2]) {  // bf16 -> fp32: exact
  vu32 pairs;
  std::memcpy(&pairs, p, sizeof(pairs));
  v[0] = bits_to_vfloat(pairs << 16);
  v[1] = bits_to_vfloat(pairs & 0xFFFF0000u);
}
template <bool kWide>  // a vfloat is one register
QA_INLINE void store_block(float* p, const vfloat (&v)[2]) {
  store_vec(p, v[0]);
  store_vec(p + kLanes, v[1]);
}
// bf16 rows: fp32 -> bf16 rounded as in common/bf16.h; even elements in the low halves, odd in the high.
// Below AVX-512 by 32-byte halves: there GCC 12 tests a 64-byte vector for NaN lane by lane (a
// vucomiss and a setnp per lane: 136 in the backward's bf16 micro-kernel), and a 32-byte one with
// one vcmpps.
template <bool kWide>
QA_INLINE void store_block(uint16_t* p, const vfloat (&v)[2]) {
  if constexpr (kWide) {
    const vu32 pairs = (bf16_in_high_half<vu32>(v[0]) >> 16) | (bf16_in_high_half<vu32>(v[1]) & 0xFFFF0000u);
    std::memcpy(p, &pairs, sizeof(pairs));
  } else {
    using vu32half = uint32_t __attribute__((vector_size(kLanes / 2 * sizeof(uint32_t))));
    const vhalf even[2] = {lo_half(v[0]), hi_half(v[0])}, odd[2] = {lo_half(v[1]), hi_half(v[1])};
    for (int half = 0; half < 2; ++half) {
      const vu32half pairs = (bf16_in_high_half<vu32half>(even[half]) >> 16) |
                             (bf16_in_high_half<vu32half>(odd[half]) & 0xFFFF0000u);
      std::memcpy(p + half * kLanes, &pairs, sizeof(pairs));
    }
  }
}
// Asks for the block at p (kBlock elements) ahead of its use.
template <typename X>
QA_INLINE void prefetch_block(const X* p) {
  for (size_t b = 0; b < kBlock * sizeof(X); b += kCacheLine) __builtin_prefetch(reinterpret_cast<const char*>(p) + b);
}
QA_INLINE float load_one(const float* p) { return *p; }
QA_INLINE float load_one(const uint16_t* p) {
  const uint32_t bits = static_cast<uint32_t>(*p) << 16;
  float v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}
QA_INLINE void store_one(float* p, float v) { *p = v; }
QA_INLINE void store_one(uint16_t* p, float v) { *p = bf16_bits(v); }

// out0[r] = sum_h x[r][h] * w0[h],   out1[r] = sum_h x[r][h] * w1[h]        for r < kFwdRows
// (w0, w1 in the rows' layout.) kLanes running sums per (row, side), each taking its two elements
// of every block in turn; added lane 0..kLanes-1, then the tail: a fixed order. The rows `next`
// are prefetched alongside: out of cache, the hardware prefetchers ramp up too slowly on rows this
// short (2 KiB of bf16 at H = 1024), and the bf16 forward reached 65% of copy bandwidth.
//
// kWide: the running sums are vfloat, one register each where a vfloat is one (AVX-512), each
// product added by one FMA. Otherwise they are 32-byte halves, lanes 0-7 and 8-15 of each product
// added apart (the same sums in the same order; GCC 12 still fuses each multiply into its add on
// AVX2): GCC keeps a loop-carried 64-byte vector in memory where it is two registers (AVX2), and
// moved it through general registers at every block. The row is loaded first, so that its
// block is loaded once and the weights are the FMAs' memory operands (loading the weights first,
// GCC 12 made the row the operand of every FMA: two loads of each block of it).
// Measured, the forward op alone, 2 threads, 32x384x1024: on an AMD EPYC (AVX2) bf16 3.8 ms with
// vfloat sums, 1.6 with halves, fp32 3.8 and 3.2-3.6; on an Intel Xeon (AVX-512), where the halves
// cost a multiply, an extract and two adds per product, see QA_MICRO_KERNELS.
template <bool kWide>
struct DotSums;
template <>
struct DotSums<true> {
  vfloat sum = {};
  QA_INLINE void add(const vfloat& x, const vfloat& w) { sum += x * w; }
  QA_INLINE float lane(int64_t j) const { return sum[j]; }
};
template <>
struct DotSums<false> {
  vhalf lo = {}, hi = {};
  QA_INLINE void add(const vfloat& x, const vfloat& w) {
    const vfloat product = x * w;
    lo += lo_half(product);
    hi += hi_half(product);
  }
  QA_INLINE float lane(int64_t j) const { return j < kLanes / 2 ? lo[j] : hi[j - kLanes / 2]; }
};

template <bool kWide, typename X>
QA_INLINE void dot2_rows_impl(const X* const* x_rows,  // kFwdRows pointers to rows of H elements
                              const X* const* next_rows,  // kFwdRows rows the caller reads next
                              const float* w0, const float* w1,  // (H,) each
                              int64_t H, float* out0, float* out1) {  // (kFwdRows,) each
  static_assert(kFwdRows == 1, "one row per call");
  const X* const x = x_rows[0];
  const X* const next = next_rows[0];
  DotSums<kWide> a0, a1;
  int64_t h = 0;
  for (; h + kBlock <= H; h += kBlock) {
    prefetch_block(next + h);
    vfloat xv[2], v0[2], v1[2];
    load_block(x + h, xv);
    load_block(w0 + h, v0);
    load_block(w1 + h, v1);
    for (int i = 0; i < 2; ++i) {
      a0.add(xv[i], v0[i]);
      a1.add(xv[i], v1[i]);
    }
  }
  float s0 = 0.f, s1 = 0.f;
  for (int64_t j = 0; j < kLanes; ++j) {
    s0 += a0.lane(j);
    s1 += a1.lane(j);
  }
  for (int64_t t = h; t < H; ++t) {
    s0 += load_one(x + t) * w0[t];
    s1 += load_one(x + t) * w1[t];
  }
  out0[0] = s0;
  out1[0] = s1;
}

// The backward's per-row math, for r < kN (kRows; kAddRows for the one-pass forward's sums, with d0,
// d1 the softmax weights; w0, w1, pw0, pw1 in the rows' layout):
//   kGradHidden   g[r][h] = d0[r] * w0[h] + d1[r] * w1[h]
//   kGradWeight   pw0[h] += sum_r d0[r] * x[r][h],   pw1[h] += sum_r d1[r] * x[r][h]   (fp32 partials;
//                 the even rows' and the odd rows' products summed apart, in row order, then
//                 added: two FMA chains, not one of kN), the rows `next` prefetched alongside
//                 (see dot2_rows_impl)
// With both, in one sweep over h: each block's gradient written and its hidden read side by side.
// Two sweeps one after the other (all of grad_hidden's, then all of grad_weight's) are slower:
// measured on an Intel Xeon (AVX-512) VM, 32x384x1024, one thread, the backward alone, fp32 8.4
// against 7.8 ms.
template <bool kWide, int64_t kN, bool kGradHidden, bool kGradWeight, typename X, typename G>
QA_INLINE void grad_rows_impl(const X* const* x_rows,  // kN pointers to rows of H elements
                              G* const* g_rows,  // kN pointers to gradient rows of H elements
                              const X* const* next_rows,  // kN rows the caller reads next
                              const float* d0_rows, const float* d1_rows,  // (kN,) each
                              const float* w0, const float* w1,  // (H,) each
                              float* pw0, float* pw1, int64_t H) {  // (H,) each
  static_assert(kN >= 2 && kN % 2 == 0, "the even and odd rows are summed apart");
  const X *x[kN], *next[kN];
  G* g[kN];
  float d0[kN], d1[kN];
  if constexpr (kGradWeight) {
    std::copy(x_rows, x_rows + kN, x);
    std::copy(next_rows, next_rows + kN, next);
  }
  if constexpr (kGradHidden) std::copy(g_rows, g_rows + kN, g);
  std::copy(d0_rows, d0_rows + kN, d0);
  std::copy(d1_rows, d1_rows + kN, d1);
  // kWide: each per-row scalar broadcast where it is used (a broadcast load, or an FMA's broadcast
  // operand), the row loop as written. Otherwise the scalars as vectors, made once per call, and
  // the row loop unrolled: a scalar times a 64-byte vector, written in the loop, is built through
  // the stack at every use where a vector is two registers (AVX2: 16 scalar stores and 4 reloads
  // per product, measured at 3.7x the one-pass forward's time on an AMD EPYC without AVX-512); as
  // vectors in memory they are plain FMA operands. On AVX-512 those vectors took the registers
  // the loop needs (see QA_MICRO_KERNELS for the figures).
  [[maybe_unused]] vfloat d0v[kWide ? 1 : kN], d1v[kWide ? 1 : kN];
  if constexpr (!kWide) {
    for (int64_t r = 0; r < kN; ++r) {
      d0v[r] = splat(d0[r]);
      d1v[r] = splat(d1[r]);
    }
  }
  int64_t h = 0;
  for (; h + kBlock <= H; h += kBlock) {
    vfloat v0[2], v1[2], p0[2], p1[2], e0[2], e1[2], o0[2], o1[2];
    if constexpr (kGradHidden) {
      load_block(w0 + h, v0);
      load_block(w1 + h, v1);
    }
    if constexpr (kGradWeight) {
      load_block(pw0 + h, p0);
      load_block(pw1 + h, p1);
    }
    auto row = [&](int64_t r) __attribute__((always_inline)) {
      const auto c0 = [&] {
        if constexpr (kWide) return d0[r]; else return d0v[r];
      }();
      const auto c1 = [&] {
        if constexpr (kWide) return d1[r]; else return d1v[r];
      }();
      vfloat xv[2];
      if constexpr (kGradWeight) {
        load_block(x[r] + h, xv);
        prefetch_block(next[r] + h);
      }
      if constexpr (kGradHidden) {
        const vfloat gv[2] = {c0 * v0[0] + c1 * v1[0], c0 * v0[1] + c1 * v1[1]};
        store_block<kWide>(g[r] + h, gv);
      }
      if constexpr (kGradWeight) {  // even rows into e*, odd rows into o*
        for (int i = 0; i < 2; ++i) {
          if (r % 2 == 0) {
            e0[i] = r == 0 ? c0 * xv[i] : e0[i] + c0 * xv[i];
            e1[i] = r == 0 ? c1 * xv[i] : e1[i] + c1 * xv[i];
          } else {
            o0[i] = r == 1 ? c0 * xv[i] : o0[i] + c0 * xv[i];
            o1[i] = r == 1 ? c1 * xv[i] : o1[i] + c1 * xv[i];
          }
        }
      }
    };
    if constexpr (kWide) {
      for (int64_t r = 0; r < kN; ++r) row(r);
    } else {
#pragma GCC unroll 16
      for (int64_t r = 0; r < kN; ++r) row(r);  // unrolled: the even / odd tests fold away
    }
    if constexpr (kGradWeight) {
      for (int i = 0; i < 2; ++i) {
        p0[i] += e0[i] + o0[i];
        p1[i] += e1[i] + o1[i];
      }
      store_block<kWide>(pw0 + h, p0);
      store_block<kWide>(pw1 + h, p1);
    }
  }
  for (; h < H; ++h) {
    for (int64_t r = 0; r < kN; ++r) {
      if constexpr (kGradHidden) store_one(g[r] + h, d0[r] * w0[h] + d1[r] * w1[h]);
      if constexpr (kGradWeight) {
        pw0[h] += d0[r] * load_one(x[r] + h);
        pw1[h] += d1[r] * load_one(x[r] + h);
      }
    }
  }
}

// The entry points, per ISA (QA_PER_ISA): fp32 rows (in place, or a converted scratch tile) and
// bf16 rows. Measured on an Intel Xeon (AVX-512) VM, 2 threads, 32x384x1024, cold, against the
// AVX2 forms on AVX-512 too (alternated runs): the forward op alone (no labels) fp32 2.12-2.18 ms
// against 2.91-2.93, bf16 1.30-1.35 against 1.43-1.48; the backward op alone (grad_hidden and
// grad_bias, the one-pass case) fp32 1.25-1.35 ms against 1.42-1.57, bf16 0.69-0.75 against 0.79.
#define QA_MICRO_KERNELS(X, kWide, TARGET)                                                               \
  TARGET void dot2_rows(const X* const* x, const X* const* next, const float* w0, const float* w1,       \
                        int64_t H, float* out0, float* out1) {                                           \
    dot2_rows_impl<kWide>(x, next, w0, w1, H, out0, out1);                                               \
  }                                                                                                      \
  TARGET void grad_hidden_rows(X* const* g, const float* d0, const float* d1, const float* w0,           \
                               const float* w1, int64_t H) {                                             \
    grad_rows_impl<kWide, kRows, true, false, X, X>(nullptr, g, nullptr, d0, d1, w0, w1, nullptr, nullptr, H); \
  }                                                                                                      \
  TARGET void grad_weight_rows(const X* const* x, const X* const* next, const float* d0, const float* d1, \
                               float* pw0, float* pw1, int64_t H) {                                      \
    grad_rows_impl<kWide, kRows, false, true, X, X>(x, nullptr, next, d0, d1, nullptr, nullptr, pw0, pw1, H); \
  }                                                                                                      \
  TARGET void add_weighted_rows(const X* const* x, const X* const* next, const float* e0, const float* e1, \
                                float* acc0, float* acc1, int64_t H) {                                   \
    grad_rows_impl<kWide, kAddRows, false, true, X, X>(x, nullptr, next, e0, e1, nullptr, nullptr, acc0, acc1, \
                                                       H);                                               \
  }                                                                                                      \
  TARGET void grad_rows(const X* const* x, X* const* g, const X* const* next, const float* d0,           \
                        const float* d1, const float* w0, const float* w1, float* pw0, float* pw1,       \
                        int64_t H) {                                                                     \
    grad_rows_impl<kWide, kRows, true, true>(x, g, next, d0, d1, w0, w1, pw0, pw1, H);                   \
  }
QA_PER_ISA(QA_MICRO_KERNELS, float)
QA_PER_ISA(QA_MICRO_KERNELS, uint16_t)
#undef QA_MICRO_KERNELS

// v[h] *= factor   (the online softmax's rescaling of a running sum when its max grows)
QA_MULTIVERSION void scale_row(float* v, float factor, int64_t n) {
  for (int64_t h = 0; h < n; ++h) v[h] *= factor;
}

// acc[h] += part[h]   (the partials' reduction, one chunk at a time, in chunk order)
QA_MULTIVERSION void add_rows(float* acc, const float* part, int64_t n) {
  for (int64_t h = 0; h < n; ++h) acc[h] += part[h];
}

// The paired layout of an (H,) fp32 vector, which the bf16 micro-kernels combine with bf16 rows:
// in each full block [b, b + kBlock), the even-indexed elements, then the odd-indexed ones
//   paired[b + j] = v[b + 2 j],   paired[b + kLanes + j] = v[b + 2 j + 1]          (j < kLanes)
// and the elements past the last full block where they are.
void to_paired(const float* v, int64_t H, float* paired) {
  int64_t b = 0;
  for (; b + kBlock <= H; b += kBlock) {
    for (int64_t j = 0; j < kLanes; ++j) {
      paired[b + j] = v[b + 2 * j];
      paired[b + kLanes + j] = v[b + 2 * j + 1];
    }
  }
  std::copy(v + b, v + H, paired + b);
}
void from_paired(const float* paired, int64_t H, float* v) {
  int64_t b = 0;
  for (; b + kBlock <= H; b += kBlock) {
    for (int64_t j = 0; j < kLanes; ++j) {
      v[b + 2 * j] = paired[b + j];
      v[b + 2 * j + 1] = paired[b + kLanes + j];
    }
  }
  std::copy(paired + b, paired + H, v + b);
}

// The weights (2, H) fp32 in the layout of rows of type R: w itself, or a paired copy in storage.
template <typename R>
const float* weights_for_rows(const float* w, int64_t H, std::vector<float>& storage) {
  if constexpr (kPaired<R>) {
    storage.resize(2 * H);
    to_paired(w, H, storage.data());
    to_paired(w + H, H, storage.data() + H);
    return storage.data();
  } else {
    return w;
  }
}

// ------------------------------------------------------------------------------------------------
// Conversion loops of the row loaders (qa_head_cpu.cpp: load_row, store_row).
// ------------------------------------------------------------------------------------------------

// dst[h] = bf16(src[h]), in a loop the compiler vectorizes (common/bf16.h).
QA_MULTIVERSION void float_to_bf16(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t h = 0; h < n; ++h) dst[h] = bf16_bits(src[h]);
}

// dst[h] = float(bf16(src[h])): autocast's rounding of fp32 activations, without the bf16 copy.
QA_MULTIVERSION void round_through_bf16(const float* src, float* dst, int64_t n) {
  for (int64_t h = 0; h < n; ++h) {
    const uint32_t rounded = bf16_in_high_half<uint32_t>(src[h]) & 0xFFFF0000u;
    std::memcpy(dst + h, &rounded, sizeof(float));
  }
}

// fp16 <-> fp32 for the row loaders. GCC 12 does not vectorize _Float16 conversions (neither loops
// nor vector-extension casts: one vcvtph2ps per element), and the scalar c10::Half loop they
// replace made the fp16 head 3-4x slower than eager (0.29x, 32x384x1024, Intel Xeon, 2 threads).
// F16C converts 8 per instruction, rounding to nearest even as c10::Half does; every x86-64-v3
// machine has it, and the loader checks once. Elsewhere: c10::Half, element by element.
#ifdef QA_HAVE_F16C_PATH
__attribute__((target("avx,f16c"))) void half_to_float_f16c(const uint16_t* src, float* dst, int64_t n) {
  int64_t h = 0;
  for (; h + 8 <= n; h += 8) {
    _mm256_storeu_ps(dst + h, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + h))));
  }
  for (; h < n; ++h) dst[h] = _cvtsh_ss(src[h]);
}
__attribute__((target("avx,f16c"))) void float_to_half_f16c(const float* src, uint16_t* dst, int64_t n) {
  int64_t h = 0;
  for (; h + 8 <= n; h += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + h), _mm256_cvtps_ph(_mm256_loadu_ps(src + h), _MM_FROUND_TO_NEAREST_INT));
  }
  for (; h < n; ++h) dst[h] = _cvtss_sh(src[h], _MM_FROUND_TO_NEAREST_INT);
}
bool has_f16c() {
  static const bool supported = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
  return supported;
}
#endif

// dst[h] = float(src[h])   (exact)
void half_to_float(const c10::Half* src, float* dst, int64_t n) {
#ifdef QA_HAVE_F16C_PATH
  if (has_f16c()) return half_to_float_f16c(reinterpret_cast<const uint16_t*>(src), dst, n);
#endif
  for (int64_t h = 0; h < n; ++h) dst[h] = static_cast<float>(src[h]);
}

// dst[h] = Half(src[h])   (rounded to nearest even)
void float_to_half(const float* src, c10::Half* dst, int64_t n) {
#ifdef QA_HAVE_F16C_PATH
  if (has_f16c()) return float_to_half_f16c(src, reinterpret_cast<uint16_t*>(dst), n);
#endif
  for (int64_t h = 0; h < n; ++h) dst[h] = static_cast<c10::Half>(src[h]);
}

#undef QA_INLINE
#undef QA_MULTIVERSION
#undef QA_PER_ISA

}  // namespace
}  // namespace qa_kernels
