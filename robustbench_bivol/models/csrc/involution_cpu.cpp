// Fused involution aggregation on the CPU (forward and backward), see fused_involution.py.
//
// out[b, g*gc + c, i, j] = sum_{u,v} kernels[b, g, u*K + v, i, j]
//                                    * x[b, g*gc + c, s*i + d*u - pad_top, s*j + d*v - pad_left]
// with zeros outside x. The output size is the kernel map's (Ho, Wo), so asymmetric padding
// (a row band of a larger input) needs no copy. Each task owns (example, group, block of output
// rows): it converts the input rows it reads into a zero-padded opmath buffer once per channel
// and accumulates all K*K taps into one output row buffer, written once. grad_input is a gather
// over blocks of *input* rows, so no two tasks write the same element (no atomics). bf16 at stride
// 1 and dilation 1 runs on AVX512-BF16 dot products where the CPU has them (namespace dot_kernels).
#include "involution_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <vector>

#include "common.h"

#include "dot_bf16.h"

namespace {

using bivol::V;
using bivol::as_stored;
using bivol::ceil_div;
using bivol::from_opmath;
using bivol::to_opmath;
using bivol::round_up;
using bivol::load_lanes;
using bivol::store_lanes;
using bivol::vec_t;
using bivol::vload;
using bivol::vstore;
using bivol::VW;
using bivol::prefetch_rows;

// Register blocks: each kernel vector loaded serves CB channels (forward, grad_input), each grad_out
// vector loaded serves KT kernel taps (grad_kernels). Every accumulator is its own FMA chain, and
// fewer chains wait on FMA latency: CB 8 instead of 4 and, for K = 3, KT 9 instead of 4 (3 of 4
// used) made the passes 5-20% faster (16@32x32, batch 128, one thread). Groups of fewer than 8
// channels use CB = 4.
template <typename Body>
inline void with_channel_block(int64_t group_channels, const Body& body) {
  if (group_channels % 8 == 0) body(std::integral_constant<int64_t, 8>{});
  else body(std::integral_constant<int64_t, 4>{});
}

template <typename Body>
inline void with_tap_block(int64_t taps, const Body& body) {
  if (taps == 9) body(std::integral_constant<int64_t, 9>{});
  else body(std::integral_constant<int64_t, 4>{});
}

// V values at stride ``st`` (S: the stride known at compile time, 0 = runtime) as one vector. At
// stride 2: two loads and one shuffle (reading one value past the last, which buffers leave room
// for) instead of eight single-lane inserts, which perf found most of the strided aggregation's
// time in (16@32x32, batch 128, bf16, one thread, caches flushed: forward 2.1 -> 1.5 ms, kernel
// gradient 2.0 -> 1.2 ms).
template <int S, typename acc_t>
inline vec_t<acc_t> strided_load(const acc_t* p, int64_t st) {
  if constexpr (S == 1) return vload(p);
  if constexpr (S == 2) {
    static_assert(V == 8, "the shuffle takes the even lanes of two vectors of 8");
    return __builtin_shufflevector(vload(p), vload(p + V), 0, 2, 4, 6, 8, 10, 12, 14);
  }
  vec_t<acc_t> v;
  for (int64_t q = 0; q < V; ++q) v[q] = p[(S ? S : st) * q];
  return v;
}

struct Geometry {
  int64_t B, C, H, W, G, gc, K, KK, Ho, Wo, s, d, pt, pl;
  int64_t Wv() const { return round_up(Wo); }                      // output row length in buffers
  int64_t Wp() const { return s * (Wv() - 1) + d * (K - 1) + 1; }  // padded input row length read
  int64_t band_rows(int64_t rows) const { return s * (rows - 1) + d * (K - 1) + 1; }
};

Geometry geometry(const at::Tensor& x, const at::Tensor& k, int64_t K, int64_t s, int64_t d,
                  int64_t pt, int64_t pl) {
  Geometry g{x.size(0), x.size(1), x.size(2), x.size(3), k.size(1), 0, K, K * K,
             k.size(3), k.size(4), s, d, pt, pl};
  g.gc = g.C / g.G;
  return g;
}

// Rows per task: about 512 elements of work per row block, enough tasks to spread.
int64_t rows_per_block(int64_t rows, int64_t width) {
  return std::max<int64_t>(1, std::min<int64_t>(rows, 512 / std::max<int64_t>(width, 1)));
}

// Rows [r0, r0 + n) of one channel plane of x (row stride ``rs``), zero-padded to Wp columns,
// converted to opmath. Row r of the buffer is input row r0 + r; column q is input column q - pl.
template <typename scalar_t, typename acc_t>
void load_band(const scalar_t* plane, int64_t rs, const Geometry& g, int64_t r0, int64_t n, acc_t* buf) {
  const int64_t wp = g.Wp(), lo = std::min(g.pl, wp), hi = std::max(lo, std::min(wp, g.pl + g.W));
  for (int64_t r = 0; r < n; ++r) {
    acc_t* dst = buf + r * wp;
    const int64_t y = r0 + r;
    if (y < 0 || y >= g.H) {
      std::fill(dst, dst + wp, acc_t(0));
      continue;
    }
    const scalar_t* src = plane + y * rs - g.pl;
    std::fill(dst, dst + lo, acc_t(0));
    to_opmath(src + lo, hi - lo, dst + lo);
    std::fill(dst + hi, dst + wp, acc_t(0));
  }
}

// ``n`` rows of ``w`` values (source row stride w) into rows of length Wv (zero tail).
template <typename scalar_t, typename acc_t>
void load_rows(const scalar_t* src, int64_t n, int64_t w, int64_t wv, acc_t* dst) {
  for (int64_t r = 0; r < n; ++r) {
    to_opmath(src + r * w, w, dst + r * wv);
    std::fill(dst + r * wv + w, dst + (r + 1) * wv, acc_t(0));
  }
}

// The window [i0, i0 + rows) x [j0, j0 + cols) of a (h, w) plane, zeros outside it, as opmath.
template <typename scalar_t, typename acc_t>
void load_window(const scalar_t* plane, int64_t h, int64_t w, int64_t i0, int64_t j0, int64_t rows,
                 int64_t cols, acc_t* dst) {
  const int64_t lo = std::clamp<int64_t>(-j0, 0, cols), hi = std::clamp<int64_t>(w - j0, lo, cols);
  for (int64_t a = 0; a < rows; ++a, dst += cols) {
    const int64_t i = i0 + a;
    if (i < 0 || i >= h) {
      std::fill(dst, dst + cols, acc_t(0));
      continue;
    }
    const scalar_t* src = plane + i * w + j0;
    std::fill(dst, dst + lo, acc_t(0));
    to_opmath(src + lo, hi - lo, dst + lo);
    std::fill(dst + hi, dst + cols, acc_t(0));
  }
}

#ifdef BIVOL_DOT
// bf16 on CPUs with AVX512-BF16 (compiled in when -march=native has it). vdpbf16ps multiplies the
// bf16 pairs of two vectors and adds each pair's two products to one float lane. A plain load of
// a bf16 row at column j holds the pairs (j, j+1), (j+2, j+3), ...: two neighbouring taps of a
// kernel row for the even output columns j, j+2, ...; the load at j+1 holds them for the odd
// columns. So the aggregation keeps one accumulator of even and one of odd columns, pairs the
// kernels the same way once per task (shared by every channel), and reads x as it is, where the
// float path converts x to float and spends one FMA and one load per tap and 8 columns. An odd K's
// last pair is taps (K - 2, K - 1) with a zero kernel for K - 2: its extra product reads a value
// the real taps read too, so a non-finite x stays visible. Products of two bf16 are exact in float
// and added with float rounding, as in the float path; only the order of the additions differs
// (and denormals flush to zero). Dilation 1, stride 1; other geometries take the float path.
namespace dot_kernels {  // the aggregation's

using namespace bivol::dot;

// prefetch_rows for task t's band of x in the dot kernels' task order (example, group, row block):
// the rows that n output rows from i0 read, of each of the group's channels.
inline void prefetch_x_band(const uint16_t* xd, int64_t xsb, int64_t xsc, int64_t xsh, const Geometry& g,
                            int64_t t, int64_t nblocks, int64_t rb) {
  const int64_t bg = t / nblocks, i0 = t % nblocks * rb, n = std::min(rb, g.Ho - i0);
  for (int64_t c = 0; c < g.gc; ++c)
    prefetch_rows(xd + bg / g.G * xsb + (bg % g.G * g.gc + c) * xsc, xsh, g.H, i0 - g.pt, g.band_rows(n), g.W);
}

// The low tap of kernel-row pair m (K - 2 for an odd K's last pair, whose low kernel is zero).
inline int64_t low_tap(int64_t m, int64_t K) { return std::min(2 * m, K - 2); }

inline bool serves(const Geometry& g) { return g.s == 1 && g.d == 1 && g.K >= 2; }

// Kernel pairs of one task, kbuf[((u * M + m) * n + r) * wq + p]: for column block j0 (2L columns),
// words p = j0 + l (l < L) pair taps (v0, v0 + 1) at column j0 + 2l, words j0 + L + l at j0 + 2l + 1.
template <int L>
void pair_kernels(const uint16_t* k, const Geometry& g, int64_t n, uint32_t* kbuf) {
  using Vec = Simd<L>;
  const int64_t M = g.K / 2 + g.K % 2, wq = round_up(g.Wo, 2 * L), plane = g.Ho * g.Wo;
  for (int64_t u = 0; u < g.K; ++u)
    for (int64_t m = 0; m < M; ++m) {
      const int64_t v0 = low_tap(m, g.K);
      const uint16_t* lo = k + (u * g.K + v0) * plane;
      const bool real_lo = v0 == 2 * m;
      for (int64_t r = 0; r < n; ++r)
        for (int64_t j0 = 0; j0 < wq; j0 += 2 * L) {
          const int64_t cols = std::min<int64_t>(2 * L, g.Wo - j0), at = r * g.Wo + j0;
          typename Vec::i even, odd;
          Vec::pair(real_lo ? Vec::load_cols(lo + at, cols) : Vec::zeros(), Vec::load_cols(lo + plane + at, cols), even,
                    odd);
          uint32_t* dst = kbuf + ((u * M + m) * n + r) * wq + j0;
          Vec::store_words(dst, even);
          Vec::store_words(dst + L, odd);
        }
    }
}

// One block of 2L output columns of CB channels: even / odd[cc] = the sum over kernel rows u and
// tap pairs m of the paired kernels at kernel_at(u, m) times the band words at
// bands + cc * band + offset_at(u, m) (even columns) and one further on (odd columns). ``Masked``
// (rows read in place, see rows_per_vector): only the words in cols[2m + parity] & rows_at(u) are
// read (the columns of tap pair m's even or odd load, the rows of kernel row u inside the map),
// the others are zero.
template <int L, int64_t CB, bool Masked, typename KernelAt, typename OffsetAt, typename RowsAt>
inline void dot_block(int64_t K, const uint16_t* bands, int64_t band, const KernelAt& kernel_at,
                      const OffsetAt& offset_at, const typename Simd<L>::mask* cols, const RowsAt& rows_at,
                      typename Simd<L>::f* even, typename Simd<L>::f* odd) {
  using Vec = Simd<L>;
  // Accumulated in local variables, stored to even / odd once: the intrinsic vector types may alias
  // anything, so sums kept in the caller's arrays were stored and reloaded around every product.
  typename Vec::f e[CB], o[CB];
  for (int64_t cc = 0; cc < CB; ++cc) e[cc] = o[cc] = Vec::zero();
  for (int64_t u = 0; u < K; ++u) {
    const typename Vec::mask rows = rows_at(u);
    for (int64_t m = 0; m < K / 2 + K % 2; ++m) {
      const uint32_t* kp = kernel_at(u, m);
      const auto ke = Vec::load(kp), ko = Vec::load(kp + L);
      const uint16_t* words = bands + offset_at(u, m);
      if constexpr (Masked) {
        const typename Vec::mask me = cols[2 * m] & rows, mo = cols[2 * m + 1] & rows;
        for (int64_t cc = 0; cc < CB; ++cc) {
          e[cc] = Vec::dp(e[cc], ke, Vec::load_masked(words + cc * band, me));
          o[cc] = Vec::dp(o[cc], ko, Vec::load_masked(words + cc * band + 1, mo));
        }
      } else {
        for (int64_t cc = 0; cc < CB; ++cc) {  // past the block's channels: stale or zero values, never stored
          e[cc] = Vec::dp(e[cc], ke, Vec::load(words + cc * band));
          o[cc] = Vec::dp(o[cc], ko, Vec::load(words + cc * band + 1));
        }
      }
    }
  }
  for (int64_t cc = 0; cc < CB; ++cc) even[cc] = e[cc], odd[cc] = o[cc];
}

constexpr int64_t kChannels = 8;  // channels per register block of forward and grad_input

// Output rows per block where the kernels read x (forward) or grad_out (grad_input) in place:
// where whole rows fill a block of 2L columns (2L / Wo of them: 1 at 32 columns, 4 at 8) and lie
// back to back (row stride W). Their words come straight from the tensor through masked loads,
// which zero the words a row's window would take from its neighbours or from rows outside the map
// (rows_masks, block_rows_inside): the same zeros a padded band held, without copying the band. Small
// maps also stop leaving the lanes past Wo idle. 0: the padded band (other widths and strides).
inline int64_t rows_per_vector(const Geometry& g, int L, int64_t rb, int64_t row_stride) {
  if (g.W != g.Wo || (2 * L) % g.Wo != 0 || row_stride != g.W || g.K >= 2 * L || g.gc % kChannels != 0) return 0;
  const int64_t p = 2 * L / g.Wo;
  return g.Ho % p == 0 && rb % p == 0 ? p : 0;
}

// The words w of a block (2L of them) whose column column_of(w) lies in [0, width).
template <int L, typename ColumnOf>
typename Simd<L>::mask words_inside(int64_t width, const ColumnOf& column_of) {
  typename Simd<L>::mask mask = 0;
  for (int64_t w = 0; w < 2 * L; ++w)
    if (column_of(w) >= 0 && column_of(w) < width) mask |= typename Simd<L>::mask(1) << w;
  return mask;
}

// For blocks read in place: masks[2m + parity] marks the words of tap pair m's even (parity 0) or
// odd load that lie in their lane's own row: word w belongs to block column 2 * (w / 2) + parity,
// i.e. column j = that mod W of its row, and reads column j + shift(m) + w % 2 there (forward:
// shift(m) = low_tap(m) - pl; input gradient: pl - low_tap(m) - 1).
template <int L, typename Shift>
std::vector<typename Simd<L>::mask> rows_masks(const Geometry& g, const Shift& shift) {
  std::vector<typename Simd<L>::mask> masks(2 * (g.K / 2 + g.K % 2), 0);
  for (int64_t m = 0; m < g.K / 2 + g.K % 2; ++m)
    for (int64_t parity = 0; parity < 2; ++parity)
      masks[2 * m + parity] = words_inside<L>(g.W, [&](int64_t w) { return (2 * (w / 2) + parity) % g.W + shift(m) + w % 2; });
  return masks;
}

// The words of a block of P rows (W words each) from row y that lie in rows [0, h).
template <int L>
inline typename Simd<L>::mask block_rows_inside(int64_t y, int64_t P, int64_t h, int64_t W) {
  using mask = typename Simd<L>::mask;
  if (y >= 0 && y + P <= h) return mask(~mask(0));  // all inside: most blocks
  const int64_t lo = std::clamp<int64_t>(-y, 0, P), hi = std::clamp<int64_t>(h - y, 0, P);
  const uint64_t upto_hi = hi * W >= 64 ? ~uint64_t(0) : (uint64_t(1) << (hi * W)) - 1;
  return mask(upto_hi & ~((uint64_t(1) << (lo * W)) - 1));
}

template <int L>
void forward(const at::Tensor& x, const at::Tensor& k, at::Tensor& out, const Geometry& g, double* sd, int64_t nblocks,
             int64_t rb) {
  using Vec = Simd<L>;
  using f = typename Vec::f;
  constexpr int64_t CB = kChannels;
  const uint16_t* xd = bits(x.data_ptr<c10::BFloat16>());
  const uint16_t* kd = bits(k.data_ptr<c10::BFloat16>());
  c10::BFloat16* od = out.data_ptr<c10::BFloat16>();
  const int64_t xsb = x.stride(0), xsc = x.stride(1), xsh = x.stride(2), plane = g.Ho * g.Wo;
  // in place (see rows_per_vector): P output rows per block, the kernels paired as rows of 2L columns
  const int64_t P = rows_per_vector(g, L, rb, xsh), block_rows = std::max<int64_t>(P, 1);
  Geometry gk = g;
  if (P > 0) gk.Ho = g.Ho / P, gk.Wo = 2 * L;
  const std::vector<typename Vec::mask> masks =
      P > 0 ? rows_masks<L>(g, [&](int64_t m) { return low_tap(m, g.K) - g.pl; }) : std::vector<typename Vec::mask>();
  const auto rows_inside = [&](int64_t y) { return block_rows_inside<L>(y, P, g.H, g.W); };
  // otherwise a band of x's rows, ``width`` words each, x's column q - pl at word q
  const int64_t M = g.K / 2 + g.K % 2, wq = round_up(gk.Wo, 2 * L), width = round_up(wq + g.K - 1, 32);
  const int64_t band = P > 0 ? 0 : g.band_rows(rb) * width;
  at::parallel_for(0, g.B * g.G * nblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint32_t> kbuf(g.K * M * rb / block_rows * wq);
    std::vector<uint16_t> xbuf(CB * band);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t blk = t % nblocks, bg = t / nblocks, b = bg / g.G, grp = bg % g.G;
      const int64_t i0 = blk * rb, n = std::min(rb, g.Ho - i0), nv = n / block_rows;
      if (t + 1 < end) {  // the next task's kernels and rows of x
        const int64_t next = (t + 1) / nblocks, ni0 = (t + 1) % nblocks * rb, nn = std::min(rb, g.Ho - ni0);
        for (int64_t uv = 0; uv < g.KK; ++uv) prefetch_rows(kd + (next * g.KK + uv) * plane, g.Wo, g.Ho, ni0, nn, g.Wo);
        prefetch_x_band(xd, xsb, xsc, xsh, g, t + 1, nblocks, rb);
      }
      pair_kernels<L>(kd + bg * g.KK * plane + i0 * g.Wo, gk, nv, kbuf.data());
      for (int64_t c0 = 0; c0 < g.gc; c0 += CB) {
        const int64_t nc = std::min(CB, g.gc - c0);
        const uint16_t* xs = xd + b * xsb + (grp * g.gc + c0) * xsc;
        c10::BFloat16* os = od + (b * g.C + grp * g.gc + c0) * plane + i0 * g.Wo;
        const auto kernel_at = [&](int64_t r, int64_t j0) {
          return [&, r, j0](int64_t u, int64_t m) { return &kbuf[((u * M + m) * nv + r) * wq + j0]; };
        };
        // in place: rows r * P .. r * P + P - 1, back to back
        const auto store = [&](int64_t r, int64_t j0, const f* even, const f* odd) {
          for (int64_t cc = 0; cc < nc; ++cc)
            Vec::store(even[cc], odd[cc], std::min<int64_t>(2 * L, gk.Wo - j0), os + cc * plane + r * gk.Wo + j0);
        };
        if (P > 0) {
          for (int64_t r = 0; r < nv; ++r) {
            const int64_t y0 = i0 - g.pt + r * P;  // the input row of kernel row 0 for the block's first row
            f even[CB], odd[CB];
            dot_block<L, CB, true>(
                g.K, xs, xsc, kernel_at(r, 0), [&](int64_t u, int64_t m) { return (y0 + u) * xsh + low_tap(m, g.K) - g.pl; },
                masks.data(), [&](int64_t u) { return rows_inside(y0 + u); }, even, odd);
            store(r, 0, even, odd);
          }
        } else {
          for (int64_t cc = 0; cc < nc; ++cc)
            copy_band(xs + cc * xsc, xsh, g.H, g.W, i0 - g.pt, g.band_rows(n), g.pl, width, &xbuf[cc * band]);
          for (int64_t r = 0; r < n; ++r)
            for (int64_t j0 = 0; j0 < g.Wo; j0 += 2 * L) {
              f even[CB], odd[CB];
              dot_block<L, CB, false>(
                  g.K, xbuf.data(), band, kernel_at(r, j0),
                  [&](int64_t u, int64_t m) { return (r + u) * width + j0 + low_tap(m, g.K); }, nullptr,
                  [](int64_t) { return typename Vec::mask(0); }, even, odd);
              store(r, j0, even, odd);
            }
        }
        if (sd != nullptr)
          for (int64_t cc = 0; cc < nc; ++cc)  // from the stored values, still in cache
            block_stats(os + cc * plane, n * g.Wo, &sd[(t * g.gc + c0 + cc) * 2]);
      }
    }
  });
}


