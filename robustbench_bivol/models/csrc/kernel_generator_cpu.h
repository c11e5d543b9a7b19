// The fused kernel generator's entry points (kernel_generator_cpu.cpp), bound in bindings.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace bivol {

// {r = pointwise . depthwise3x3(x) (or pointwise . x without depthwise), x's sums over each plane
// (B, C) in opmath (undefined unless need_sums), r's sums and sums of squares as stored (B, R, 2)
// float64 (undefined unless need_stats)}; weights in x's opmath dtype, depthwise (C, 9), pointwise (R, C).
std::vector<at::Tensor> separable_forward(const at::Tensor& x, const c10::optional<at::Tensor>& depthwise,
                                          const at::Tensor& pointwise, bool need_sums, bool need_stats);
// {grad_x (undefined unless need_input), grad_depthwise (undefined without depthwise), grad_pointwise}.
// grad_x_prior: another gradient of x, added in place (and returned as grad_x); grad_x_bias: (B, C)
// opmath values added to every pixel of each plane (a global-average-pool's gradient). bn = (r, a,
// q, c): grad is that of a batch norm's output and r's gradient is a[o] * grad + q[o] * r + c[b, o]
// (a, q (R), c (B, R) in opmath), computed as the bands load.
std::vector<at::Tensor> separable_backward(const at::Tensor& grad, const at::Tensor& x,
                                           const c10::optional<at::Tensor>& depthwise, const at::Tensor& pointwise,
                                           bool need_input, const c10::optional<at::Tensor>& grad_x_prior,
                                           const c10::optional<at::Tensor>& grad_x_bias,
                                           const c10::optional<std::vector<at::Tensor>>& bn);
// k = bias + weight . max(n, 0); weight (O, C), bias (O). With scale (C) and shift (B, C) in opmath,
// the input is r and n = scale[c] * r + shift[b, c] (a batch norm folded in), computed as it loads.
at::Tensor relu_pointwise_forward(const at::Tensor& n, const at::Tensor& weight, const at::Tensor& bias,
                                  const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift);
// {grad_n (undefined unless need_input), grad_weight, grad_bias, and with scale and shift (input r
// as in the forward) the sums of grad_n as stored and of grad_n * r per (example, channel), (B, C, 2)
// float64 (else undefined)}
std::vector<at::Tensor> relu_pointwise_backward(const at::Tensor& grad, const at::Tensor& n, const at::Tensor& weight,
                                                bool need_input, const c10::optional<at::Tensor>& scale,
                                                const c10::optional<at::Tensor>& shift);

// s x s average pool, stride s, ceil mode without padding (a window cut by the edge averages the
// pixels it covers), and its input gradient (x of size in_h x in_w; added to grad_x_prior in
// place and returned where given)
at::Tensor avg_pool_forward(const at::Tensor& x, int64_t s);
at::Tensor avg_pool_backward(const at::Tensor& grad, int64_t s, int64_t in_h, int64_t in_w,
                             const c10::optional<at::Tensor>& grad_x_prior);

// The sum and the sum of squares per channel of t (B, C, H, W) as stored, (C, 2) float64: the
// statistics of a batch norm on t.
at::Tensor channel_sums(const at::Tensor& t);

}  // namespace bivol
