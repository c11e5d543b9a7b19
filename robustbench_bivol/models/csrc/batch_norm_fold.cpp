// Batch-norm arithmetic of the fused training nodes, see batch_norm_fold.h.
//
// Why C++: the values are vectors of a few hundred, but as torch operations from Python they
// took ~25 calls per layer and direction at ~10 us each: about 20 ms of bivol_resnet20's training
// step (batch 128, one thread), more than any single pass of the layer. Plain loops in float64,
// the same formulas and roundings as the Python they replace.
#include "batch_norm_fold.h"

#include <ATen/OpMathType.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cmath>

namespace bivol {
namespace {

at::Tensor doubles(const at::Tensor& t) { return t.to(at::kDouble).contiguous(); }

// torch.lerp's formula, in the running statistics' opmath dtype.
template <typename acc_t>
acc_t lerp(acc_t self, acc_t end, acc_t weight) {
  return weight < acc_t(0.5) ? self + weight * (end - self) : end - (end - self) * (acc_t(1) - weight);
}

// mean and invstd (C) of the values whose per-channel (sum, sum of squares) are sums (C, 2, row
// major), `count` per channel; the running statistics move towards the mean and the unbiased
// variance, each rounded to their dtype first, as nn.BatchNorm2d's update.
void statistics(const double* sums, int64_t C, int64_t count, const BatchNormState& bn, double* mean,
                double* invstd) {
  std::vector<double> var(C);
  for (int64_t c = 0; c < C; ++c) {
    mean[c] = sums[2 * c] / count;
    var[c] = std::max(sums[2 * c + 1] / count - mean[c] * mean[c], 0.0);
    invstd[c] = 1.0 / std::sqrt(var[c] + bn.eps);
  }
  if (!bn.running_mean.has_value()) return;
  at::Tensor rm = *bn.running_mean, rv = *bn.running_var;
  TORCH_CHECK(rm.is_contiguous() && rv.is_contiguous() && rm.numel() == C && rv.numel() == C,
              "batch_norm_fold: running statistics must be contiguous, one per channel");
  bn.num_batches_tracked->add_(1);
  const double momentum =
      bn.momentum.has_value() ? *bn.momentum : 1.0 / double(bn.num_batches_tracked->item<int64_t>());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, rm.scalar_type(), "batch_norm_fold", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* m = rm.data_ptr<scalar_t>();
    scalar_t* v = rv.data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) {
      m[c] = scalar_t(lerp<acc_t>(m[c], acc_t(scalar_t(mean[c])), acc_t(momentum)));
      v[c] = scalar_t(lerp<acc_t>(v[c], acc_t(scalar_t(var[c] * count / double(std::max<int64_t>(count - 1, 1)))), acc_t(momentum)));
    }
  });
}

}  // namespace

std::vector<at::Tensor> batch_norm_fold(const at::Tensor& sums, int64_t count, const at::Tensor& act,
                                        const BatchNormState& bn) {
  const int64_t C = sums.size(0);
  TORCH_CHECK(sums.scalar_type() == at::kDouble && sums.is_contiguous() && sums.dim() == 2 && sums.size(1) == 2,
              "batch_norm_fold: sums must be contiguous (C, 2) float64");
  const auto f64 = act.options().dtype(at::kDouble);
  at::Tensor mean = at::empty({C}, f64), invstd = at::empty({C}, f64), scale = at::empty({C}, f64),
             shift = at::empty({C}, f64);
  statistics(sums.data_ptr<double>(), C, count, bn, mean.data_ptr<double>(), invstd.data_ptr<double>());
  const at::Tensor gamma = doubles(bn.weight), beta = doubles(bn.bias);
  const double *g = gamma.data_ptr<double>(), *b = beta.data_ptr<double>(), *m = mean.data_ptr<double>(),
               *is = invstd.data_ptr<double>();
  double *sc = scale.data_ptr<double>(), *sh = shift.data_ptr<double>();
  for (int64_t c = 0; c < C; ++c) {
    sc[c] = g[c] * is[c];
    sh[c] = b[c] - m[c] * sc[c];
  }
  const auto opmath = at::toOpMathType(act.scalar_type());
  const auto stats = bn.weight.scalar_type() == act.scalar_type() ? bn.weight.scalar_type() : opmath;
  return {scale.to(opmath), shift.to(opmath), mean.to(stats), invstd.to(stats)};
}