// grad_x (stride 1, as grad_input_gather): for input column x, taps v and v + 1 of kernel row u
// read grad_out and the kernels at output columns x + pl - v and one left of it, so the words pair
// (tap v + 1, tap v): a plain load of grad_out's window at x + span - v - 1 holds them for the even
// columns, and the kernels are paired to match (tap v zero in an odd K's last pair).
template <int L>
void grad_input(const at::Tensor& go, const at::Tensor& k, at::Tensor& gx, const Geometry& g, bool prior) {
  using Vec = Simd<L>;
  using f = typename Vec::f;
  constexpr int64_t CB = kChannels;
  const uint16_t* kd = bits(k.data_ptr<c10::BFloat16>());
  const uint16_t* gd = bits(go.data_ptr<c10::BFloat16>());
  c10::BFloat16* gxd = gx.data_ptr<c10::BFloat16>();
  const int64_t span = g.K - 1, plane = g.Ho * g.Wo, M = g.K / 2 + g.K % 2;
  const int64_t rb = rows_per_block(g.H, g.W), nblocks = (g.H + rb - 1) / rb;
  // in place (see rows_per_vector): P input rows per block, the kernels paired for every window
  // row a block can start at; otherwise a band of grad_out's window, ``width`` words a row
  const int64_t P = rows_per_vector(g, L, rb, g.Wo);
  const int64_t wq = P > 0 ? 2 * L : round_up(g.W, 2 * L), width = round_up(wq + span, 32);
  const int64_t win = P > 0 ? 0 : (rb + span) * width;
  const std::vector<typename Vec::mask> masks =
      P > 0 ? rows_masks<L>(g, [&](int64_t m) { return g.pl - low_tap(m, g.K) - 1; }) : std::vector<typename Vec::mask>();
  // in place, the kernels: words of column j read the kernel of output column j + shift, in
  // [0, Wo) for shift -v - 1 + pl (tap v + 1, the low word) and -v + pl (tap v)
  std::vector<typename Vec::mask> kernel_cols(2 * g.K, 0);
  for (int64_t v = 0; P > 0 && v < g.K; ++v)
    for (int64_t high = 0; high < 2; ++high)
      kernel_cols[2 * v + high] = words_inside<L>(g.Wo, [&](int64_t w) { return w % g.W + g.pl - v - 1 + high; });
  const auto rows_inside = [&](int64_t i) { return block_rows_inside<L>(i, P, g.Ho, g.W); };
  at::parallel_for(0, g.B * g.G * nblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint32_t> kbuf(g.K * M * (rb + span) * wq);
    std::vector<uint16_t> gbuf(CB * win);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t blk = t % nblocks, bg = t / nblocks, b = bg / g.G, grp = bg % g.G;
      const int64_t y0 = blk * rb, ny = std::min(rb, g.H - y0), i0 = y0 + g.pt - span, rows = ny + span;
      const int64_t na = P > 0 ? rows - P + 1 : rows;  // kernel rows paired (in place: block starts)
      if (t + 1 < end) {  // the next task's kernels, rows of grad_out and, with prior, of gx
        const int64_t next = (t + 1) / nblocks, ny0 = (t + 1) % nblocks * rb, nny = std::min(rb, g.H - ny0);
        for (int64_t uv = 0; uv < g.KK; ++uv)
          prefetch_rows(kd + (next * g.KK + uv) * plane, g.Wo, g.Ho, ny0 + g.pt - span, nny + span, g.Wo);
        for (int64_t c = 0; c < g.gc; ++c) {
          const int64_t ch = next / g.G * g.C + next % g.G * g.gc + c;
          prefetch_rows(gd + ch * plane, g.Wo, g.Ho, ny0 + g.pt - span, nny + span, g.Wo);
          if (prior) prefetch_rows(gxd + ch * g.H * g.W, g.W, g.H, ny0, nny, g.W);
        }
      }
      // kbuf[((u * M + m) * na + a) * wq + p]: window row a is output row i0 + a (in place: the block
      // of P rows from it)
      for (int64_t u = 0; u < g.K; ++u)
        for (int64_t m = 0; m < M; ++m) {
          const int64_t v = low_tap(m, g.K);
          const uint16_t* hi_plane = kd + (bg * g.KK + u * g.K + v) * plane;
          const bool real_hi = v == 2 * m;
          for (int64_t a = 0; a < na; ++a) {
            const int64_t i = i0 + a;
            for (int64_t x0 = 0; x0 < wq; x0 += 2 * L) {
              typename Vec::i lo = Vec::zeros(), hi = lo, even, odd;
              if (P > 0) {
                const typename Vec::mask inside = rows_inside(i);
                const int64_t j_lo = g.pl - v - 1;  // output column of lane 0's low word
                if (inside != 0) {
                  lo = Vec::load_masked(hi_plane + plane + i * g.Wo + j_lo, inside & kernel_cols[2 * v]);
                  if (real_hi) hi = Vec::load_masked(hi_plane + i * g.Wo + j_lo + 1, inside & kernel_cols[2 * v + 1]);
                }
              } else if (i >= 0 && i < g.Ho) {
                const int64_t j_lo = x0 + g.pl - v - 1, j_hi = j_lo + 1;  // output columns of lane 0
                lo = Vec::load_range(hi_plane + plane + i * g.Wo + j_lo, -j_lo, g.Wo - j_lo);
                if (real_hi) hi = Vec::load_range(hi_plane + i * g.Wo + j_hi, -j_hi, g.Wo - j_hi);
              }
              Vec::pair(lo, hi, even, odd);
              uint32_t* dst = &kbuf[((u * M + m) * na + a) * wq + x0];
              Vec::store_words(dst, even);
              Vec::store_words(dst + L, odd);
            }
          }
        }
      for (int64_t c0 = 0; c0 < g.gc; c0 += CB) {
        const int64_t nc = std::min(CB, g.gc - c0);
        const uint16_t* gs = gd + (b * g.C + grp * g.gc + c0) * plane;
        const auto kernel_at = [&](int64_t r, int64_t x0) {  // window row r + span - u holds kernel row u's output row
          return [&, r, x0](int64_t u, int64_t m) { return &kbuf[((u * M + m) * na + r + span - u) * wq + x0]; };
        };
        const auto store = [&](int64_t r, int64_t x0, f* even, f* odd) {  // in place: rows r .. r + P - 1, back to back
          const int64_t cols = std::min<int64_t>(2 * L, (P > 0 ? P * g.W : g.W) - x0);
          for (int64_t cc = 0; cc < nc; ++cc) {
            c10::BFloat16* dst = gxd + (b * g.C + grp * g.gc + c0 + cc) * g.H * g.W + (y0 + r) * g.W + x0;
            if (prior) {  // gx already holds another gradient of x
              f pe, po;
              Vec::load_even_odd(dst, cols, pe, po);
              even[cc] = Vec::add(even[cc], pe);
              odd[cc] = Vec::add(odd[cc], po);
            }
            Vec::store(even[cc], odd[cc], cols, dst);
          }
        };
        if (P > 0) {
          for (int64_t r = 0; r < ny; r += P) {
            f even[CB], odd[CB];
            dot_block<L, CB, true>(
                g.K, gs, plane, kernel_at(r, 0),
                [&](int64_t u, int64_t m) { return (i0 + r + span - u) * g.Wo + g.pl - low_tap(m, g.K) - 1; },
                masks.data(), [&](int64_t u) { return rows_inside(i0 + r + span - u); }, even, odd);
            store(r, 0, even, odd);
          }
        } else {
          for (int64_t cc = 0; cc < nc; ++cc)  // window column e is output column e + pl - span
            copy_band(gs + cc * plane, g.Wo, g.Ho, g.Wo, i0, rows, span - g.pl, width, &gbuf[cc * win]);
          for (int64_t r = 0; r < ny; ++r)
            for (int64_t x0 = 0; x0 < g.W; x0 += 2 * L) {
              f even[CB], odd[CB];
              dot_block<L, CB, false>(
                  g.K, gbuf.data(), win, kernel_at(r, x0),
                  [&](int64_t u, int64_t m) { return (r + span - u) * width + x0 + span - low_tap(m, g.K) - 1; }, nullptr,
                  [](int64_t) { return typename Vec::mask(0); }, even, odd);
              store(r, x0, even, odd);
            }
        }
      }
    }
  });
}

