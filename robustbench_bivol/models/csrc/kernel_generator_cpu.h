// The fused kernel generator's entry points (kernel_generator_cpu.cpp), bound in involution_cpu.cpp.
#pragma once

#include <torch/extension.h>

#include <vector>

namespace bivol {

// {r = pointwise . depthwise3x3(x) (or pointwise . x without depthwise), x's sums over each plane
// (B, C) in opmath (undefined unless need_sums)}; weights in x's opmath dtype, depthwise (C, 9),
// pointwise (R, C).
std::vector<at::Tensor> separable_forward(const at::Tensor& x, const c10::optional<at::Tensor>& depthwise,
                                          const at::Tensor& pointwise, bool need_sums);
// {grad_x (undefined unless need_input), grad_depthwise (undefined without depthwise), grad_pointwise}.
// grad_x_prior: another gradient of x, added in place (and returned as grad_x); grad_x_bias: (B, C)
// opmath values added to every pixel of each plane (a global-average-pool's gradient).
std::vector<at::Tensor> separable_backward(const at::Tensor& grad, const at::Tensor& x,
                                           const c10::optional<at::Tensor>& depthwise, const at::Tensor& pointwise,
                                           bool need_input, const c10::optional<at::Tensor>& grad_x_prior,
                                           const c10::optional<at::Tensor>& grad_x_bias);
// k = bias + weight . max(n, 0); weight (O, C), bias (O)
at::Tensor relu_pointwise_forward(const at::Tensor& n, const at::Tensor& weight, const at::Tensor& bias);
// {grad_n (undefined unless need_input), grad_weight, grad_bias}
std::vector<at::Tensor> relu_pointwise_backward(const at::Tensor& grad, const at::Tensor& n, const at::Tensor& weight,
                                                bool need_input);

// s x s average pool, stride s, ceil mode without padding (a window cut by the edge averages the
// pixels it covers), and its input gradient (x of size in_h x in_w)
at::Tensor avg_pool_forward(const at::Tensor& x, int64_t s);
at::Tensor avg_pool_backward(const at::Tensor& grad, int64_t s, int64_t in_h, int64_t in_w);

}  // namespace bivol
