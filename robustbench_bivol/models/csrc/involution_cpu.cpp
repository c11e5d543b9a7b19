// Fused involution aggregation on the CPU (forward and backward), see fused_involution.py.
//
// out[b, g*gc + c, i, j] = sum_{u,v} kernels[b, g, u*K + v, i, j]
//                                    * x[b, g*gc + c, s*i + d*u - pad_top, s*j + d*v - pad_left]
// with zeros outside x. The output size is the kernel map's (Ho, Wo), so asymmetric padding
// (a row band of a larger input) needs no copy. Each task owns (example, group, block of output
// rows): it converts the input rows it reads into a zero-padded opmath buffer once per channel
// and accumulates all K*K taps into one output row buffer, written once. grad_input is a gather
// over blocks of *input* rows, so no two tasks write the same element (no atomics).
#include <torch/extension.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace {

struct Geometry {
  int64_t B, C, H, W, G, gc, K, KK, Ho, Wo, s, d, pt, pl;
  int64_t Wp() const { return s * (Wo - 1) + d * (K - 1) + 1; }  // padded row width read
  int64_t band_rows(int64_t rows) const { return s * (rows - 1) + d * (K - 1) + 1; }
};

Geometry geometry(const at::Tensor& x, const at::Tensor& k, int64_t K, int64_t s, int64_t d,
                  int64_t pt, int64_t pl) {
  Geometry g{x.size(0), x.size(1), x.size(2), x.size(3), k.size(1), 0, K, K * K,
             k.size(3), k.size(4), s, d, pt, pl};
  g.gc = g.C / g.G;
  return g;
}

// Output rows per task: enough work per task to amortise the buffers, enough tasks to spread.
int64_t rows_per_block(const Geometry& g) {
  return std::max<int64_t>(1, std::min<int64_t>(g.Ho, 512 / std::max<int64_t>(g.Wo, 1)));
}

// Rows [r0, r0 + n) of one channel plane of x (row stride ``rs``), zero-padded to Wp columns,
// converted to opmath. Row r of the buffer is input row r0 + r; column q is input column q - pl.
template <typename scalar_t, typename acc_t>
void load_band(const scalar_t* plane, int64_t rs, const Geometry& g, int64_t r0, int64_t n, acc_t* buf) {
  const int64_t wp = g.Wp();
  for (int64_t r = 0; r < n; ++r) {
    acc_t* dst = buf + r * wp;
    const int64_t y = r0 + r;
    if (y < 0 || y >= g.H) {
      std::fill(dst, dst + wp, acc_t(0));
      continue;
    }
    const scalar_t* src = plane + y * rs;
    for (int64_t q = 0; q < wp; ++q) {
      const int64_t xcol = q - g.pl;
      dst[q] = (xcol >= 0 && xcol < g.W) ? acc_t(src[xcol]) : acc_t(0);
    }
  }
}

template <typename scalar_t, typename acc_t>
void to_acc(const scalar_t* src, int64_t n, acc_t* dst) {
  for (int64_t q = 0; q < n; ++q) dst[q] = acc_t(src[q]);
}

// acc[j] += w[j] * xr[S * j]; S = 0: runtime stride.
template <int S, typename acc_t>
inline void madd_row(acc_t* __restrict acc, const acc_t* __restrict w, const acc_t* __restrict xr,
                     int64_t n, int64_t s) {
  const int64_t st = S ? S : s;
  for (int64_t j = 0; j < n; ++j) acc[j] += w[j] * xr[st * j];
}

// gx[S * j] += w[j] * go[j]
template <int S, typename acc_t>
inline void scatter_row(acc_t* __restrict gx, const acc_t* __restrict w, const acc_t* __restrict go,
                        int64_t n, int64_t s) {
  const int64_t st = S ? S : s;
  for (int64_t j = 0; j < n; ++j) gx[st * j] += w[j] * go[j];
}