// grad_kernels (stride 1, as grad_kernels_impl): the reduction runs over channels, so the words
// pair channels (c, c + 1) of grad_out and of x's band, in column order; an odd group's last pair
// takes channel c - 1 with a zero grad_out (its x values are read by the pair before).
template <int L>
void grad_kernels(const at::Tensor& go, const at::Tensor& x, at::Tensor& gk, const Geometry& g) {
  using Vec = Simd<L>;
  using f = typename Vec::f;
  constexpr int64_t KT = 9;
  const uint16_t* xd = bits(x.data_ptr<c10::BFloat16>());
  const uint16_t* gd = bits(go.data_ptr<c10::BFloat16>());
  c10::BFloat16* gkd = gk.data_ptr<c10::BFloat16>();
  const int64_t xsb = x.stride(0), xsc = x.stride(1), xsh = x.stride(2), plane = g.Ho * g.Wo;
  const int64_t P = (g.gc + 1) / 2, wq = round_up(g.Wo, L), width = round_up(wq + g.K - 1, L);
  const int64_t rb = rows_per_block(g.Ho, g.Wo), nblocks = (g.Ho + rb - 1) / rb;  // bands of ~512 words a channel pair
  const int64_t band = g.band_rows(rb) * width;
  // the lanes of each column block inside the map: of x's band (column q - pl) and of grad_out
  std::vector<typename Vec::lane_mask> x_lanes(width / L), g_lanes(wq / L);
  for (int64_t q0 = 0; q0 < width; q0 += L) x_lanes[q0 / L] = Vec::lanes(g.pl - q0, g.pl - q0 + g.W);
  for (int64_t j0 = 0; j0 < wq; j0 += L) g_lanes[j0 / L] = Vec::lanes(0, g.Wo - j0);
  at::parallel_for(0, g.B * g.G * nblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint32_t> xbuf(P * band), gbuf(P * rb * wq);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t blk = t % nblocks, bg = t / nblocks, b = bg / g.G, grp = bg % g.G;
      const int64_t i0 = blk * rb, n = std::min(rb, g.Ho - i0), rows = g.band_rows(n);
      if (t + 1 < end) {  // the next task's rows of x and grad_out
        const int64_t next = (t + 1) / nblocks, ni0 = (t + 1) % nblocks * rb, nn = std::min(rb, g.Ho - ni0);
        prefetch_x_band(xd, xsb, xsc, xsh, g, t + 1, nblocks, rb);
        for (int64_t c = 0; c < g.gc; ++c)
          prefetch_rows(gd + (next / g.G * g.C + next % g.G * g.gc + c) * plane, g.Wo, g.Ho, ni0, nn, g.Wo);
      }
      for (int64_t p = 0; p < P; ++p) {
        const int64_t c = std::min(2 * p, g.gc - 2), ch = grp * g.gc + c;  // channels (c, c + 1)
        const uint16_t* xlo = xd + b * xsb + ch * xsc;
        for (int64_t a = 0; a < rows; ++a) {  // band column q is x column q - pl, zero outside x
          const int64_t y = i0 - g.pt + a;
          const bool inside = y >= 0 && y < g.H;
          for (int64_t q0 = 0; q0 < width; q0 += L) {
            const uint16_t* src = xlo + y * xsh + q0 - g.pl;
            const typename Vec::lane_mask m = inside ? x_lanes[q0 / L] : 0;
            Vec::store_words(&xbuf[p * band + a * width + q0], Vec::interleave(src, m, src + xsc, m));
          }
        }
        const uint16_t* glo = gd + (b * g.C + ch) * plane + i0 * g.Wo;
        for (int64_t r = 0; r < n; ++r)
          for (int64_t j0 = 0; j0 < wq; j0 += L) {
            const uint16_t* src = glo + r * g.Wo + j0;
            const typename Vec::lane_mask m = g_lanes[j0 / L];
            Vec::store_words(&gbuf[(p * rb + r) * wq + j0], Vec::interleave(src, c == 2 * p ? m : 0, src + plane, m));
          }
      }
      c10::BFloat16* kg = gkd + bg * g.KK * plane + i0 * g.Wo;
      for (int64_t r = 0; r < n; ++r)
        for (int64_t t0 = 0; t0 < g.KK; t0 += KT) {  // KT taps share each grad_out load
          const int64_t nt = std::min(KT, g.KK - t0);
          int64_t off[KT];  // each tap's x offset in the band; past nt: the last tap again, never stored
          for (int64_t k = 0; k < KT; ++k) {
            const int64_t uv = t0 + std::min(k, nt - 1);
            off[k] = (r + uv / g.K) * width + uv % g.K;
          }
          for (int64_t j0 = 0; j0 < g.Wo; j0 += L) {
            f acc[KT];
            for (int64_t k = 0; k < KT; ++k) acc[k] = Vec::zero();
            for (int64_t p = 0; p < P; ++p) {
              const auto gv = Vec::load(&gbuf[(p * rb + r) * wq + j0]);
              const uint32_t* xv = &xbuf[p * band + j0];
              for (int64_t k = 0; k < KT; ++k) acc[k] = Vec::dp(acc[k], gv, Vec::load(xv + off[k]));
            }
            for (int64_t k = 0; k < KT; ++k)  // KT, not nt, bounds the loop: indexed at run time, acc was kept in memory
              if (k < nt) Vec::store_cols(acc[k], std::min<int64_t>(L, g.Wo - j0), kg + (t0 + k) * plane + r * g.Wo + j0);
          }
        }
    }
  });
}

}  // namespace dot_kernels
#endif

