// bf16 vectors for AVX512-BF16 (vdpbf16ps), the layer under involution_cpu.cpp's bf16 kernels:
// compiled in where -march=native has the instructions (BIVOL_DOT).
// vdpbf16ps multiplies the bf16 pairs of two vectors (32-bit words, low half first) and adds each
// pair's two products to one float lane.
#pragma once

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define BIVOL_DOT 1
#include <immintrin.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>

namespace bivol::dot {

// L float lanes (an even-column and an odd-column vector cover 2L output columns).
template <int L>
struct Simd;

template <>
struct Simd<16> {
  using f = __m512;
  using i = __m512i;
  using mask = __mmask32;  // one bit per bf16 word of a vector
  static f zero() { return _mm512_setzero_ps(); }
  static i load(const void* p) { return _mm512_loadu_si512(p); }
  static i load_masked(const uint16_t* p, mask m) { return _mm512_maskz_loadu_epi16(m, p); }
  static void store_words(uint32_t* p, i v) { _mm512_storeu_si512(p, v); }
  static f add(f a, f b) { return _mm512_add_ps(a, b); }
  static __mmask32 cols_mask(int64_t lo, int64_t hi) {  // lanes [lo, hi) of 2L, clamped
    lo = std::clamp<int64_t>(lo, 0, 32), hi = std::clamp<int64_t>(hi, lo, 32);
    return __mmask32(((uint64_t(1) << hi) - 1) & ~((uint64_t(1) << lo) - 1));
  }
  // 2L bf16 from p, lanes outside [lo, hi) zero (and not read)
  static i load_range(const uint16_t* p, int64_t lo, int64_t hi) { return _mm512_maskz_loadu_epi16(cols_mask(lo, hi), p); }
  // the first ``cols`` of 2L bf16 in column order, as even and odd column floats
  static void load_even_odd(const c10::BFloat16* p, int64_t cols, f& even, f& odd) {
    const i w = _mm512_maskz_loadu_epi16(cols_mask(0, cols), p);
    even = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    odd = _mm512_castsi512_ps(_mm512_andnot_si512(_mm512_set1_epi32(0xFFFF), w));
  }
  static i zeros() { return _mm512_setzero_si512(); }
  // L columns of two rows as words (lo[l], hi[l]) in column order; lanes outside [lo0, lo1) of lo
  // and [hi0, hi1) of hi are zero (and not read)
  static i interleave(const uint16_t* lo, int64_t lo0, int64_t lo1, const uint16_t* hi, int64_t hi0, int64_t hi1) {
    return interleave(lo, lanes(lo0, lo1), hi, lanes(hi0, hi1));
  }
  using lane_mask = __mmask16;  // one bit per float lane
  static lane_mask lanes(int64_t a, int64_t b) {  // lanes [a, b), clamped
    a = std::clamp<int64_t>(a, 0, 16), b = std::clamp<int64_t>(b, a, 16);
    return lane_mask(((1u << b) - 1) & ~((1u << a) - 1));
  }
  // interleave with the lanes given as masks (precomputed where a loop repeats them)
  static i interleave(const uint16_t* lo, lane_mask mlo, const uint16_t* hi, lane_mask mhi) {
    return _mm512_or_si512(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mlo, lo)),
                           _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mhi, hi)), 16));
  }
  // L floats rounded to bf16, the first ``cols`` stored
  static void store_cols(f v, int64_t cols, c10::BFloat16* dst) {
    const __mmask16 mask = cols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cols) - 1);
    _mm256_mask_storeu_epi16(dst, mask, reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
  }
  // the first ``cols`` (<= 2L) bf16 of p, zeros past them
  static i load_cols(const uint16_t* p, int64_t cols) {
    return _mm512_maskz_loadu_epi16(cols >= 32 ? ~__mmask32(0) : (__mmask32(1) << cols) - 1, p);
  }
  // 2L columns of two rows as words: even (lo[2l], hi[2l]) and odd (lo[2l + 1], hi[2l + 1])
  static void pair(i lo, i hi, i& even, i& odd) {
    const i low = _mm512_set1_epi32(0xFFFF);
    even = _mm512_or_si512(_mm512_and_si512(lo, low), _mm512_slli_epi32(hi, 16));
    odd = _mm512_or_si512(_mm512_srli_epi32(lo, 16), _mm512_andnot_si512(low, hi));
  }
  static f dp(f acc, i a, i b) {
    return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(a), reinterpret_cast<__m512bh>(b));
  }
  // even/odd columns rounded to bf16 (nearest even), stored in column order (``cols`` <= 2L of them)
  static void store(f even, f odd, int64_t cols, c10::BFloat16* dst) {
    const __m512i both = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(odd, even));  // even in the low half
    const __m512i order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                           23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __mmask32 mask = cols >= 32 ? ~__mmask32(0) : (__mmask32(1) << cols) - 1;
    _mm512_mask_storeu_epi16(dst, mask, _mm512_permutexvar_epi16(order, both));
  }
};

