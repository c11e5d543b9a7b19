// Fused kernel generator of involution / SAKG on the CPU (forward and backward), see fused_generator.py.
//
// The generator's convolutions have few channels (16 -> 4 -> 9 in a CIFAR ResNet's first stage),
// where a library convolution spends its time on layout and per-call overhead, not arithmetic.
// Two pixel-local passes replace four library calls:
//
//   separable:      r[o] = sum_c Wr[o, c] * z[c],  z[c] = sum_{u,v} Wd[c, u*3+v] * x[c, i+u-1, j+v-1]
//                   (SAKG's depth-wise 3x3 then the 1x1 reduction; without Wd, z = x: the 1x1 alone)
//   relu_pointwise: k[o] = bias[o] + sum_c Ws[o, c] * max(n[c], 0)   (ReLU then the span 1x1)
//
// Each task owns (example, block of rows), loads its input band once into zero-padded opmath
// buffers and vectorises over V columns, or VW where a loop runs over a whole band (the 1x1 mixes
// and weight-gradient sums of the separable pass: 5% less time in bivol_resnet20's training).
// Backward recomputes z and max(n, 0) from the saved input instead of storing them. Weight gradients are summed per fixed chunk of tasks and the chunks
// added in order, so results depend on the thread count only, not on scheduling.
#include "kernel_generator_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <vector>

#include "common.h"

namespace bivol {
namespace {

// Rows [r0, r0 + n) of a (H, W) plane into rows of length wp: buffer column q holds input column
// q - lead; rows outside the plane are zero. The columns around a row's values are not written: the
// buffer keeps zeros there (a zero-initialised buffer that only this function writes, at one row
// length), which saves filling every row first: on 8-column rows the fill cost more than the values.
template <typename scalar_t, typename acc_t>
void load_padded(const scalar_t* plane, int64_t H, int64_t W, int64_t r0, int64_t n, int64_t lead, int64_t wp,
                 acc_t* dst) {
  for (int64_t r = 0; r < n; ++r, dst += wp) {
    const int64_t y = r0 + r;
    if (y < 0 || y >= H) std::fill(dst, dst + wp, acc_t(0));
    else to_opmath(plane + y * W, W, dst + lead);
  }
}

// Split ``ntasks`` into at most one chunk per thread; ``body(t0, t1, partial)`` handles tasks
// [t0, t1) and adds its weight-gradient sums into its chunk's ``partial`` (``size`` values, zeroed).
// Returns the chunks' partials summed in chunk order.
template <typename acc_t, typename Body>
std::vector<acc_t> chunked_sum(int64_t ntasks, int64_t size, const Body& body) {
  const int64_t nchunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), ntasks));
  std::vector<acc_t> partial(nchunks * size, acc_t(0));
  at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t chunk = c0; chunk < c1; ++chunk)
      body(ntasks * chunk / nchunks, ntasks * (chunk + 1) / nchunks, &partial[chunk * size]);
  });
  std::vector<acc_t> total(partial.begin(), partial.begin() + size);
  for (int64_t chunk = 1; chunk < nchunks; ++chunk)
    for (int64_t e = 0; e < size; ++e) total[e] += partial[chunk * size + e];
  return total;
}

// Sum each V-wide vector of ``sums`` (``n`` of them) into ``out`` (weight-gradient dtype).
template <typename acc_t>
at::Tensor fold_vectors(const std::vector<acc_t>& sums, int64_t n, const at::TensorOptions& options,
                        at::IntArrayRef shape) {
  at::Tensor out = at::empty(shape, options);
  acc_t* o = out.data_ptr<acc_t>();
  for (int64_t e = 0; e < n; ++e) {
    acc_t s = 0;
    for (int64_t q = 0; q < V; ++q) s += sums[e * V + q];
    o[e] = s;
  }
  return out;
}

// Adds to out[0], out[1] the sum of n values as stored (bf16: rounded) and the sum of their
// products with ``other`` (nullptr: with themselves), in float per call and double across calls:
// the statistics of a batch norm between two passes (see fused_training.py).
template <typename scalar_t, typename acc_t>
void stored_sums(const scalar_t* values, const acc_t* other, int64_t n, double* out) {
  vec_t<acc_t> sum = {}, prod = {};
  int64_t p = 0;
  for (; p + V <= n; p += V) {
    const vec_t<acc_t> y = vload_opmath<scalar_t, acc_t>(values + p);
    sum += y;
    prod += y * (other != nullptr ? vload(other + p) : y);
  }
  double a = 0, q = 0;
  for (; p < n; ++p) {
    const acc_t y = acc_t(values[p]);
    a += y;
    q += double(y) * (other != nullptr ? other[p] : y);
  }
  for (int64_t l = 0; l < V; ++l) {
    a += sum[l];
    q += prod[l];
  }
  out[0] += a;
  out[1] += q;
}

int64_t block_rows(int64_t H, int64_t W) { return std::max<int64_t>(1, std::min<int64_t>(H, 512 / std::max<int64_t>(W, 1))); }

struct Sep {
  int64_t B, C, H, W, R, Wv, Wp;  // Wp = Wv + 2: one zero column each side for the 3x3 taps
  bool dw;
};

// out[p] = sum_c w[c * wstride] * in[c * istride + p] for p < n (a multiple of V): a 1x1 conv of one band.
// Four vectors at a time where n allows: one accumulator alone is a chain of ``channels`` FMAs,
// each waiting on the one before.
template <typename acc_t>
inline void mix_channels(const acc_t* w, int64_t wstride, const acc_t* in, int64_t istride, int64_t channels,
                         int64_t n, acc_t* out) {
  constexpr int64_t U = 4;
  int64_t p0 = 0;
  for (; p0 + U * VW <= n; p0 += U * VW) {
    vec_t<acc_t, VW> acc[U] = {};
    for (int64_t c = 0; c < channels; ++c) {
      const acc_t wc = w[c * wstride];
      for (int64_t k = 0; k < U; ++k) acc[k] += wc * vload<VW>(in + c * istride + p0 + k * VW);
    }
    for (int64_t k = 0; k < U; ++k) vstore(out + p0 + k * VW, acc[k]);
  }
  wide_loop(n - p0, [&](auto lanes, int64_t q0) {
    constexpr int64_t N = decltype(lanes)::value;
    vec_t<acc_t, N> acc = {};
    for (int64_t c = 0; c < channels; ++c) acc += w[c * wstride] * vload<N>(in + c * istride + p0 + q0);
    vstore(out + p0 + q0, acc);
  });
}