// ``stats`` (when defined): per task and channel of its group, the sum and the sum of squares of
// the outputs as stored (bf16: rounded), (B * G * nblocks, gc, 2) float64, summed in task order by the caller.
template <int S, typename scalar_t>
void forward_impl(const at::Tensor& x, const at::Tensor& k, at::Tensor& out, const Geometry& g, at::Tensor& stats) {
  const int64_t rb = rows_per_block(g.Ho, g.Wo), nblocks = (g.Ho + rb - 1) / rb;
  if (stats.defined()) stats = at::empty({g.B * g.G * nblocks, g.gc, 2}, x.options().dtype(at::kDouble));
  double* sd = stats.defined() ? stats.data_ptr<double>() : nullptr;
#ifdef BIVOL_DOT
  if constexpr (S == 1 && std::is_same_v<scalar_t, c10::BFloat16>)
    if (dot_kernels::serves(g))
      return g.Wo > 16 || dot_kernels::rows_per_vector(g, 16, rb, x.stride(2)) > 0
                 ? dot_kernels::forward<16>(x, k, out, g, sd, nblocks, rb)
                 : dot_kernels::forward<8>(x, k, out, g, sd, nblocks, rb);
#endif
  with_channel_block(g.gc, [&](auto cb) {
  constexpr int64_t CB = decltype(cb)::value;
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* xd = x.data_ptr<scalar_t>();
  const scalar_t* kd = k.data_ptr<scalar_t>();
  scalar_t* od = out.data_ptr<scalar_t>();
  const int64_t xsb = x.stride(0), xsc = x.stride(1), xsh = x.stride(2), st = S ? S : g.s;
  const int64_t wp = g.Wp(), wv = g.Wv(), plane = g.Ho * g.Wo;
  const int64_t band = g.band_rows(rb) * wp;
  at::parallel_for(0, g.B * g.G * nblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> kbuf(g.KK * rb * wv), xbuf(CB * band + V);  // + V: strided_load's read past the end
    for (int64_t t = begin; t < end; ++t) {
      const int64_t blk = t % nblocks, bg = t / nblocks, b = bg / g.G, grp = bg % g.G;
      const int64_t i0 = blk * rb, n = std::min(rb, g.Ho - i0);
      for (int64_t uv = 0; uv < g.KK; ++uv)  // kbuf[uv][r][j]
        load_rows(kd + (bg * g.KK + uv) * plane + i0 * g.Wo, n, g.Wo, wv, &kbuf[uv * n * wv]);
      for (int64_t c0 = 0; c0 < g.gc; c0 += CB) {  // CB channels share each kernel load
        const int64_t nc = std::min(CB, g.gc - c0);
        for (int64_t cc = 0; cc < nc; ++cc)
          load_band(xd + b * xsb + (grp * g.gc + c0 + cc) * xsc, xsh, g, st * i0 - g.pt, g.band_rows(n),
                    &xbuf[cc * band]);
        vec_t<acc_t> sum[CB] = {}, sq[CB] = {};  // columns past Wo hold zeros: their kernels are zero
        for (int64_t r = 0; r < n; ++r)
          for (int64_t j0 = 0; j0 < g.Wo; j0 += V) {
            vec_t<acc_t> acc[CB] = {};
            for (int64_t u = 0; u < g.K; ++u)
              for (int64_t v = 0; v < g.K; ++v) {
                const vec_t<acc_t> kv = vload(&kbuf[((u * g.K + v) * n + r) * wv + j0]);
                const int64_t off = (st * r + g.d * u) * wp + st * j0 + g.d * v;
                for (int64_t cc = 0; cc < CB; ++cc) {  // past nc: zeros or stale finite values, never stored
                  acc[cc] += kv * strided_load<S>(&xbuf[cc * band + off], st);
                }
              }
            for (int64_t cc = 0; cc < nc; ++cc)
              store_lanes<acc_t>(acc[cc], std::min(V, g.Wo - j0), od + (b * g.C + grp * g.gc + c0 + cc) * plane + (i0 + r) * g.Wo + j0);
            if (sd != nullptr)
              for (int64_t cc = 0; cc < CB; ++cc) {  // statistics of the stored (rounded) outputs
                const vec_t<acc_t> y = as_stored<scalar_t, acc_t>(acc[cc]);
                sum[cc] += y;
                sq[cc] += y * y;
              }
          }
        if (sd != nullptr)
          for (int64_t cc = 0; cc < nc; ++cc) {
            double a = 0, q = 0;
            for (int64_t l = 0; l < V; ++l) {
              a += sum[cc][l];
              q += sq[cc][l];
            }
            sd[(t * g.gc + c0 + cc) * 2] = a;
            sd[(t * g.gc + c0 + cc) * 2 + 1] = q;
          }
      }
    }
  });
  });
}