template <int S, typename scalar_t>
void forward_impl(const at::Tensor& x, const at::Tensor& k, at::Tensor& out, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* xd = x.data_ptr<scalar_t>();
  const scalar_t* kd = k.data_ptr<scalar_t>();
  scalar_t* od = out.data_ptr<scalar_t>();
  const int64_t xsb = x.stride(0), xsc = x.stride(1), xsh = x.stride(2);
  const int64_t rb = rows_per_block(g), nblocks = (g.Ho + rb - 1) / rb, wp = g.Wp();
  const int64_t plane = g.Ho * g.Wo;
  at::parallel_for(0, g.B * g.G * nblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> kbuf(g.KK * rb * g.Wo), xbuf(g.band_rows(rb) * wp), acc(g.Wo);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t blk = t % nblocks, bg = t / nblocks, b = bg / g.G, grp = bg % g.G;
      const int64_t i0 = blk * rb, n = std::min(rb, g.Ho - i0);
      const scalar_t* kg = kd + bg * g.KK * plane;
      for (int64_t uv = 0; uv < g.KK; ++uv) to_acc(kg + uv * plane + i0 * g.Wo, n * g.Wo, &kbuf[uv * n * g.Wo]);
      for (int64_t c = 0; c < g.gc; ++c) {
        const int64_t ch = grp * g.gc + c;
        load_band(xd + b * xsb + ch * xsc, xsh, g, g.s * i0 - g.pt, g.band_rows(n), xbuf.data());
        scalar_t* orow = od + (b * g.C + ch) * plane + i0 * g.Wo;
        for (int64_t r = 0; r < n; ++r) {
          std::fill(acc.begin(), acc.end(), acc_t(0));
          for (int64_t u = 0; u < g.K; ++u) {
            const acc_t* xr = &xbuf[(g.s * r + g.d * u) * wp];
            for (int64_t v = 0; v < g.K; ++v)
              madd_row<S>(acc.data(), &kbuf[((u * g.K + v) * n + r) * g.Wo], xr + g.d * v, g.Wo, g.s);
          }
          for (int64_t j = 0; j < g.Wo; ++j) orow[r * g.Wo + j] = scalar_t(acc[j]);
        }
      }
    }
  });
}

// grad_kernels[b, g, uv, i, j] = sum_c grad_out[b, g*gc + c, i, j] * x[..., s*i + d*u - pt, s*j + d*v - pl]
template <int S, typename scalar_t>
void grad_kernels_impl(const at::Tensor& go, const at::Tensor& x, at::Tensor& gk, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* xd = x.data_ptr<scalar_t>();
  const scalar_t* gd = go.data_ptr<scalar_t>();
  scalar_t* gkd = gk.data_ptr<scalar_t>();
  const int64_t xsb = x.stride(0), xsc = x.stride(1), xsh = x.stride(2);
  const int64_t rb = rows_per_block(g), nblocks = (g.Ho + rb - 1) / rb, wp = g.Wp();
  const int64_t plane = g.Ho * g.Wo;
  at::parallel_for(0, g.B * g.G * nblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> kacc(g.KK * rb * g.Wo), xbuf(g.band_rows(rb) * wp), gbuf(rb * g.Wo);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t blk = t % nblocks, bg = t / nblocks, b = bg / g.G, grp = bg % g.G;
      const int64_t i0 = blk * rb, n = std::min(rb, g.Ho - i0);
      std::fill(kacc.begin(), kacc.end(), acc_t(0));
      for (int64_t c = 0; c < g.gc; ++c) {
        const int64_t ch = grp * g.gc + c;
        load_band(xd + b * xsb + ch * xsc, xsh, g, g.s * i0 - g.pt, g.band_rows(n), xbuf.data());
        to_acc(gd + (b * g.C + ch) * plane + i0 * g.Wo, n * g.Wo, gbuf.data());
        for (int64_t r = 0; r < n; ++r)
          for (int64_t u = 0; u < g.K; ++u) {
            const acc_t* xr = &xbuf[(g.s * r + g.d * u) * wp];
            for (int64_t v = 0; v < g.K; ++v)
              madd_row<S>(&kacc[((u * g.K + v) * n + r) * g.Wo], &gbuf[r * g.Wo], xr + g.d * v, g.Wo, g.s);
          }
      }
      scalar_t* kg = gkd + bg * g.KK * plane;
      for (int64_t uv = 0; uv < g.KK; ++uv)
        for (int64_t q = 0; q < n * g.Wo; ++q) kg[uv * plane + i0 * g.Wo + q] = scalar_t(kacc[uv * n * g.Wo + q]);
    }
  });
}