// A channel's nine depth-wise weights copied into the loop's own variables: read through the weight
// pointer, gcc reloads them on every vector, as any store in the loop might have changed them.
template <typename acc_t>
struct Taps {
  acc_t w[9] = {};
  explicit Taps(const acc_t* wd) {
    if (wd != nullptr) std::copy(wd, wd + 9, w);
  }
};

// z of one channel on band rows 1..n into rows of Wv (band row rr <-> image row i0 - 1 + rr; x band
// column q <-> image column q - 1): the depth-wise 3x3, or x itself without it.
template <typename acc_t>
inline void depthwise_band(const acc_t* xb, const acc_t* wd, int64_t n, int64_t wv, int64_t wp, acc_t* z) {
  const Taps<acc_t> taps(wd);
  for (int64_t rr = 1; rr <= n; ++rr, z += wv) {
    if (wd == nullptr) {
      std::copy(xb + rr * wp + 1, xb + rr * wp + 1 + wv, z);
      continue;
    }
    wide_loop(wv, [&](auto lanes, int64_t j0) {
      constexpr int64_t N = decltype(lanes)::value;
      vec_t<acc_t, N> acc = {};
      for (int64_t u = 0; u < 3; ++u)
        for (int64_t v = 0; v < 3; ++v) acc += taps.w[u * 3 + v] * vload<N>(xb + (rr - 1 + u) * wp + j0 + v);
      vstore(z + j0, acc);
    });
  }
}

template <typename scalar_t>
std::vector<at::Tensor> separable_forward_impl(const at::Tensor& x, const at::Tensor& wd, const at::Tensor& wr,
                                               const Sep& s, bool need_sums, bool need_stats) {
  using acc_t = at::opmath_type<scalar_t>;
  at::Tensor r = at::empty({s.B, s.R, s.H, s.W}, x.options());
  const scalar_t* xd = x.data_ptr<scalar_t>();
  const acc_t* wdd = s.dw ? wd.data_ptr<acc_t>() : nullptr;
  const acc_t* wrd = wr.data_ptr<acc_t>();
  scalar_t* rd = r.data_ptr<scalar_t>();
  const int64_t rb = block_rows(s.H, s.W), nblocks = (s.H + rb - 1) / rb, plane = s.H * s.W;
  const int64_t band = (rb + 2) * s.Wp, zband = rb * s.Wv;
  // Channel sums per task (its rows), added in task order below: the result does not depend on threads.
  at::Tensor part = need_sums ? at::zeros({s.B, nblocks, s.C}, wr.options()) : at::Tensor();
  acc_t* pd = need_sums ? part.data_ptr<acc_t>() : nullptr;
  // r's sums and sums of squares per task and channel, likewise
  at::Tensor stats = need_stats ? at::zeros({s.B, nblocks, s.R, 2}, x.options().dtype(at::kDouble)) : at::Tensor();
  double* sd = need_stats ? stats.data_ptr<double>() : nullptr;
  at::parallel_for(0, s.B * nblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> xb(s.C * band), zb(s.C * zband), out(zband);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / nblocks, i0 = (t % nblocks) * rb, n = std::min(rb, s.H - i0);
      for (int64_t c = 0; c < s.C; ++c) {
        load_padded(xd + (b * s.C + c) * plane, s.H, s.W, i0 - 1, n + 2, 1, s.Wp, &xb[c * band]);
        depthwise_band(&xb[c * band], s.dw ? wdd + c * 9 : nullptr, n, s.Wv, s.Wp, &zb[c * zband]);
        if (need_sums) {  // the block's own rows 1..n; the padding columns are zero
          vec_t<acc_t> acc = {};
          const acc_t* rows = &xb[c * band + s.Wp];
          int64_t q = 0;
          for (; q + V <= n * s.Wp; q += V) acc += vload(rows + q);
          acc_t total = 0;
          for (; q < n * s.Wp; ++q) total += rows[q];
          for (int64_t l = 0; l < V; ++l) total += acc[l];
          pd[t * s.C + c] = total;
        }
      }
      for (int64_t o = 0; o < s.R; ++o) {
        mix_channels(wrd + o * s.C, 1, zb.data(), zband, s.C, n * s.Wv, out.data());
        scalar_t* dst = rd + (b * s.R + o) * plane + i0 * s.W;
        if (s.W == s.Wv)  // rows back to back in both
          from_opmath(out.data(), n * s.W, dst);
        else
          for (int64_t rr = 0; rr < n; ++rr) from_opmath(&out[rr * s.Wv], s.W, dst + rr * s.W);
        if (need_stats) stored_sums<scalar_t, acc_t>(dst, nullptr, n * s.W, &sd[(t * s.R + o) * 2]);
      }
    }
  });
  return {r, need_sums ? part.sum(1) : at::Tensor(), need_stats ? stats.sum(1) : at::Tensor()};
}

// One gradient vector of x: ``g`` plus the channel's ``bias`` plus, with ``prior``, the values
// already there (the same cells of another gradient of x), rounded once into ``dst``.
template <int64_t N, typename scalar_t, typename acc_t>
inline void store_grad(const vec_t<acc_t, N>& g, int64_t cols, acc_t bias, const scalar_t* prior, scalar_t* dst) {
  store_lanes<acc_t, N>(prior != nullptr ? g + bias + load_lanes<acc_t, N>(prior, cols) : g + bias, cols, dst);
}

// grad of r on a band, as load_padded (lead 0): with ``bn``, grad[o] = a[o] * gn[o] + q[o] * r[o] +
// c[b, o] from the gradient of the batch norm's output and r (see BnGrad), else the rows of gr.
template <typename scalar_t, typename acc_t>
struct BnGrad {
  const scalar_t* r;    // (B, R, H, W), or nullptr: the plain gradient
  const acc_t* a;       // (R)
  const acc_t* q;       // (R)
  const acc_t* c;       // (B, R)
};