// grad_kernels[b, g, uv, i, j] = sum_c grad_out[b, g*gc + c, i, j] * x[..., s*i + d*u - pt, s*j + d*v - pl]:
// all of a group's channels are loaded, so each kernel element is one register reduction over c.
template <int S, typename scalar_t>
void grad_kernels_impl(const at::Tensor& go, const at::Tensor& x, at::Tensor& gk, const Geometry& g) {
#ifdef BIVOL_DOT
  if constexpr (S == 1 && std::is_same_v<scalar_t, c10::BFloat16>)
    if (dot_kernels::serves(g) && g.gc >= 2)
      return g.Wo >= 16 ? dot_kernels::grad_kernels<16>(go, x, gk, g) : dot_kernels::grad_kernels<8>(go, x, gk, g);
#endif
  with_tap_block(g.KK, [&](auto kt) {
  constexpr int64_t KT = decltype(kt)::value;
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* xd = x.data_ptr<scalar_t>();
  const scalar_t* gd = go.data_ptr<scalar_t>();
  scalar_t* gkd = gk.data_ptr<scalar_t>();
  const int64_t xsb = x.stride(0), xsc = x.stride(1), xsh = x.stride(2), st = S ? S : g.s;
  const int64_t rb = rows_per_block(g.Ho, g.Wo * g.gc / 4), nblocks = (g.Ho + rb - 1) / rb;
  const int64_t wp = g.Wp(), wv = g.Wv(), plane = g.Ho * g.Wo, band = g.band_rows(rb) * wp;
  at::parallel_for(0, g.B * g.G * nblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> xbuf(g.gc * band + V), gbuf(g.gc * rb * wv);  // + V: strided_load's read past the end
    for (int64_t t = begin; t < end; ++t) {
      const int64_t blk = t % nblocks, bg = t / nblocks, b = bg / g.G, grp = bg % g.G;
      const int64_t i0 = blk * rb, n = std::min(rb, g.Ho - i0);
      for (int64_t c = 0; c < g.gc; ++c) {
        const int64_t ch = grp * g.gc + c;
        load_band(xd + b * xsb + ch * xsc, xsh, g, st * i0 - g.pt, g.band_rows(n), &xbuf[c * band]);
        load_rows(gd + (b * g.C + ch) * plane + i0 * g.Wo, n, g.Wo, wv, &gbuf[c * rb * wv]);
      }
      scalar_t* kg = gkd + bg * g.KK * plane + i0 * g.Wo;
      for (int64_t r = 0; r < n; ++r)
        for (int64_t t0 = 0; t0 < g.KK; t0 += KT) {  // KT taps share each grad_out load
          const int64_t nt = std::min(KT, g.KK - t0);
          int64_t off[KT];  // each tap's x offset in the band; past nt: the last tap again, never stored
          for (int64_t k = 0; k < KT; ++k) {
            const int64_t uv = t0 + std::min(k, nt - 1);
            off[k] = (st * r + g.d * (uv / g.K)) * wp + g.d * (uv % g.K);
          }
          for (int64_t j0 = 0; j0 < g.Wo; j0 += V) {
            vec_t<acc_t> acc[KT] = {};
            for (int64_t c = 0; c < g.gc; ++c) {
              const vec_t<acc_t> gv = vload(&gbuf[(c * rb + r) * wv + j0]);
              const acc_t* xv = &xbuf[c * band + st * j0];
              for (int64_t k = 0; k < KT; ++k) acc[k] += gv * strided_load<S>(xv + off[k], st);
            }
            for (int64_t k = 0; k < nt; ++k)
              store_lanes<acc_t>(acc[k], std::min(V, g.Wo - j0), kg + (t0 + k) * plane + r * g.Wo + j0);
          }
        }
    }
  });
  });
}