std::vector<at::Tensor> generator_norm_forward(const at::Tensor& r, const at::Tensor& r_sums,
                                               const c10::optional<at::Tensor>& x_sums,
                                               const c10::optional<at::Tensor>& linear_weight,
                                               const c10::optional<at::Tensor>& linear_bias,
                                               const BatchNormState& bn) {
  const int64_t B = r.size(0), R = r.size(1), hw = r.size(2) * r.size(3);
  TORCH_CHECK(r_sums.scalar_type() == at::kDouble && r_sums.is_contiguous() && r_sums.numel() == B * R * 2,
              "generator_norm_forward: r_sums must be contiguous (B, R, 2) float64");
  const bool linear = linear_weight.has_value();
  TORCH_CHECK(linear == x_sums.has_value() && linear == linear_bias.has_value(),
              "generator_norm_forward: the linear's weight, bias and x's sums come together");
  const auto f64 = r.options().dtype(at::kDouble);
  at::Tensor state = at::zeros({2 * B + 3, R}, f64);  // channel (B rows), s1 (B rows), t_mean, invstd, gamma
  double* st = state.data_ptr<double>();
  double *channel = st, *s1 = st + B * R, *t_mean = st + 2 * B * R, *invstd = t_mean + R, *gamma = invstd + R;
  const double* rs = r_sums.data_ptr<double>();
  at::Tensor mean;
  if (linear) {  // channel = linear(x's plane means), each step rounded to r's dtype as the module computes it
    const int64_t C = x_sums->size(1);
    TORCH_CHECK(x_sums->dim() == 2 && x_sums->size(0) == B && linear_weight->dim() == 2 &&
                    linear_weight->size(0) == R && linear_weight->size(1) == C && linear_bias->numel() == R,
                "generator_norm_forward: the linear does not match x's sums and r");
    mean = at::empty({B, C}, f64);
    const at::Tensor sums = doubles(*x_sums), w = doubles(*linear_weight), bias = doubles(*linear_bias);
    const double *xs = sums.data_ptr<double>(), *wd = w.data_ptr<double>(), *bd = bias.data_ptr<double>();
    double* md = mean.data_ptr<double>();
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, r.scalar_type(), "generator_norm_forward", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto round = [](double v) { return double(scalar_t(v)); };
      for (int64_t i = 0; i < B * C; ++i) md[i] = double(scalar_t(acc_t(xs[i]) / acc_t(hw)));  // x.mean((2, 3))
      for (int64_t b = 0; b < B; ++b)
        for (int64_t o = 0; o < R; ++o) {
          double acc = round(bd[o]);
          for (int64_t c = 0; c < C; ++c) acc += round(wd[o * C + c]) * md[b * C + c];
          channel[b * R + o] = round(acc);
        }
    });
  }
  std::vector<double> t_sums(2 * R, 0.0);  // t = r + channel: its sums over the batch from r's
  for (int64_t b = 0; b < B; ++b)
    for (int64_t o = 0; o < R; ++o) {
      const double a = rs[2 * (b * R + o)], sq = rs[2 * (b * R + o) + 1], ch = channel[b * R + o];
      s1[b * R + o] = a;
      t_sums[2 * o] += a + hw * ch;
      t_sums[2 * o + 1] += sq + ch * (2 * a + hw * ch);
    }
  statistics(t_sums.data(), R, B * hw, bn, t_mean, invstd);
  const at::Tensor g = doubles(bn.weight), beta = doubles(bn.bias);
  std::copy(g.data_ptr<double>(), g.data_ptr<double>() + R, gamma);
  const double* bt = beta.data_ptr<double>();
  at::Tensor scale = at::empty({R}, f64), shift = at::empty({B, R}, f64);
  double *sc = scale.data_ptr<double>(), *sh = shift.data_ptr<double>();
  for (int64_t o = 0; o < R; ++o) sc[o] = gamma[o] * invstd[o];
  for (int64_t b = 0; b < B; ++b)
    for (int64_t o = 0; o < R; ++o) sh[b * R + o] = bt[o] + sc[o] * (channel[b * R + o] - t_mean[o]);
  const auto opmath = at::toOpMathType(r.scalar_type());
  return {scale.to(opmath), shift.to(opmath), state, mean};
}