template <typename scalar_t, typename acc_t>
void load_grad_band(const scalar_t* gr, const BnGrad<scalar_t, acc_t>& bn, int64_t b, int64_t o, const Sep& s,
                    int64_t r0, int64_t n, acc_t* dst) {
  const int64_t plane = s.H * s.W, at = (b * s.R + o) * plane;
  if (bn.r == nullptr) return load_padded(gr + at, s.H, s.W, r0, n, 0, s.Wv, dst);
  const acc_t a = bn.a[o], q = bn.q[o], c = bn.c[b * s.R + o];
  // the plane's rows among the band's: [y0, y1), within [r0, r0 + n)
  const int64_t y0 = std::min(std::max<int64_t>(r0, 0), r0 + n), y1 = std::max(std::min(r0 + n, s.H), y0);
  std::fill(dst, dst + (y0 - r0) * s.Wv, acc_t(0));  // rows above and below the plane
  std::fill(dst + (y1 - r0) * s.Wv, dst + n * s.Wv, acc_t(0));
  // the plane's rows: one run where they lie back to back in the band too (W a multiple of V)
  const bool whole = s.W == s.Wv;
  const int64_t len = whole ? (y1 - y0) * s.W : s.W;
  for (int64_t y = y0; y < y1; y += whole ? y1 - y0 : 1) {
    const scalar_t* g = gr + at + y * s.W;
    const scalar_t* r = bn.r + at + y * s.W;
    acc_t* row = dst + (y - r0) * s.Wv;
    int64_t j = 0;
    for (; j + V <= len; j += V)
      vstore(row + j, a * vload_opmath<scalar_t, acc_t>(g + j) + q * vload_opmath<scalar_t, acc_t>(r + j) + c);
    for (; j < len; ++j) row[j] = a * acc_t(g[j]) + q * acc_t(r[j]) + c;
  }
}

template <typename scalar_t>
std::vector<at::Tensor> separable_backward_impl(const at::Tensor& gr, const at::Tensor& x, const at::Tensor& wd,
                                                const at::Tensor& wr, const Sep& s, bool need_x,
                                                const at::Tensor& gx_prior, const at::Tensor& gx_bias,
                                                const BnGrad<scalar_t, at::opmath_type<scalar_t>>& bn) {
  using acc_t = at::opmath_type<scalar_t>;
  at::Tensor gx = !need_x ? at::Tensor() : gx_prior.defined() ? gx_prior : at::empty_like(x);
  const bool prior = gx_prior.defined();
  const acc_t* biasd = gx_bias.defined() ? gx_bias.data_ptr<acc_t>() : nullptr;
  const scalar_t* xd = x.data_ptr<scalar_t>();
  const scalar_t* gd = gr.data_ptr<scalar_t>();
  const acc_t* wdd = s.dw ? wd.data_ptr<acc_t>() : nullptr;
  const acc_t* wrd = wr.data_ptr<acc_t>();
  scalar_t* gxd = need_x ? gx.data_ptr<scalar_t>() : nullptr;
  const int64_t rb = block_rows(s.H, s.W), nblocks = (s.H + rb - 1) / rb, plane = s.H * s.W;
  // two zeros after each x band: the depth-wise weight gradient's last vector reads them
  const int64_t band = (rb + 2) * s.Wp + 2, gband = (rb + 2) * s.Wv, zband = rb * s.Wv;
  const int64_t n_wr = s.R * s.C, n_wd = s.dw ? s.C * 9 : 0;  // weight-gradient sums, V lanes each
  std::vector<acc_t> sums = chunked_sum<acc_t>(s.B * nblocks, (n_wr + n_wd) * V, [&](int64_t t0, int64_t t1, acc_t* part) {
    std::vector<acc_t> xb(s.C * band), gb((s.R + 3) * gband), gz(band), zb(zband), row(gband);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / nblocks, i0 = (t % nblocks) * rb, n = std::min(rb, s.H - i0);
      for (int64_t c = 0; c < s.C; ++c) {
        load_padded(xd + (b * s.C + c) * plane, s.H, s.W, i0 - 1, n + 2, 1, s.Wp, &xb[c * band]);
        std::fill_n(&xb[c * band + (n + 2) * s.Wp], 2, acc_t(0));
      }
      for (int64_t o = 0; o < s.R; ++o)  // grad rows i0 - 1 .. i0 + n, zero outside the image and past W
        load_grad_band(gd, bn, b, o, s, i0 - 1, n + 2, &gb[o * gband]);
      for (int64_t c = 0; c < s.C; ++c) {
        const acc_t* xc = &xb[c * band];
        // grad Wr[o, c] += gr[o] . z[c] over the block's rows
        depthwise_band(xc, s.dw ? wdd + c * 9 : nullptr, n, s.Wv, s.Wp, zb.data());
        for (int64_t o0 = 0; o0 < s.R; o0 += 4) {  // four output channels per z load (gb has 3 spare zero bands)
          WideSum<acc_t> acc[4];
          wide_loop(n * s.Wv, [&](auto lanes, int64_t p0) {
            constexpr int64_t N = decltype(lanes)::value;
            const vec_t<acc_t, N> zv = vload<N>(&zb[p0]);
            for (int64_t k = 0; k < 4; ++k) acc[k].add(vload<N>(&gb[(o0 + k) * gband + s.Wv + p0]) * zv);
          });
          for (int64_t k = 0; k < std::min<int64_t>(4, s.R - o0); ++k) acc[k].fold_into(&part[((o0 + k) * s.C + c) * V]);
        }
        // gz[c] = sum_o Wr[o, c] * gr[o] on all n + 2 band rows (the halo feeds grad_x's 3x3 gather)
        mix_channels(wrd + c, s.C, gb.data(), gband, s.R, (n + 2) * s.Wv, row.data());
        for (int64_t rr = 0; rr < n + 2; ++rr) {
          acc_t* dst = &gz[rr * s.Wp];
          dst[0] = 0;
          for (int64_t j = 0; j < s.Wv; j += V) vstore(dst + 1 + j, vload(&row[rr * s.Wv + j]));
          dst[s.Wv + 1] = 0;
        }
        if (s.dw) {  // grad Wd[c, uv] += gz[c] . x[c] shifted by the tap, over band rows 1..n at once
          // (gz's zero columns 0 and Wv + 1 mask the row ends, and are its last two values here:
          // n * Wp values, a whole number of vectors when n is a multiple of 4); nine sums per gz load
          const acc_t* g = &gz[s.Wp + 1];
          const int64_t len = n * s.Wp;
          WideSum<acc_t> acc[9];
          const int64_t vectors = len / V * V;
          wide_loop(vectors, [&](auto lanes, int64_t p0) {
            constexpr int64_t N = decltype(lanes)::value;
            const vec_t<acc_t, N> gv = vload<N>(g + p0);
            for (int64_t u = 0; u < 3; ++u)
              for (int64_t v = 0; v < 3; ++v) acc[u * 3 + v].add(gv * vload<N>(xc + u * s.Wp + v + p0));
          });
          acc_t* p = part + (n_wr + c * 9) * V;
          for (int64_t uv = 0; uv < 9; ++uv) {
            acc[uv].fold_into(&p[uv * V]);
            acc_t tail = 0;  // in a register: adding into p[] each time waits on the store before it
            for (int64_t e = vectors; e < len; ++e) tail += g[e] * xc[(uv / 3) * s.Wp + uv % 3 + e];
            p[uv * V] += tail;
          }
        }
        if (!need_x) continue;
        scalar_t* dst = gxd + (b * s.C + c) * plane + i0 * s.W;
        const acc_t bias = biasd != nullptr ? biasd[b * s.C + c] : acc_t(0);
        const Taps<acc_t> taps(s.dw ? wdd + c * 9 : nullptr);
        for (int64_t rr = 1; rr <= n; ++rr, dst += s.W)
          wide_loop(s.Wv, [&](auto lanes, int64_t j0) {  // grad x[c]: the 3x3 taps applied to gz, flipped
            constexpr int64_t N = decltype(lanes)::value;
            vec_t<acc_t, N> g = {};
            if (s.dw)
              for (int64_t u = 0; u < 3; ++u)
                for (int64_t v = 0; v < 3; ++v) g += taps.w[u * 3 + v] * vload<N>(&gz[(rr + 1 - u) * s.Wp + j0 + 2 - v]);
            else
              g = vload<N>(&gz[rr * s.Wp + 1 + j0]);
            const int64_t cols = std::min(N, s.W - j0);
            store_grad<N>(g, cols, bias, prior ? dst + j0 : nullptr, dst + j0);
          });
      }
    }
  });
  const at::TensorOptions wopt = wr.options();
  at::Tensor gwr = fold_vectors(sums, n_wr, wopt, {s.R, s.C});
  at::Tensor gwd;
  if (s.dw) {
    std::vector<acc_t> tail(sums.begin() + n_wr * V, sums.end());
    gwd = fold_vectors(tail, n_wd, wopt, {s.C, 9});
  }
  return {gx, gwd, gwr};
}