// grad_x[b, ch, y, :]: for each tap row u with s*i + d*u - pt = y, scatter k * grad_out along the
// row into a padded row buffer (row-local, so tasks over disjoint input rows never collide).
template <int S, typename scalar_t>
void grad_input_impl(const at::Tensor& go, const at::Tensor& k, at::Tensor& gx, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* kd = k.data_ptr<scalar_t>();
  const scalar_t* gd = go.data_ptr<scalar_t>();
  scalar_t* gxd = gx.data_ptr<scalar_t>();
  const int64_t wp = g.Wp(), plane = g.Ho * g.Wo;
  const int64_t rb = std::max<int64_t>(1, std::min<int64_t>(g.H, 512 / std::max<int64_t>(g.W, 1)));
  const int64_t nblocks = (g.H + rb - 1) / rb;
  at::parallel_for(0, g.B * g.G * nblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> prod(g.Wo), row(wp);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t blk = t % nblocks, bg = t / nblocks, b = bg / g.G, grp = bg % g.G;
      const int64_t y0 = blk * rb, y1 = std::min(g.H, y0 + rb);
      const scalar_t* kg = kd + bg * g.KK * plane;
      for (int64_t c = 0; c < g.gc; ++c) {
        const int64_t ch = grp * g.gc + c;
        const scalar_t* gplane = gd + (b * g.C + ch) * plane;
        scalar_t* xplane = gxd + (b * g.C + ch) * g.H * g.W;
        for (int64_t y = y0; y < y1; ++y) {
          std::fill(row.begin(), row.end(), acc_t(0));
          for (int64_t u = 0; u < g.K; ++u) {
            const int64_t num = y + g.pt - g.d * u;  // = s * i
            if (num < 0 || num % g.s) continue;
            const int64_t i = num / g.s;
            if (i >= g.Ho) continue;
            const scalar_t* grow = gplane + i * g.Wo;
            for (int64_t v = 0; v < g.K; ++v) {
              const scalar_t* krow = kg + (u * g.K + v) * plane + i * g.Wo;
              for (int64_t j = 0; j < g.Wo; ++j) prod[j] = acc_t(krow[j]);
              // row[s*j + d*v] += k * grad_out; prod doubles as the weight, grad_out converted inline
              for (int64_t j = 0; j < g.Wo; ++j) prod[j] *= acc_t(grow[j]);
              acc_t* dst = &row[g.d * v];
              const int64_t st = S ? S : g.s;
              for (int64_t j = 0; j < g.Wo; ++j) dst[st * j] += prod[j];
            }
          }
          for (int64_t q = 0; q < g.W; ++q) {
            const int64_t p = q + g.pl;
            xplane[y * g.W + q] = scalar_t(p < wp ? row[p] : acc_t(0));
          }
        }
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

at::Tensor involution_forward(const at::Tensor& x, const at::Tensor& kernels, int64_t K, int64_t stride,
                              int64_t dilation, int64_t pad_top, int64_t pad_left) {
  check(x, kernels, K);
  const Geometry g = geometry(x, kernels, K, stride, dilation, pad_top, pad_left);
  at::Tensor out = at::empty({g.B, g.C, g.Ho, g.Wo}, x.options());
  BIVOL_DISPATCH(forward_impl, x, kernels, out, g);
  return out;
}

std::vector<at::Tensor> involution_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                            const at::Tensor& kernels, int64_t K, int64_t stride,
                                            int64_t dilation, int64_t pad_top, int64_t pad_left,
                                            bool need_input, bool need_kernels) {
  check(x, kernels, K);
  TORCH_CHECK(grad_out.is_contiguous() && grad_out.scalar_type() == x.scalar_type(),
              "fused involution: grad_out must be contiguous, same dtype");
  const Geometry g = geometry(x, kernels, K, stride, dilation, pad_top, pad_left);
  at::Tensor gx, gk;
  if (need_input) {
    gx = at::empty({g.B, g.C, g.H, g.W}, x.options());
    BIVOL_DISPATCH(grad_input_impl, grad_out, kernels, gx, g);
  }
  if (need_kernels) {
    gk = at::empty_like(kernels);
    BIVOL_DISPATCH(grad_kernels_impl, grad_out, x, gk, g);
  }
  return {gx, gk};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &involution_forward, "fused involution aggregation (CPU)");
  m.def("backward", &involution_backward, "gradients of the fused involution aggregation (CPU)");
}