std::vector<at::Tensor> generator_norm_backward(const at::Tensor& r, const at::Tensor& gn_sums,
                                                const at::Tensor& state, const c10::optional<at::Tensor>& mean,
                                                const c10::optional<at::Tensor>& linear_weight,
                                                const at::Tensor& weight) {
  const int64_t B = r.size(0), R = r.size(1), hw = r.size(2) * r.size(3), count = B * hw;
  TORCH_CHECK(gn_sums.scalar_type() == at::kDouble && gn_sums.is_contiguous() && gn_sums.numel() == B * R * 2 &&
                  state.scalar_type() == at::kDouble && state.is_contiguous() && state.numel() == (2 * B + 3) * R,
              "generator_norm_backward: gn_sums (B, R, 2) and state (2B + 3, R) must be contiguous float64");
  const double* st = state.data_ptr<double>();
  const double *channel = st, *s1 = st + B * R, *t_mean = st + 2 * B * R, *invstd = t_mean + R, *gamma = invstd + R;
  const double* gs = gn_sums.data_ptr<double>();
  const auto f64 = r.options().dtype(at::kDouble);
  at::Tensor grad_gamma = at::zeros({R}, f64), grad_beta = at::zeros({R}, f64);
  double *gg = grad_gamma.data_ptr<double>(), *gb = grad_beta.data_ptr<double>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t o = 0; o < R; ++o) {  // grad_gamma: the sum of grad n * t_hat, t_hat = (r + channel - t_mean) * invstd
      const double g1 = gs[2 * (b * R + o)], gn_r = gs[2 * (b * R + o) + 1];
      gb[o] += g1;
      gg[o] += gn_r + (channel[b * R + o] - t_mean[o]) * g1;
    }
  at::Tensor a = at::empty({R}, f64), q = at::empty({R}, f64), c = at::empty({B, R}, f64);
  double *ad = a.data_ptr<double>(), *qd = q.data_ptr<double>(), *cd = c.data_ptr<double>();
  for (int64_t o = 0; o < R; ++o) {
    gg[o] *= invstd[o];
    ad[o] = gamma[o] * invstd[o];
    qd[o] = -ad[o] * invstd[o] * gg[o] / count;
  }
  for (int64_t b = 0; b < B; ++b)
    for (int64_t o = 0; o < R; ++o)
      cd[b * R + o] = -ad[o] * gb[o] / count + qd[o] * (channel[b * R + o] - t_mean[o]);
  const auto opmath = at::toOpMathType(r.scalar_type());
  const auto param = weight.scalar_type();
  std::vector<at::Tensor> out = {a.to(opmath), q.to(opmath), c.to(opmath), at::Tensor(), grad_gamma.to(param),
                                 grad_beta.to(param), at::Tensor(), at::Tensor()};
  if (linear_weight.has_value()) {  // channel = linear(mean): the gradients reach the linear and, per plane, x
    const int64_t C = linear_weight->size(1);
    TORCH_CHECK(mean.has_value() && mean->scalar_type() == at::kDouble && mean->is_contiguous() &&
                    mean->numel() == B * C && linear_weight->size(0) == R,
                "generator_norm_backward: mean (B, C) float64 and the linear weight (R, C) must match");
    const at::Tensor w = doubles(*linear_weight);
    const double *wd = w.data_ptr<double>(), *md = mean->data_ptr<double>();
    at::Tensor pool = at::zeros({B, C}, f64), grad_w = at::zeros({R, C}, f64), grad_b = at::zeros({R}, f64);
    double *pd = pool.data_ptr<double>(), *gwd = grad_w.data_ptr<double>(), *gbd = grad_b.data_ptr<double>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t o = 0; o < R; ++o) {
        const int64_t i = b * R + o;
        const double gc = ad[o] * gs[2 * i] + qd[o] * s1[i] + hw * cd[i];  // the sum of r's gradient over the plane
        gbd[o] += gc;
        for (int64_t k = 0; k < C; ++k) {
          gwd[o * C + k] += gc * md[b * C + k];
          pd[b * C + k] += gc * wd[o * C + k];
        }
      }
    pool.div_(double(hw));
    const auto lin = linear_weight->scalar_type();
    out[3] = pool.to(opmath);
    out[6] = grad_w.to(lin);
    out[7] = grad_b.to(lin);
  }
  return out;
}

}  // namespace bivol