struct Pw {
  int64_t B, C, O, P;  // P = H * W pixels per plane
};

constexpr int64_t kPixelBlock = 256;
static_assert(kPixelBlock % VW == 0, "the passes run VW-lane vectors over a block");

// ``np`` pixels of each of ``channels`` planes (plane stride ``P``) into rows of kPixelBlock opmath
// values, zero from np to npv (a multiple of VW); with ``scale``, value * scale[c] + shift[c] (a
// batch norm folded in), and with ``raw`` also the values before it; ``relu``: max(value, 0). One
// pass of VW-lane vectors per row: as separate element loops (convert, scale, ReLU, zero tail)
// gcc vectorised each on its own, at 8 lanes.
template <typename scalar_t, typename acc_t>
void load_pixels(const scalar_t* src, int64_t channels, int64_t P, int64_t np, int64_t npv, bool relu, acc_t* dst,
                 const acc_t* scale = nullptr, const acc_t* shift = nullptr, acc_t* raw = nullptr) {
  using lanes_t = vec_t<acc_t, VW>;
  using index_t = std::conditional_t<sizeof(acc_t) == 8, int64_t, int32_t>;  // lanes as wide as acc_t's
  vec_t<index_t, VW> lane = {};
  for (int64_t l = 0; l < VW; ++l) lane[l] = index_t(l);
  for (int64_t c = 0; c < channels; ++c, src += P, dst += kPixelBlock) {
    for (int64_t q = 0; q < npv; q += VW) {
      const int64_t cols = std::min<int64_t>(VW, np - q);
      lanes_t v = load_lanes<acc_t, VW>(src + q, cols);
      if (raw != nullptr) vstore(raw + c * kPixelBlock + q, v);
      if (scale != nullptr) v = v * scale[c] + shift[c];
      if (relu) v = v > acc_t(0) ? v : lanes_t{};
      if (cols < VW) v = lane < index_t(cols) ? v : lanes_t{};
      vstore(dst + q, v);
    }
  }
}

constexpr int64_t OB = 4;  // output channels per register block of the ReLU+span passes
constexpr int64_t IB = 4;  // input channels per register block of its weight gradient

// The (O, C) weight zero-padded to (round_up(O, OB), round_up(C, IB)): blocks read past the edges safely.
template <typename acc_t>
std::vector<acc_t> padded_weight(const acc_t* w, int64_t O, int64_t C) {
  const int64_t c4 = round_up(C, IB);
  std::vector<acc_t> out(round_up(O, OB) * c4, acc_t(0));
  for (int64_t o = 0; o < O; ++o) std::copy(w + o * C, w + (o + 1) * C, out.begin() + o * c4);
  return out;
}

// The batch norm folded into the ReLU + span passes' input: n = scale[c] * r + shift[b, c].
template <typename acc_t>
struct BnInput {
  const acc_t* scale;  // (C), or nullptr: the input is n itself
  const acc_t* shift;  // (B, C)
};

