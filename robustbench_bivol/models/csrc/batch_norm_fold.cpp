// Batch-norm arithmetic of the fused training nodes, see batch_norm_fold.h.
//
// Why C++: the values are vectors of a few hundred, but as torch operations from Python they
// took ~25 calls per layer and direction at ~10 us each: in-process A/B, bivol_resnet20's training
// step (batch 128, one thread) is 9.4 ms (bf16) / 12.1 ms (fp32) shorter with these calls. Plain
// loops in float64, the formulas of the Python they replace (results equal up to float64
// rounding; the channel term's Linear accumulates in float64 before rounding to the input dtype).
#include "batch_norm_fold.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace bivol {
namespace {

// A small tensor's values as float64, and float64 values as a new tensor of a dtype: loops, not
// ATen conversions (a few microseconds each, several per call).
std::vector<double> read(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  std::vector<double> out(c.numel());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, c.scalar_type(), "batch_norm_fold_read", [&] {
    const scalar_t* d = c.data_ptr<scalar_t>();
    for (size_t i = 0; i < out.size(); ++i) out[i] = double(d[i]);
  });
  return out;
}

at::Tensor write(const double* values, at::IntArrayRef shape, at::ScalarType dtype, const at::Tensor& like) {
  at::Tensor out = at::empty(shape, like.options().dtype(dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "batch_norm_fold_write", [&] {
    scalar_t* d = out.data_ptr<scalar_t>();
    for (int64_t i = 0; i < out.numel(); ++i) d[i] = scalar_t(values[i]);
  });
  return out;
}

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
  TORCH_CHECK(bn.num_batches_tracked->scalar_type() == at::kLong && bn.num_batches_tracked->numel() == 1,
              "batch_norm_fold: num_batches_tracked must be one int64");
  int64_t& tracked = *bn.num_batches_tracked->data_ptr<int64_t>();
  tracked += 1;
  bn.num_batches_tracked->unsafeGetTensorImpl()->bump_version();  // as its add_(1) in nn.BatchNorm2d
  const double momentum = bn.momentum.has_value() ? *bn.momentum : 1.0 / double(tracked);
  const double unbiased = double(count) / double(std::max<int64_t>(count - 1, 1));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, rm.scalar_type(), "batch_norm_fold", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* m = rm.data_ptr<scalar_t>();
    scalar_t* v = rv.data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) {
      m[c] = scalar_t(lerp<acc_t>(m[c], acc_t(scalar_t(mean[c])), acc_t(momentum)));
      v[c] = scalar_t(lerp<acc_t>(v[c], acc_t(scalar_t(var[c] * unbiased)), acc_t(momentum)));
    }
  });
  rm.unsafeGetTensorImpl()->bump_version();
  rv.unsafeGetTensorImpl()->bump_version();
}

}  // namespace

