// The fused involution aggregation's entry points (involution_cpu.cpp), bound in bindings.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace bivol {

// {out, and with need_stats the outputs' sum and sum of squares per channel, (C, 2) float64}
std::vector<at::Tensor> involution_forward_stats(const at::Tensor& x, const at::Tensor& kernels, int64_t K,
                                                 int64_t stride, int64_t dilation, int64_t pad_top, int64_t pad_left,
                                                 bool need_stats);
at::Tensor involution_forward(const at::Tensor& x, const at::Tensor& kernels, int64_t K, int64_t stride,
                              int64_t dilation, int64_t pad_top, int64_t pad_left);
// {grad_x (undefined unless need_input; added to grad_input_prior in place where given), grad_kernels
// (undefined unless need_kernels)}
std::vector<at::Tensor> involution_backward_prior(const at::Tensor& grad_out, const at::Tensor& x,
                                                  const at::Tensor& kernels, int64_t K, int64_t stride,
                                                  int64_t dilation, int64_t pad_top, int64_t pad_left,
                                                  bool need_input, bool need_kernels,
                                                  const c10::optional<at::Tensor>& grad_input_prior);
std::vector<at::Tensor> involution_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                            const at::Tensor& kernels, int64_t K, int64_t stride,
                                            int64_t dilation, int64_t pad_top, int64_t pad_left,
                                            bool need_input, bool need_kernels);
// out[b, c] += scale[c] * y[b, c] + shift[c] in place (scale, shift (C) in the opmath dtype)
at::Tensor scale_add_(at::Tensor& out, const at::Tensor& y, const at::Tensor& scale, const at::Tensor& shift);
// whether bf16 stride-1 aggregation runs on AVX512-BF16 (compiled in where -march=native has it)
bool bf16_dot();

}  // namespace bivol
