// Shared by the CPU kernels of involution_cpu.cpp and kernel_generator_cpu.cpp.
#pragma once

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX512BF16__) && defined(__AVX512VL__) && defined(__AVX512BW__)
// float -> bf16 in one instruction (vcvtneps2bf16) where -march=native has AVX512-BF16: round to
// nearest even as c10, but denormal floats become zero and a NaN keeps its sign. The portable
// form's bf16 stores were ~14% of the separable backward's time (perf); bivol_resnet20's bf16
// training step with the instruction: 527-546 vs 549-560 ms (4 interleaved pairs, one thread).
#define BIVOL_CVT_BF16 1
#include <immintrin.h>
#endif

namespace bivol {

constexpr int64_t V = 8;  // output columns per register block (one AVX2 / half an AVX-512 vector of floats)

inline int64_t round_up(int64_t n, int64_t m = V) { return (n + m - 1) / m * m; }  // n up to a multiple of m
inline int64_t ceil_div(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -(-a / b); }  // b > 0

// Lanes of the wide vectors of loops over contiguous values without row structure (1x1 mixes,
// sums of products over a band): twice V, a whole AVX-512 vector of floats. Row loops keep V,
// which wastes less on the narrow rows of small maps (8 columns at 8x8).
constexpr int64_t VW = 2 * V;

// N lanes of T as one GCC vector: accumulators declared this way stay in registers, where gcc
// spills plain 2-D arrays of them (measured: 2-4x slower loops).
template <typename T, int64_t N = V>
struct Lanes {
  typedef T type __attribute__((vector_size(N * sizeof(T))));
};
template <typename T, int64_t N = V>
using vec_t = typename Lanes<T, N>::type;

template <int64_t N = V, typename T>
inline vec_t<T, N> vload(const T* p) {
  vec_t<T, N> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T, typename Vec>
inline void vstore(T* p, const Vec& v) {
  std::memcpy(p, &v, sizeof(v));
}

// body(lanes, p0) over [0, n) (a multiple of V): VW lanes at a time, then V for the rest;
// ``lanes`` is a std::integral_constant holding the step.
template <typename Body>
inline void wide_loop(int64_t n, const Body& body) {
  int64_t p0 = 0;
  for (; p0 + VW <= n; p0 += VW) body(std::integral_constant<int64_t, VW>{}, p0);
  for (; p0 + V <= n; p0 += V) body(std::integral_constant<int64_t, V>{}, p0);
}

// Rows [r0, r0 + n) of a plane (row stride rs, h rows of w values; rows outside are skipped)
// towards L2, a cache line at a time. Each task of a pass asks for the next task's rows: the bands
// it loads are short runs in many planes, which the hardware prefetchers barely follow with cold
// caches, as in training, where a layer's backward reads what its forward saved long before
// (16@32x32, batch 128, one thread, bf16, caches flushed: aggregation backward 7.2 -> 5.3 ms).
template <typename T>
inline void prefetch_rows(const T* plane, int64_t rs, int64_t h, int64_t r0, int64_t n, int64_t w) {
  constexpr int64_t line = 64 / sizeof(T);
  for (int64_t y = std::max<int64_t>(r0, 0); y < std::min(r0 + n, h); ++y)
    for (int64_t q = 0; q < w; q += line) __builtin_prefetch(plane + y * rs + q, 0, 2);
}

// A sum of vectors over a wide_loop: one accumulator per lane count, folded into V lanes at the end.
template <typename T>
struct WideSum {
  vec_t<T, VW> wide = {};
  vec_t<T> narrow = {};

  template <typename Vec>
  void add(const Vec& v) {
    if constexpr (sizeof(Vec) == sizeof(wide)) wide += v;
    else narrow += v;
  }
  // Adds the lanes into V sums, sums[q] += lanes q, q + V, ...
  void fold_into(T* sums) const {
    vec_t<T> total = vload(sums) + narrow;
    total += vload(reinterpret_cast<const T*>(&wide)) + vload(reinterpret_cast<const T*>(&wide) + V);
    vstore(sums, total);
  }
};

// N bf16 values (their bits) as N floats: a 16-bit shift, written so that gcc vectorises it.
template <int64_t N>
inline vec_t<float, N> widen_bf16(const uint16_t* bits) {
  vec_t<uint16_t, N> h;
  std::memcpy(&h, bits, sizeof(h));
  const vec_t<uint32_t, N> w = __builtin_convertvector(h, vec_t<uint32_t, N>) << 16;
  vec_t<float, N> v;
  std::memcpy(&v, &w, sizeof(v));
  return v;
}

// n values to opmath. bf16 -> float is a 16-bit shift, written so that gcc vectorises it (its
// c10::BFloat16 conversion stays scalar: measured 1.3-1.5x slower kernels in bf16 than fp32).
template <typename scalar_t, typename acc_t>
inline void to_opmath(const scalar_t* src, int64_t n, acc_t* dst) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16> && std::is_same_v<acc_t, float>) {
    const uint16_t* bits = reinterpret_cast<const uint16_t*>(src);
    int64_t i = 0;
    for (; i + VW <= n; i += VW) vstore(dst + i, widen_bf16<VW>(bits + i));
    for (; i + V <= n; i += V) vstore(dst + i, widen_bf16<V>(bits + i));
    for (; i < n; ++i) {
      const uint32_t u = uint32_t(bits[i]) << 16;
      std::memcpy(dst + i, &u, sizeof(u));
    }
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = acc_t(src[i]);
  }
}