// grad_x[b, ch, y, x] = sum_{u,v} k[uv, i, j] * grad_out[ch, i, j] at i = y + pt - d*u, j = x + pl - d*v
// (stride 1): a gather over blocks of input rows, so no two tasks write the same element. The
// kernel and grad_out windows are loaded zero-padded, so every tap reads without bounds checks.
template <typename scalar_t>
void grad_input_gather(const at::Tensor& go, const at::Tensor& k, at::Tensor& gx, const Geometry& g, bool prior) {
  with_channel_block(g.gc, [&](auto cb) {
  constexpr int64_t CB = decltype(cb)::value;
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* kd = k.data_ptr<scalar_t>();
  const scalar_t* gd = go.data_ptr<scalar_t>();
  scalar_t* gxd = gx.data_ptr<scalar_t>();
  const int64_t span = g.d * (g.K - 1), wg = round_up(g.W) + span, plane = g.Ho * g.Wo;
  const int64_t rb = rows_per_block(g.H, g.W), nblocks = (g.H + rb - 1) / rb, win = (rb + span) * wg;
  at::parallel_for(0, g.B * g.G * nblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> kbuf(g.KK * win), gbuf(CB * win);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t blk = t % nblocks, bg = t / nblocks, b = bg / g.G, grp = bg % g.G;
      const int64_t y0 = blk * rb, ny = std::min(rb, g.H - y0), i0 = y0 + g.pt - span, j0 = g.pl - span;
      for (int64_t uv = 0; uv < g.KK; ++uv)  // window row a, column e: output row i0 + a, column j0 + e
        load_window(kd + (bg * g.KK + uv) * plane, g.Ho, g.Wo, i0, j0, ny + span, wg, &kbuf[uv * win]);
      for (int64_t c0 = 0; c0 < g.gc; c0 += CB) {  // CB channels share each kernel load
        const int64_t nc = std::min(CB, g.gc - c0);
        for (int64_t cc = 0; cc < nc; ++cc)
          load_window(gd + (b * g.C + grp * g.gc + c0 + cc) * plane, g.Ho, g.Wo, i0, j0, ny + span, wg,
                      &gbuf[cc * win]);
        for (int64_t r = 0; r < ny; ++r)
          for (int64_t x0 = 0; x0 < g.W; x0 += V) {
            vec_t<acc_t> acc[CB] = {};
            for (int64_t u = 0; u < g.K; ++u)
              for (int64_t v = 0; v < g.K; ++v) {
                const int64_t off = (r + span - g.d * u) * wg + x0 + span - g.d * v;
                const vec_t<acc_t> kv = vload(&kbuf[(u * g.K + v) * win + off]);
                for (int64_t cc = 0; cc < CB; ++cc)  // past nc: zeros or stale finite values, never stored
                  acc[cc] += kv * vload(&gbuf[cc * win + off]);
              }
            for (int64_t cc = 0; cc < nc; ++cc) {
              scalar_t* dst = gxd + (b * g.C + grp * g.gc + c0 + cc) * g.H * g.W + (y0 + r) * g.W + x0;
              const int64_t cols = std::min(V, g.W - x0);
              if (prior) acc[cc] += load_lanes<acc_t>(dst, cols);  // gx already holds another gradient of x
              store_lanes<acc_t>(acc[cc], cols, dst);
            }
          }
      }
    }
  });
  });
}