std::vector<at::Tensor> batch_norm_fold(const at::Tensor& sums, int64_t count, const at::Tensor& act,
                                        const BatchNormState& bn) {
  const int64_t C = sums.size(0);
  TORCH_CHECK(sums.scalar_type() == at::kDouble && sums.is_contiguous() && sums.dim() == 2 && sums.size(1) == 2,
              "batch_norm_fold: sums must be contiguous (C, 2) float64");
  std::vector<double> mean(C), invstd(C), scale(C), shift(C);
  statistics(sums.data_ptr<double>(), C, count, bn, mean.data(), invstd.data());
  const std::vector<double> gamma = read(bn.weight), beta = read(bn.bias);
  for (int64_t c = 0; c < C; ++c) {
    scale[c] = gamma[c] * invstd[c];
    shift[c] = beta[c] - mean[c] * scale[c];
  }
  const auto opmath = at::toOpMathType(act.scalar_type());
  const auto stats = bn.weight.scalar_type() == act.scalar_type() ? bn.weight.scalar_type() : opmath;
  return {write(scale.data(), {C}, opmath, act), write(shift.data(), {C}, opmath, act),
          write(mean.data(), {C}, stats, act), write(invstd.data(), {C}, stats, act)};
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
    double* md = mean.data_ptr<double>();
    const std::vector<double> sums = read(*x_sums), w = read(*linear_weight), bias = read(*linear_bias);
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, r.scalar_type(), "generator_norm_forward", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto round = [](double v) { return double(scalar_t(v)); };
      for (int64_t i = 0; i < B * C; ++i) md[i] = double(scalar_t(acc_t(sums[i]) / acc_t(hw)));  // x.mean((2, 3))
      std::vector<double> wt(C * R), acc(R);  // the weight rounded and transposed: the loop over o vectorises
      for (int64_t o = 0; o < R; ++o)
        for (int64_t c = 0; c < C; ++c) wt[c * R + o] = round(w[o * C + c]);
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t o = 0; o < R; ++o) acc[o] = round(bias[o]);
        for (int64_t c = 0; c < C; ++c) {
          const double m = md[b * C + c];
          for (int64_t o = 0; o < R; ++o) acc[o] += wt[c * R + o] * m;
        }
        for (int64_t o = 0; o < R; ++o) channel[b * R + o] = round(acc[o]);
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
  const std::vector<double> g = read(bn.weight), beta = read(bn.bias);
  std::copy(g.begin(), g.end(), gamma);
  std::vector<double> scale(R), shift(B * R);
  for (int64_t o = 0; o < R; ++o) scale[o] = gamma[o] * invstd[o];
  for (int64_t b = 0; b < B; ++b)
    for (int64_t o = 0; o < R; ++o) shift[b * R + o] = beta[o] + scale[o] * (channel[b * R + o] - t_mean[o]);
  const auto opmath = at::toOpMathType(r.scalar_type());
  return {write(scale.data(), {R}, opmath, r), write(shift.data(), {B, R}, opmath, r), state, mean};
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
  std::vector<double> gg(R, 0.0), gb(R, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t o = 0; o < R; ++o) {  // grad_gamma: the sum of grad n * t_hat, t_hat = (r + channel - t_mean) * invstd
      const double g1 = gs[2 * (b * R + o)], gn_r = gs[2 * (b * R + o) + 1];
      gb[o] += g1;
      gg[o] += gn_r + (channel[b * R + o] - t_mean[o]) * g1;
    }
  std::vector<double> a(R), q(R), c(B * R);
  for (int64_t o = 0; o < R; ++o) {
    gg[o] *= invstd[o];
    a[o] = gamma[o] * invstd[o];
    q[o] = -a[o] * invstd[o] * gg[o] / count;
  }
  for (int64_t b = 0; b < B; ++b)
    for (int64_t o = 0; o < R; ++o) c[b * R + o] = -a[o] * gb[o] / count + q[o] * (channel[b * R + o] - t_mean[o]);
  const auto opmath = at::toOpMathType(r.scalar_type());
  const auto param = weight.scalar_type();
  std::vector<at::Tensor> out = {write(a.data(), {R}, opmath, r), write(q.data(), {R}, opmath, r),
                                 write(c.data(), {B, R}, opmath, r), at::Tensor(), write(gg.data(), {R}, param, r),
                                 write(gb.data(), {R}, param, r), at::Tensor(), at::Tensor()};
  if (linear_weight.has_value()) {  // channel = linear(mean): the gradients reach the linear and, per plane, x
    const int64_t C = linear_weight->size(1);
    TORCH_CHECK(mean.has_value() && mean->scalar_type() == at::kDouble && mean->is_contiguous() &&
                    mean->numel() == B * C && linear_weight->size(0) == R,
                "generator_norm_backward: mean (B, C) float64 and the linear weight (R, C) must match");
    const std::vector<double> w = read(*linear_weight);
    const double* md = mean->data_ptr<double>();
    std::vector<double> pool(B * C, 0.0), grad_w(R * C, 0.0), grad_b(R, 0.0);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t o = 0; o < R; ++o) {
        const int64_t i = b * R + o;
        const double gc = a[o] * gs[2 * i] + q[o] * s1[i] + hw * c[i];  // the sum of r's gradient over the plane
        grad_b[o] += gc;
        for (int64_t k = 0; k < C; ++k) {
          grad_w[o * C + k] += gc * md[b * C + k];
          pool[b * C + k] += gc * w[o * C + k];
        }
      }
    for (double& v : pool) v /= double(hw);
    const auto lin = linear_weight->scalar_type();
    out[3] = write(pool.data(), {B, C}, opmath, r);
    out[6] = write(grad_w.data(), {R, C}, lin, r);
    out[7] = write(grad_b.data(), {R}, lin, r);
  }
  return out;
}

}  // namespace bivol