template <typename scalar_t>
at::Tensor relu_pointwise_forward_impl(const at::Tensor& n, const at::Tensor& ws, const at::Tensor& bias, const Pw& s,
                                       at::IntArrayRef shape, const BnInput<at::opmath_type<scalar_t>>& bn) {
  using acc_t = at::opmath_type<scalar_t>;
  at::Tensor k = at::empty(shape, n.options());
  const scalar_t* nd = n.data_ptr<scalar_t>();
  const int64_t o4 = round_up(s.O, OB), c4 = round_up(s.C, IB);
  const std::vector<acc_t> w = padded_weight(ws.data_ptr<acc_t>(), s.O, s.C);
  std::vector<acc_t> bd(o4, acc_t(0));
  std::copy(bias.data_ptr<acc_t>(), bias.data_ptr<acc_t>() + s.O, bd.begin());
  scalar_t* kd = k.data_ptr<scalar_t>();
  const int64_t nblocks = (s.P + kPixelBlock - 1) / kPixelBlock;
  at::parallel_for(0, s.B * nblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> a(c4 * kPixelBlock), out(OB * kPixelBlock);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / nblocks, p0 = (t % nblocks) * kPixelBlock, np = std::min(kPixelBlock, s.P - p0);
      const int64_t npv = round_up(np, VW);
      load_pixels(nd + b * s.C * s.P + p0, s.C, s.P, np, npv, true, a.data(), bn.scale,
                  bn.scale != nullptr ? bn.shift + b * s.C : nullptr);
      for (int64_t o0 = 0; o0 < s.O; o0 += OB) {  // each input vector loaded serves OB outputs
        for (int64_t j0 = 0; j0 < npv; j0 += VW) {
          vec_t<acc_t, VW> acc[OB];
          for (int64_t e = 0; e < OB; ++e) acc[e] = vec_t<acc_t, VW>{} + bd[o0 + e];
          for (int64_t c = 0; c < s.C; ++c) {
            const vec_t<acc_t, VW> av = vload<VW>(&a[c * kPixelBlock + j0]);
            for (int64_t e = 0; e < OB; ++e) acc[e] += w[(o0 + e) * c4 + c] * av;
          }
          for (int64_t e = 0; e < OB; ++e) vstore(&out[e * kPixelBlock + j0], acc[e]);
        }
        for (int64_t e = 0; e < std::min(OB, s.O - o0); ++e)
          from_opmath(&out[e * kPixelBlock], np, kd + (b * s.O + o0 + e) * s.P + p0);
      }
    }
  });
  return k;
}

// With ``bn``, also the sums of grad_n (as stored) and of grad_n * r per example and channel,
// (B, C, 2) float64: what the folded batch norm's backward needs.
template <typename scalar_t>
std::vector<at::Tensor> relu_pointwise_backward_impl(const at::Tensor& gk, const at::Tensor& n, const at::Tensor& ws,
                                                     const Pw& s, bool need_input,
                                                     const BnInput<at::opmath_type<scalar_t>>& bn) {
  using acc_t = at::opmath_type<scalar_t>;
  at::Tensor gn = need_input ? at::empty_like(n) : at::Tensor();
  const scalar_t* nd = n.data_ptr<scalar_t>();
  const scalar_t* gd = gk.data_ptr<scalar_t>();
  const int64_t o4 = round_up(s.O, OB), c4 = round_up(s.C, IB);
  const std::vector<acc_t> w = padded_weight(ws.data_ptr<acc_t>(), s.O, s.C);
  scalar_t* gnd = need_input ? gn.data_ptr<scalar_t>() : nullptr;
  const int64_t nblocks = (s.P + kPixelBlock - 1) / kPixelBlock, n_w = o4 * c4;  // padded sums, cropped below
  const bool folded = bn.scale != nullptr && need_input;
  at::Tensor stats = folded ? at::zeros({s.B, nblocks, s.C, 2}, n.options().dtype(at::kDouble)) : at::Tensor();
  double* sd = folded ? stats.data_ptr<double>() : nullptr;
  std::vector<acc_t> sums = chunked_sum<acc_t>(s.B * nblocks, (n_w + o4) * V, [&](int64_t t0, int64_t t1, acc_t* part) {
    std::vector<acc_t> a(c4 * kPixelBlock), g(o4 * kPixelBlock), ga(IB * kPixelBlock), raw(folded ? s.C * kPixelBlock : 0);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / nblocks, p0 = (t % nblocks) * kPixelBlock, np = std::min(kPixelBlock, s.P - p0);
      const int64_t npv = round_up(np, VW);
      load_pixels(nd + b * s.C * s.P + p0, s.C, s.P, np, npv, true, a.data(), bn.scale,  // rows past C stay zero
                  bn.scale != nullptr ? bn.shift + b * s.C : nullptr, folded ? raw.data() : nullptr);
      load_pixels(gd + b * s.O * s.P + p0, s.O, s.P, np, npv, false, g.data());  // rows past O stay zero
      for (int64_t o0 = 0; o0 < o4; o0 += OB)  // grad W[o, c] = g[o] . a[c]; grad bias[o] = sum g[o]
        for (int64_t c0 = 0; c0 < c4; c0 += IB) {
          vec_t<acc_t, VW> acc[OB][IB] = {}, accb[OB] = {};
          for (int64_t j0 = 0; j0 < npv; j0 += VW) {
            vec_t<acc_t, VW> av[IB];
            for (int64_t i = 0; i < IB; ++i) av[i] = vload<VW>(&a[(c0 + i) * kPixelBlock + j0]);
            for (int64_t e = 0; e < OB; ++e) {
              const vec_t<acc_t, VW> gv = vload<VW>(&g[(o0 + e) * kPixelBlock + j0]);
              accb[e] += gv;
              for (int64_t i = 0; i < IB; ++i) acc[e][i] += gv * av[i];
            }
          }
          for (int64_t e = 0; e < OB; ++e) {  // each sum's VW lanes folded into its V
            for (int64_t i = 0; i < IB; ++i) {
              acc_t* p = part + ((o0 + e) * c4 + c0 + i) * V;
              for (int64_t q = 0; q < V; ++q) p[q] += acc[e][i][q] + acc[e][i][q + V];
            }
            if (c0 == 0)
              for (int64_t q = 0; q < V; ++q) part[(n_w + o0 + e) * V + q] += accb[e][q] + accb[e][q + V];
          }
        }
      if (!need_input) continue;
      for (int64_t c0 = 0; c0 < s.C; c0 += IB) {  // grad n[c] = sum_o W[o, c] g[o], zero where n was not positive
        for (int64_t j0 = 0; j0 < npv; j0 += VW) {
          vec_t<acc_t, VW> acc[IB] = {};
          for (int64_t o = 0; o < s.O; ++o) {
            const vec_t<acc_t, VW> gv = vload<VW>(&g[o * kPixelBlock + j0]);
            for (int64_t i = 0; i < IB; ++i) acc[i] += w[o * c4 + c0 + i] * gv;
          }
          for (int64_t i = 0; i < IB; ++i) vstore(&ga[i * kPixelBlock + j0], acc[i]);
        }
        for (int64_t i = 0; i < std::min(IB, s.C - c0); ++i) {
          const int64_t c = c0 + i;
          const acc_t* src = &a[c * kPixelBlock];  // max(n, 0): positive exactly where n was
          acc_t* gac = &ga[i * kPixelBlock];
          for (int64_t q = 0; q < np; ++q) gac[q] = src[q] > acc_t(0) ? gac[q] : acc_t(0);
          scalar_t* dst = gnd + (b * s.C + c) * s.P + p0;
          from_opmath(gac, np, dst);
          if (folded) stored_sums<scalar_t, acc_t>(dst, &raw[c * kPixelBlock], np, &sd[(t * s.C + c) * 2]);
        }
      }
    }
  });
  // Crop the padded sums to (O, C) and (O).
  std::vector<acc_t> wsum(s.O * s.C * V), bsum(s.O * V);
  for (int64_t o = 0; o < s.O; ++o) {
    std::copy(&sums[o * c4 * V], &sums[(o * c4 + s.C) * V], &wsum[o * s.C * V]);
    std::copy(&sums[(n_w + o) * V], &sums[(n_w + o + 1) * V], &bsum[o * V]);
  }
  const at::TensorOptions wopt = ws.options();
  return {gn, fold_vectors(wsum, s.O * s.C, wopt, {s.O, s.C}), fold_vectors(bsum, s.O, wopt, {s.O}),
          folded ? stats.sum(1) : at::Tensor()};
}

