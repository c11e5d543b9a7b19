// The batch norms that the fused training nodes fold into their passes (fused_training.py), bound in bindings.cpp:
// batch statistics from per-channel sums, the running statistics' update, and the affine maps the
// passes apply, in float64 on a few hundred values, and the matching backward arithmetic.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace bivol {

// A BatchNorm2d's state: its affine parameters and running statistics (undefined when it tracks
// none), as nn.BatchNorm2d holds them; momentum nullopt: the cumulative average.
struct BatchNormState {
  at::Tensor weight, bias;
  c10::optional<at::Tensor> running_mean, running_var, num_batches_tracked;
  c10::optional<double> momentum;
  double eps;
};

// A BN of batch statistics whose input sums (C, 2) (sum, sum of squares; float64) cover `count`
// values per channel, as y = scale[c] * x + shift[c]: {scale, shift} in act's opmath dtype, {mean,
// invstd} in the dtype native_batch_norm saves (the weight's if it is act's, else opmath).
// Updates the running statistics as nn.BatchNorm2d does in training (unbiased variance).
std::vector<at::Tensor> batch_norm_fold(const at::Tensor& sums, int64_t count, const at::Tensor& act,
                                        const BatchNormState& bn);

// The kernel generator's BN, on t = r + channel, channel = linear(mean of x) (zero without linear):
// from r (B, R, H, W), its sums per example and channel r_sums (B, R, 2) float64 and x's plane sums
// x_sums (B, C) (opmath; with linear only), {scale (R), shift (B, R) in opmath: n = scale * r +
// shift, state (2B + 3, R) float64 for the backward, x's mean (B, C) float64 as rounded to r's
// dtype (undefined without linear)}. Updates the running statistics.
std::vector<at::Tensor> generator_norm_forward(const at::Tensor& r, const at::Tensor& r_sums,
                                               const c10::optional<at::Tensor>& x_sums,
                                               const c10::optional<at::Tensor>& linear_weight,
                                               const c10::optional<at::Tensor>& linear_bias,
                                               const BatchNormState& bn);

// Its backward from the sums of grad n and grad n * r per (example, channel), gn_sums (B, R, 2):
// {a, q (R), c (B, R) in opmath: r's gradient is a * grad n + q * r + c; x's gradient through the
// mean, per plane (B, C) in opmath (undefined without linear); the gradients of the BN's weight and
// bias and of the linear's weight and bias (undefined without linear), in the parameters' dtypes}.
std::vector<at::Tensor> generator_norm_backward(const at::Tensor& r, const at::Tensor& gn_sums,
                                                const at::Tensor& state, const c10::optional<at::Tensor>& mean,
                                                const c10::optional<at::Tensor>& linear_weight,
                                                const at::Tensor& weight);

}  // namespace bivol