// n opmath values back, bf16 rounded to nearest even with NaN kept NaN (c10's rule; with
// BIVOL_CVT_BF16 denormals to zero), vectorisable.
template <typename scalar_t, typename acc_t>
inline void from_opmath(const acc_t* src, int64_t n, scalar_t* dst) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16> && std::is_same_v<acc_t, float>) {
    uint16_t* bits = reinterpret_cast<uint16_t*>(dst);
#ifdef BIVOL_CVT_BF16
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 mask = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
      const __m512 f = _mm512_maskz_loadu_ps(mask, src + i);
      _mm256_mask_storeu_epi16(bits + i, mask, reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(f)));
    }
#else
    for (int64_t i = 0; i < n; ++i) {
      uint32_t u;
      std::memcpy(&u, src + i, sizeof(u));
      const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
      bits[i] = nan ? uint16_t(0x7FC0) : uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    }
#endif
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = scalar_t(src[i]);
  }
}

// N values of scalar_t as one opmath vector, and back (bf16 rounded as from_opmath): whole-vector
// forms of to_opmath / from_opmath, for loops where gcc would not vectorise the element loops.
template <typename scalar_t, typename acc_t, int64_t N = V>
inline vec_t<acc_t, N> vload_opmath(const scalar_t* p) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16> && std::is_same_v<acc_t, float>) {
    return widen_bf16<N>(reinterpret_cast<const uint16_t*>(p));
  } else if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return vload<N>(p);
  } else {
    acc_t lanes[N];
    to_opmath(p, N, lanes);
    return vload<N>(lanes);
  }
}

template <typename scalar_t, typename acc_t, int64_t N = V>
inline void vstore_from_opmath(scalar_t* p, const vec_t<acc_t, N>& v) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16> && std::is_same_v<acc_t, float>) {
#ifdef BIVOL_CVT_BF16
    static_assert(N == 8 || N == 16, "one 256- or 512-bit vector of floats");
    if constexpr (N == 8) {
      __m256 f;
      std::memcpy(&f, &v, sizeof(f));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p), reinterpret_cast<__m128i>(_mm256_cvtneps_pbh(f)));
    } else {
      __m512 f;
      std::memcpy(&f, &v, sizeof(f));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(f)));
    }
#else
    using half_bits = vec_t<uint16_t, N>;
    using bits = vec_t<uint32_t, N>;
    bits u;
    std::memcpy(&u, &v, sizeof(u));
    const bits rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    const bits out = ((u & 0x7FFFFFFFu) > 0x7F800000u) ? bits{} + 0x7FC0u : rounded;  // NaN stays NaN
    const half_bits h = __builtin_convertvector(out, half_bits);
    std::memcpy(p, &h, sizeof(h));
#endif
  } else if constexpr (std::is_same_v<scalar_t, acc_t>) {
    vstore(p, v);
  } else {
    acc_t lanes[N];
    vstore(lanes, v);
    from_opmath(lanes, N, p);
  }
}

// ``v`` rounded to scalar_t and back: the values a store of v leaves in memory.
template <typename scalar_t, typename acc_t>
inline vec_t<acc_t> as_stored(const vec_t<acc_t>& v) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return v;
  } else {
    scalar_t lanes[V];
    vstore_from_opmath<scalar_t, acc_t>(lanes, v);
    return vload_opmath<scalar_t, acc_t>(lanes);
  }
}

// ``cols`` (<= N) values as an opmath vector, zeros past them: a whole-vector load when cols == N.
template <typename acc_t, int64_t N = V, typename scalar_t>
inline vec_t<acc_t, N> load_lanes(const scalar_t* src, int64_t cols) {
  if (cols == N) return vload_opmath<scalar_t, acc_t, N>(src);
  acc_t lanes[N] = {};
  to_opmath(src, cols, lanes);
  return vload<N>(lanes);
}

// The first ``cols`` (<= N) lanes of ``v`` into dst: a whole-vector store when cols == N.
template <typename acc_t, int64_t N = V, typename scalar_t>
inline void store_lanes(const vec_t<acc_t, N>& v, int64_t cols, scalar_t* dst) {
  if (cols == N) {
    vstore_from_opmath<scalar_t, acc_t, N>(dst, v);
    return;
  }
  acc_t lanes[N];
  vstore(lanes, v);
  from_opmath(lanes, cols, dst);
}

}  // namespace bivol