void check_activation(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 4 && t.is_contiguous(),
              "fused kernel generator: ", what, " must be a contiguous (B, C, H, W) CPU tensor");
}

void check_weight(const at::Tensor& w, const at::Tensor& act, const char* what) {
  TORCH_CHECK(w.is_contiguous() && w.scalar_type() == at::toOpMathType(act.scalar_type()),
              "fused kernel generator: ", what, " must be contiguous in the activations' opmath dtype");
}


// Average pools of the strided generator's input (torch's CPU avg_pool2d spends ~3 ms forward and
// ~4 ms backward on 16@32x32, batch 128: one thread, here ~10x less). Each task owns a block of
// planes; the window's rows are summed vectorised over the row, then s neighbours per output.
// 2 x 2 windows that tile the plane (every strided layer of the ResNets) take a vector path: 8
// outputs from 16 columns of each row, split into even and odd columns by shuffles (bivol_resnet20's
// 16@32x32, batch 128, bf16, one thread: forward 1.5 -> 0.5 ms, backward into a prior gradient 1.9 -> 0.7 ms).
constexpr int64_t kPairs = 8;  // outputs per vector step of the 2 x 2 path

template <typename acc_t>
inline vec_t<acc_t, kPairs> pair_sums(const vec_t<acc_t, 2 * kPairs>& v) {
  return __builtin_shufflevector(v, v, 0, 2, 4, 6, 8, 10, 12, 14) +
         __builtin_shufflevector(v, v, 1, 3, 5, 7, 9, 11, 13, 15);
}

template <typename acc_t>
inline vec_t<acc_t, 2 * kPairs> doubled(const vec_t<acc_t, kPairs>& v) {
  return __builtin_shufflevector(v, v, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
}

template <typename scalar_t>
void avg_pool2_forward(const scalar_t* xd, int64_t P, int64_t H, int64_t W, scalar_t* od) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t Ho = H / 2, Wo = W / 2;
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      for (int64_t i = 0; i < Ho; ++i) {
        const scalar_t* top = xd + (p * H + 2 * i) * W;
        scalar_t* out = od + (p * Ho + i) * Wo;
        for (int64_t j0 = 0; j0 < Wo; j0 += kPairs) {
          const int64_t n = std::min(kPairs, Wo - j0);
          const auto rows = load_lanes<acc_t, 2 * kPairs>(top + 2 * j0, 2 * n) +
                            load_lanes<acc_t, 2 * kPairs>(top + W + 2 * j0, 2 * n);
          store_lanes<acc_t, kPairs>(pair_sums<acc_t>(rows) * acc_t(0.25), n, out + j0);
        }
      }
  });
}

template <typename scalar_t>
void avg_pool2_backward(const scalar_t* gd, int64_t P, int64_t H, int64_t W, bool prior, scalar_t* xd) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t Ho = H / 2, Wo = W / 2;
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      for (int64_t i = 0; i < Ho; ++i) {
        const scalar_t* g = gd + (p * Ho + i) * Wo;
        for (int64_t j0 = 0; j0 < Wo; j0 += kPairs) {
          const int64_t n = std::min(kPairs, Wo - j0);
          const auto spread = doubled<acc_t>(load_lanes<acc_t, kPairs>(g + j0, n) * acc_t(0.25));
          for (int64_t a = 0; a < 2; ++a) {
            scalar_t* dst = xd + (p * H + 2 * i + a) * W + 2 * j0;
            store_lanes<acc_t, 2 * kPairs>(prior ? spread + load_lanes<acc_t, 2 * kPairs>(dst, 2 * n) : spread,
                                           2 * n, dst);
          }
        }
      }
  });
}