// Strided grad_x as a gather over blocks of input rows (no two tasks write the same element). Input
// column x = s*m + e (e < s) takes tap v iff s divides e + pl - d*v, from output column
// j = m + (e + pl - d*v) / s: for each residue e the taps read contiguous runs of kernels and
// grad_out, so the products vectorise over m into one accumulator row per residue, and the
// residues are interleaved once when the row is stored (added to gx's values with ``prior``).
template <int S, typename scalar_t>
void grad_input_strided(const at::Tensor& go, const at::Tensor& k, at::Tensor& gx, const Geometry& g, bool prior) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* kd = k.data_ptr<scalar_t>();
  const scalar_t* gd = go.data_ptr<scalar_t>();
  scalar_t* gxd = gx.data_ptr<scalar_t>();
  const int64_t st = S ? S : g.s, plane = g.Ho * g.Wo, span = g.d * (g.K - 1);
  const int64_t wm = round_up((g.W + st - 1) / st);  // accumulator row per residue
  const int64_t lead = span / st + 1;                // zero columns before output column 0 in the buffers
  const int64_t wb = lead + wm + (g.pl + st) / st + 1;
  const int64_t rb = rows_per_block(g.H, g.W), nblocks = (g.H + rb - 1) / rb;
  const int64_t max_rows = (rb - 1 + span) / st + 2;  // output rows an input-row block touches
  at::parallel_for(0, g.B * g.G * nblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> kbuf(g.KK * max_rows * wb), gbuf(max_rows * wb), acc(st * wm);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t blk = t % nblocks, bg = t / nblocks, b = bg / g.G, grp = bg % g.G;
      const int64_t y0 = blk * rb, y1 = std::min(g.H, y0 + rb);
      const int64_t ia = std::max<int64_t>(0, ceil_div(y0 + g.pt - span, st));
      const int64_t ib = std::min(g.Ho, (y1 - 1 + g.pt) / st + 1);
      const int64_t ni = std::max<int64_t>(0, ib - ia);
      const auto load = [&](const scalar_t* src, acc_t* dst) {  // ni rows, output column j at lead + j
        for (int64_t r = 0; r < ni; ++r) {
          acc_t* row = dst + r * wb;
          std::fill(row, row + wb, acc_t(0));
          to_opmath(src + r * g.Wo, std::min(g.Wo, wb - lead), row + lead);
        }
      };
      for (int64_t uv = 0; uv < g.KK; ++uv) load(kd + (bg * g.KK + uv) * plane + ia * g.Wo, &kbuf[uv * max_rows * wb]);
      for (int64_t c = 0; c < g.gc; ++c) {
        const int64_t ch = grp * g.gc + c;
        load(gd + (b * g.C + ch) * plane + ia * g.Wo, gbuf.data());
        scalar_t* xplane = gxd + (b * g.C + ch) * g.H * g.W;
        for (int64_t y = y0; y < y1; ++y) {
          std::fill(acc.begin(), acc.end(), acc_t(0));
          for (int64_t u = 0; u < g.K; ++u) {
            const int64_t num = y + g.pt - g.d * u;  // = s * i
            if (num < 0 || num % st) continue;
            const int64_t i = num / st;
            if (i < ia || i >= ib) continue;
            const acc_t* grow = &gbuf[(i - ia) * wb + lead];
            for (int64_t v = 0; v < g.K; ++v) {
              const int64_t e = ((g.d * v - g.pl) % st + st) % st, off = (e + g.pl - g.d * v) / st;
              const acc_t* krow = &kbuf[((u * g.K + v) * max_rows + i - ia) * wb + lead + off];
              const acc_t* gcol = grow + off;
              acc_t* dst = &acc[e * wm];
              for (int64_t m0 = 0; m0 < wm; m0 += V)
                vstore(dst + m0, vload(dst + m0) + vload(krow + m0) * vload(gcol + m0));
            }
          }
          scalar_t* out = xplane + y * g.W;
          if constexpr (S == 2) {  // the two residues interleaved a vector at a time
            static_assert(V == 8, "the shuffles below interleave two vectors of 8 lanes");
            for (int64_t m0 = 0; m0 < wm && 2 * m0 < g.W; m0 += V) {
              const vec_t<acc_t> even = vload(&acc[m0]), odd = vload(&acc[wm + m0]);
              const vec_t<acc_t> lo = __builtin_shufflevector(even, odd, 0, 8, 1, 9, 2, 10, 3, 11);
              const vec_t<acc_t> hi = __builtin_shufflevector(even, odd, 4, 12, 5, 13, 6, 14, 7, 15);
              const int64_t x0 = 2 * m0, n0 = std::min(V, g.W - x0), n1 = std::min(V, g.W - x0 - V);
              store_lanes<acc_t>(prior ? lo + load_lanes<acc_t>(out + x0, n0) : lo, n0, out + x0);
              if (n1 > 0) store_lanes<acc_t>(prior ? hi + load_lanes<acc_t>(out + x0 + V, n1) : hi, n1, out + x0 + V);
            }
          } else {
            for (int64_t x = 0; x < g.W; ++x)
              out[x] = scalar_t(acc[(x % st) * wm + x / st] + (prior ? acc_t(out[x]) : acc_t(0)));
          }
        }
      }
    }
  });
}