template <>
struct Simd<8> {
  using f = __m256;
  using i = __m256i;
  using mask = __mmask16;
  static f zero() { return _mm256_setzero_ps(); }
  static i load(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
  static i load_masked(const uint16_t* p, mask m) { return _mm256_maskz_loadu_epi16(m, p); }
  static void store_words(uint32_t* p, i v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  static f add(f a, f b) { return _mm256_add_ps(a, b); }
  static __mmask16 cols_mask(int64_t lo, int64_t hi) {
    lo = std::clamp<int64_t>(lo, 0, 16), hi = std::clamp<int64_t>(hi, lo, 16);
    return __mmask16(((1u << hi) - 1) & ~((1u << lo) - 1));
  }
  static i load_range(const uint16_t* p, int64_t lo, int64_t hi) { return _mm256_maskz_loadu_epi16(cols_mask(lo, hi), p); }
  static void load_even_odd(const c10::BFloat16* p, int64_t cols, f& even, f& odd) {
    const i w = _mm256_maskz_loadu_epi16(cols_mask(0, cols), p);
    even = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
    odd = _mm256_castsi256_ps(_mm256_andnot_si256(_mm256_set1_epi32(0xFFFF), w));
  }
  static i zeros() { return _mm256_setzero_si256(); }
  static i interleave(const uint16_t* lo, int64_t lo0, int64_t lo1, const uint16_t* hi, int64_t hi0, int64_t hi1) {
    return interleave(lo, lanes(lo0, lo1), hi, lanes(hi0, hi1));
  }
  using lane_mask = __mmask8;
  static lane_mask lanes(int64_t a, int64_t b) {
    a = std::clamp<int64_t>(a, 0, 8), b = std::clamp<int64_t>(b, a, 8);
    return lane_mask(((1u << b) - 1) & ~((1u << a) - 1));
  }
  static i interleave(const uint16_t* lo, lane_mask mlo, const uint16_t* hi, lane_mask mhi) {
    return _mm256_or_si256(_mm256_cvtepu16_epi32(_mm_maskz_loadu_epi16(mlo, lo)),
                           _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_maskz_loadu_epi16(mhi, hi)), 16));
  }
  static void store_cols(f v, int64_t cols, c10::BFloat16* dst) {
    const __mmask8 mask = cols >= 8 ? __mmask8(0xFF) : __mmask8((1u << cols) - 1);
    _mm_mask_storeu_epi16(dst, mask, reinterpret_cast<__m128i>(_mm256_cvtneps_pbh(v)));
  }
  static i load_cols(const uint16_t* p, int64_t cols) {
    return _mm256_maskz_loadu_epi16(cols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cols) - 1), p);
  }
  static void pair(i lo, i hi, i& even, i& odd) {
    const i low = _mm256_set1_epi32(0xFFFF);
    even = _mm256_or_si256(_mm256_and_si256(lo, low), _mm256_slli_epi32(hi, 16));
    odd = _mm256_or_si256(_mm256_srli_epi32(lo, 16), _mm256_andnot_si256(low, hi));
  }
  static f dp(f acc, i a, i b) {
    return _mm256_dpbf16_ps(acc, reinterpret_cast<__m256bh>(a), reinterpret_cast<__m256bh>(b));
  }
  static void store(f even, f odd, int64_t cols, c10::BFloat16* dst) {
    const __m256i both = reinterpret_cast<__m256i>(_mm256_cvtne2ps_pbh(odd, even));
    const __m256i order = _mm256_set_epi16(15, 7, 14, 6, 13, 5, 12, 4, 11, 3, 10, 2, 9, 1, 8, 0);
    const __mmask16 mask = cols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cols) - 1);
    _mm256_mask_storeu_epi16(dst, mask, _mm256_permutexvar_epi16(order, both));
  }
};

inline const uint16_t* bits(const c10::BFloat16* p) { return reinterpret_cast<const uint16_t*>(p); }

// Rows [r0, r0 + n) of a (h, w) plane (row stride rs) into rows of ``width`` (a multiple of 32)
// values: column q is plane column q - lead, zero outside the plane. Masked loads: lanes outside
// the plane are neither read nor faulted on.
inline void copy_band(const uint16_t* plane, int64_t rs, int64_t h, int64_t w, int64_t r0, int64_t n, int64_t lead,
               int64_t width, uint16_t* dst) {
  for (int64_t r = 0; r < n; ++r, dst += width) {
    const int64_t y = r0 + r;
    for (int64_t q0 = 0; q0 < width; q0 += 32) {
      const int64_t lo = std::clamp<int64_t>(lead - q0, 0, 32), hi = std::clamp<int64_t>(lead - q0 + w, 0, 32);
      const __mmask32 mask = y < 0 || y >= h ? 0 : __mmask32(((uint64_t(1) << hi) - 1) & ~((uint64_t(1) << lo) - 1));
      _mm512_storeu_si512(dst + q0, _mm512_maskz_loadu_epi16(mask, plane + y * rs + q0 - lead));
    }
  }
}

// The sum and the sum of squares of n bf16 values into stats[0], stats[1].
inline void block_stats(const c10::BFloat16* values, int64_t n, double* stats) {
  __m512 sum = _mm512_setzero_ps(), sq = _mm512_setzero_ps();
  for (int64_t p = 0; p < n; p += 16) {
    const __mmask16 mask = n - p >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - p)) - 1);
    const __m512 y = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, values + p)), 16));
    sum = _mm512_add_ps(sum, y);
    sq = _mm512_fmadd_ps(y, y, sq);
  }
  stats[0] = _mm512_reduce_add_ps(sum);
  stats[1] = _mm512_reduce_add_ps(sq);
}

}  // namespace bivol::dot
#endif