template <typename scalar_t>
at::Tensor avg_pool_forward_impl(const at::Tensor& x, int64_t s) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t P = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = (H + s - 1) / s, Wo = (W + s - 1) / s;
  at::Tensor out = at::empty({x.size(0), x.size(1), Ho, Wo}, x.options());
  const scalar_t* xd = x.data_ptr<scalar_t>();
  scalar_t* od = out.data_ptr<scalar_t>();
  if (s == 2 && H % 2 == 0 && W % 2 == 0) {
    avg_pool2_forward(xd, P, H, W, od);
    return out;
  }
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row(std::max(W, Wo)), sum(s * Wo, acc_t(0)), per_col(Wo);
    for (int64_t j = 0; j < Wo; ++j) per_col[j] = acc_t(1) / acc_t(std::min(s, W - s * j));
    for (int64_t p = begin; p < end; ++p)
      for (int64_t i = 0; i < Ho; ++i) {
        const int64_t rows = std::min(s, H - s * i);
        std::fill(sum.begin(), sum.begin() + W, acc_t(0));
        for (int64_t a = 0; a < rows; ++a) {
          to_opmath(xd + (p * H + s * i + a) * W, W, row.data());
          for (int64_t q = 0; q < W; ++q) sum[q] += row[q];
        }
        const acc_t per_row = acc_t(1) / acc_t(rows);
        for (int64_t j = 0; j < Wo; ++j) {
          acc_t total = 0;
          for (int64_t b = 0; b < s; ++b) total += sum[s * j + b];  // zeros past W
          row[j] = total * per_row * per_col[j];
        }
        from_opmath(row.data(), Wo, od + (p * Ho + i) * Wo);
      }
  });
  return out;
}

// With ``prior`` (x's shape) the gradient is added to it in place and prior returned.
template <typename scalar_t>
at::Tensor avg_pool_backward_impl(const at::Tensor& grad, int64_t s, int64_t H, int64_t W, const at::Tensor& prior) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t P = grad.size(0) * grad.size(1), Ho = grad.size(2), Wo = grad.size(3);
  TORCH_CHECK(Ho == (H + s - 1) / s && Wo == (W + s - 1) / s, "avg_pool_backward: grad does not match the input size");
  at::Tensor gx = prior.defined() ? prior : at::empty({grad.size(0), grad.size(1), H, W}, grad.options());
  const scalar_t* gd = grad.data_ptr<scalar_t>();
  scalar_t* xd = gx.data_ptr<scalar_t>();
  if (s == 2 && H % 2 == 0 && W % 2 == 0) {
    avg_pool2_backward(gd, P, H, W, prior.defined(), xd);
    return gx;
  }
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> g(Wo), row(W), sum(W), per_col(Wo);
    std::vector<scalar_t> stored(W);
    for (int64_t j = 0; j < Wo; ++j) per_col[j] = acc_t(1) / acc_t(std::min(s, W - s * j));
    for (int64_t p = begin; p < end; ++p)
      for (int64_t i = 0; i < Ho; ++i) {
        const int64_t rows = std::min(s, H - s * i);
        to_opmath(gd + (p * Ho + i) * Wo, Wo, g.data());
        const acc_t per_row = acc_t(1) / acc_t(rows);
        for (int64_t j = 0; j < Wo; ++j) {
          const acc_t v = g[j] * per_row * per_col[j];
          for (int64_t b = 0; b < std::min(s, W - s * j); ++b) row[s * j + b] = v;
        }
        if (prior.defined()) {
          for (int64_t a = 0; a < rows; ++a) {
            scalar_t* dst = xd + (p * H + s * i + a) * W;
            to_opmath(dst, W, sum.data());
            for (int64_t q = 0; q < W; ++q) sum[q] += row[q];
            from_opmath(sum.data(), W, dst);
          }
          continue;
        }
        from_opmath(row.data(), W, stored.data());
        for (int64_t a = 0; a < rows; ++a) std::copy(stored.begin(), stored.end(), xd + (p * H + s * i + a) * W);
      }
  });
  return gx;
}
}  // namespace

std::vector<at::Tensor> separable_forward(const at::Tensor& x, const c10::optional<at::Tensor>& depthwise,
                                          const at::Tensor& pointwise, bool need_sums, bool need_stats) {
  check_activation(x, "x");
  check_weight(pointwise, x, "the pointwise weight");
  const bool dw = depthwise.has_value();
  if (dw) check_weight(*depthwise, x, "the depth-wise weight");
  const int64_t Wv = round_up(x.size(3));
  const Sep s{x.size(0), x.size(1), x.size(2), x.size(3), pointwise.size(0), Wv, Wv + 2, dw};
  TORCH_CHECK(pointwise.dim() == 2 && pointwise.size(1) == s.C && (!dw || depthwise->numel() == s.C * 9),
              "fused kernel generator: weights do not match x's channels");
  std::vector<at::Tensor> out;
  const at::Tensor wd = dw ? *depthwise : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "separable_forward",
                                 [&] { out = separable_forward_impl<scalar_t>(x, wd, pointwise, s, need_sums, need_stats); });
  return out;
}