// With ``prior``, gx already holds another gradient of x, which the result is added to.
template <int S, typename scalar_t>
void grad_input_impl(const at::Tensor& go, const at::Tensor& k, at::Tensor& gx, const Geometry& g, bool prior) {
#ifdef BIVOL_DOT
  if constexpr (S == 1 && std::is_same_v<scalar_t, c10::BFloat16>)
    if (dot_kernels::serves(g))
      return g.W > 16 || dot_kernels::rows_per_vector(g, 16, rows_per_block(g.H, g.W), g.Wo) > 0
                 ? dot_kernels::grad_input<16>(go, k, gx, g, prior)
                 : dot_kernels::grad_input<8>(go, k, gx, g, prior);
#endif
  if constexpr (S == 1)
    grad_input_gather<scalar_t>(go, k, gx, g, prior);
  else
    grad_input_strided<S, scalar_t>(go, k, gx, g, prior);
}

// out[b, c] += scale[c] * y[b, c] + shift[c] over each (H, W) plane, in place.
template <typename scalar_t>
void scale_add_impl(at::Tensor& out, const at::Tensor& y, const at::Tensor& scale, const at::Tensor& shift) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = out.size(0), C = out.size(1), plane = out.size(2) * out.size(3);
  scalar_t* od = out.data_ptr<scalar_t>();
  const scalar_t* yd = y.data_ptr<scalar_t>();
  const acc_t* a = scale.data_ptr<acc_t>();
  const acc_t* sh = shift.data_ptr<acc_t>();
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const acc_t ac = a[bc % C], bias = sh[bc % C];
      scalar_t* o = od + bc * plane;
      const scalar_t* src = yd + bc * plane;
      for (int64_t p = 0; p < plane; p += VW) {
        const int64_t cols = std::min(VW, plane - p);
        store_lanes<acc_t, VW>(load_lanes<acc_t, VW>(o + p, cols) + ac * load_lanes<acc_t, VW>(src + p, cols) + bias,
                               cols, o + p);
      }
    }
  });
}

void check(const at::Tensor& x, const at::Tensor& k, int64_t K) {
  TORCH_CHECK(x.device().is_cpu() && k.device().is_cpu(), "fused involution: CPU tensors only");
  TORCH_CHECK(x.dim() == 4 && k.dim() == 5, "fused involution: x (B, C, H, W), kernels (B, G, K*K, Ho, Wo)");
  TORCH_CHECK(x.scalar_type() == k.scalar_type(), "fused involution: x and kernels differ in dtype");
  TORCH_CHECK(x.stride(3) == 1, "fused involution: x needs unit column stride");
  TORCH_CHECK(k.is_contiguous(), "fused involution: kernels must be contiguous");
  TORCH_CHECK(k.size(0) == x.size(0) && x.size(1) % k.size(1) == 0 && k.size(2) == K * K,
              "fused involution: kernel map does not match x");
}

// Dispatch over dtype and stride (1 and 2 compiled specially, others at runtime).
#define BIVOL_DISPATCH(FN, ...)                                                              \
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "involution_" #FN, [&] {     \
    if (g.s == 1) FN<1, scalar_t>(__VA_ARGS__);                                              \
    else if (g.s == 2) FN<2, scalar_t>(__VA_ARGS__);                                         \
    else FN<0, scalar_t>(__VA_ARGS__);                                                       \
  })

}  // namespace

namespace bivol {

std::vector<at::Tensor> involution_forward_stats(const at::Tensor& x, const at::Tensor& kernels, int64_t K,
                                                 int64_t stride, int64_t dilation, int64_t pad_top, int64_t pad_left,
                                                 bool need_stats) {
  check(x, kernels, K);
  const Geometry g = geometry(x, kernels, K, stride, dilation, pad_top, pad_left);
  at::Tensor out = at::empty({g.B, g.C, g.Ho, g.Wo}, x.options());
  at::Tensor part = need_stats ? at::empty({0}, x.options().dtype(at::kDouble)) : at::Tensor();
  BIVOL_DISPATCH(forward_impl, x, kernels, out, g, part);
  if (!need_stats) return {out, at::Tensor()};
  // (B, G, nblocks, gc, 2) partials -> per channel (C, 2), summed in a fixed order
  const at::Tensor stats = part.view({g.B, g.G, -1, g.gc, 2}).sum({0, 2}).reshape({g.C, 2});
  return {out, stats};
}

at::Tensor involution_forward(const at::Tensor& x, const at::Tensor& kernels, int64_t K, int64_t stride,
                              int64_t dilation, int64_t pad_top, int64_t pad_left) {
  return involution_forward_stats(x, kernels, K, stride, dilation, pad_top, pad_left, false)[0];
}

std::vector<at::Tensor> involution_backward_prior(const at::Tensor& grad_out, const at::Tensor& x,
                                            const at::Tensor& kernels, int64_t K, int64_t stride,
                                            int64_t dilation, int64_t pad_top, int64_t pad_left,
                                            bool need_input, bool need_kernels,
                                            const c10::optional<at::Tensor>& grad_input_prior) {
  check(x, kernels, K);
  TORCH_CHECK(grad_out.is_contiguous() && grad_out.scalar_type() == x.scalar_type(),
              "fused involution: grad_out must be contiguous, same dtype");
  const Geometry g = geometry(x, kernels, K, stride, dilation, pad_top, pad_left);
  at::Tensor gx, gk;
  if (need_input) {
    const bool prior = grad_input_prior.has_value();
    if (prior)
      TORCH_CHECK(grad_input_prior->is_contiguous() && grad_input_prior->sizes() == x.sizes() &&
                      grad_input_prior->scalar_type() == x.scalar_type(),
                  "fused involution: grad_input_prior must be contiguous and match x");
    gx = prior ? *grad_input_prior : at::empty({g.B, g.C, g.H, g.W}, x.options());
    BIVOL_DISPATCH(grad_input_impl, grad_out, kernels, gx, g, prior);
  }
  if (need_kernels) {
    gk = at::empty_like(kernels);
    BIVOL_DISPATCH(grad_kernels_impl, grad_out, x, gk, g);
  }
  return {gx, gk};
}

std::vector<at::Tensor> involution_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                            const at::Tensor& kernels, int64_t K, int64_t stride,
                                            int64_t dilation, int64_t pad_top, int64_t pad_left,
                                            bool need_input, bool need_kernels) {
  return involution_backward_prior(grad_out, x, kernels, K, stride, dilation, pad_top, pad_left, need_input,
                                   need_kernels, c10::nullopt);
}

at::Tensor scale_add_(at::Tensor& out, const at::Tensor& y, const at::Tensor& scale, const at::Tensor& shift) {
  TORCH_CHECK(out.dim() == 4 && out.is_contiguous() && y.is_contiguous() && y.sizes() == out.sizes() &&
                  y.scalar_type() == out.scalar_type(),
              "scale_add_: out and y must be contiguous (B, C, H, W) tensors of one shape and dtype");
  const auto opmath = at::toOpMathType(out.scalar_type());
  TORCH_CHECK(scale.is_contiguous() && shift.is_contiguous() && scale.numel() == out.size(1) &&
                  shift.numel() == out.size(1) && scale.scalar_type() == opmath && shift.scalar_type() == opmath,
              "scale_add_: scale and shift must be (C) in the opmath dtype");
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, out.scalar_type(), "scale_add_",
                                 [&] { scale_add_impl<scalar_t>(out, y, scale, shift); });
  return out;
}

bool bf16_dot() {
#ifdef BIVOL_DOT
  return true;
#else
  return false;
#endif
}

}  // namespace bivol