std::vector<at::Tensor> separable_backward(const at::Tensor& grad, const at::Tensor& x,
                                           const c10::optional<at::Tensor>& depthwise, const at::Tensor& pointwise,
                                           bool need_input, const c10::optional<at::Tensor>& grad_x_prior,
                                           const c10::optional<at::Tensor>& grad_x_bias,
                                           const c10::optional<std::vector<at::Tensor>>& bn) {
  check_activation(x, "x");
  check_activation(grad, "grad");
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), "fused kernel generator: grad and x differ in dtype");
  const at::Tensor prior = grad_x_prior.has_value() ? *grad_x_prior : at::Tensor();
  const at::Tensor bias = grad_x_bias.has_value() ? *grad_x_bias : at::Tensor();
  if (prior.defined()) {
    check_activation(prior, "grad_x_prior");
    TORCH_CHECK(prior.sizes() == x.sizes() && prior.scalar_type() == x.scalar_type(),
                "fused kernel generator: grad_x_prior must match x");
  }
  if (bias.defined())
    TORCH_CHECK(bias.is_contiguous() && bias.dim() == 2 && bias.size(0) == x.size(0) && bias.size(1) == x.size(1) &&
                    bias.scalar_type() == at::toOpMathType(x.scalar_type()),
                "fused kernel generator: grad_x_bias must be (B, C) in x's opmath dtype");
  const bool dw = depthwise.has_value();
  const int64_t Wv = round_up(x.size(3));
  const Sep s{x.size(0), x.size(1), x.size(2), x.size(3), pointwise.size(0), Wv, Wv + 2, dw};
  if (bn.has_value()) {
    TORCH_CHECK(bn->size() == 4, "fused kernel generator: bn is (r, a, q, c)");
    check_activation((*bn)[0], "r");
    TORCH_CHECK((*bn)[0].sizes() == grad.sizes() && (*bn)[0].scalar_type() == x.scalar_type(),
                "fused kernel generator: r must match grad");
    for (int64_t i = 1; i < 4; ++i)
      TORCH_CHECK((*bn)[i].is_contiguous() && (*bn)[i].numel() == (i < 3 ? 1 : grad.size(0)) * grad.size(1) &&
                      (*bn)[i].scalar_type() == at::toOpMathType(x.scalar_type()),
                  "fused kernel generator: a, q must be (R) and c (B, R) in x's opmath dtype");
  }
  std::vector<at::Tensor> out;
  const at::Tensor wd = dw ? *depthwise : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "separable_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    BnGrad<scalar_t, acc_t> folded{nullptr, nullptr, nullptr, nullptr};
    if (bn.has_value())
      folded = {(*bn)[0].data_ptr<scalar_t>(), (*bn)[1].data_ptr<acc_t>(), (*bn)[2].data_ptr<acc_t>(),
                (*bn)[3].data_ptr<acc_t>()};
    out = separable_backward_impl<scalar_t>(grad, x, wd, pointwise, s, need_input, prior, bias, folded);
  });
  return out;
}

namespace {

// The folded batch norm's (scale (C), shift (B, C)) of the ReLU + span passes, checked against n.
template <typename acc_t>
BnInput<acc_t> bn_input(const at::Tensor& n, const c10::optional<at::Tensor>& scale,
                        const c10::optional<at::Tensor>& shift) {
  TORCH_CHECK(scale.has_value() == shift.has_value(), "fused kernel generator: give scale and shift together");
  if (!scale.has_value()) return {nullptr, nullptr};
  const auto opmath = at::toOpMathType(n.scalar_type());
  TORCH_CHECK(scale->is_contiguous() && scale->numel() == n.size(1) && scale->scalar_type() == opmath &&
                  shift->is_contiguous() && shift->numel() == n.size(0) * n.size(1) && shift->scalar_type() == opmath,
              "fused kernel generator: scale must be (C) and shift (B, C) in the input's opmath dtype");
  return {scale->data_ptr<acc_t>(), shift->data_ptr<acc_t>()};
}

}  // namespace

at::Tensor relu_pointwise_forward(const at::Tensor& n, const at::Tensor& weight, const at::Tensor& bias,
                                  const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift) {
  check_activation(n, "input");
  check_weight(weight, n, "the weight");
  check_weight(bias, n, "the bias");
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == n.size(1) && bias.numel() == weight.size(0),
              "fused kernel generator: weight/bias do not match the input's channels");
  const Pw s{n.size(0), n.size(1), weight.size(0), n.size(2) * n.size(3)};
  at::Tensor k;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, n.scalar_type(), "relu_pointwise_forward", [&] {
    k = relu_pointwise_forward_impl<scalar_t>(n, weight, bias, s, {s.B, s.O, n.size(2), n.size(3)},
                                              bn_input<at::opmath_type<scalar_t>>(n, scale, shift));
  });
  return k;
}

std::vector<at::Tensor> relu_pointwise_backward(const at::Tensor& grad, const at::Tensor& n, const at::Tensor& weight,
                                                bool need_input, const c10::optional<at::Tensor>& scale,
                                                const c10::optional<at::Tensor>& shift) {
  check_activation(n, "input");
  check_activation(grad, "grad");
  TORCH_CHECK(grad.scalar_type() == n.scalar_type(), "fused kernel generator: grad and input differ in dtype");
  const Pw s{n.size(0), n.size(1), weight.size(0), n.size(2) * n.size(3)};
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, n.scalar_type(), "relu_pointwise_backward", [&] {
    out = relu_pointwise_backward_impl<scalar_t>(grad, n, weight, s, need_input,
                                                 bn_input<at::opmath_type<scalar_t>>(n, scale, shift));
  });
  return out;
}

at::Tensor avg_pool_forward(const at::Tensor& x, int64_t s) {
  check_activation(x, "x");
  TORCH_CHECK(s >= 1, "avg_pool: stride must be positive");
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "avg_pool_forward",
                                 [&] { out = avg_pool_forward_impl<scalar_t>(x, s); });
  return out;
}

at::Tensor avg_pool_backward(const at::Tensor& grad, int64_t s, int64_t in_h, int64_t in_w,
                             const c10::optional<at::Tensor>& grad_x_prior) {
  check_activation(grad, "grad");
  const at::Tensor prior = grad_x_prior.has_value() ? *grad_x_prior : at::Tensor();
  if (prior.defined()) {
    check_activation(prior, "grad_x_prior");
    TORCH_CHECK(prior.size(0) == grad.size(0) && prior.size(1) == grad.size(1) && prior.size(2) == in_h &&
                    prior.size(3) == in_w && prior.scalar_type() == grad.scalar_type(),
                "avg_pool_backward: grad_x_prior must match the input");
  }
  at::Tensor gx;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, grad.scalar_type(), "avg_pool_backward",
                                 [&] { gx = avg_pool_backward_impl<scalar_t>(grad, s, in_h, in_w, prior); });
  return gx;
}

at::Tensor channel_sums(const at::Tensor& t) {
  check_activation(t, "t");
  const int64_t B = t.size(0), C = t.size(1), plane = t.size(2) * t.size(3);
  at::Tensor part = at::zeros({B, C, 2}, t.options().dtype(at::kDouble));
  double* pd = part.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, t.scalar_type(), "channel_sums", [&] {
    const scalar_t* td = t.data_ptr<scalar_t>();
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc)
        stored_sums<scalar_t, at::opmath_type<scalar_t>>(td + bc * plane, nullptr, plane, &pd[2 * bc]);
    });
  });
  return part.sum(0);
}

}  // namespace bivol
