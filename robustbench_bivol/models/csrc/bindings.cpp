// The extension's Python bindings: the fused involution aggregation (involution_cpu.cpp), the
// fused kernel generator (kernel_generator_cpu.cpp) and the batch-norm arithmetic of the fused
// training nodes (batch_norm_fold.cpp). The only file that includes torch's Python headers
// (pybind11 and its tensor casters); the kernels include ATen's tensor headers only. With
// torch/extension.h (all of torch's C++ API) in each file the first build took 50 s on 2 cores;
// kernel_generator_cpu.cpp alone spent 20 of its 32 s parsing it.
#include <torch/python.h>

#include <tuple>

#include "batch_norm_fold.h"
#include "involution_cpu.h"
#include "kernel_generator_cpu.h"

namespace {

// A BatchNorm2d's tensors and settings as Python passes them (bn.weight, bn.bias, bn.running_mean,
// bn.running_var, bn.num_batches_tracked, bn.momentum, bn.eps).
using BatchNormArgs = std::tuple<at::Tensor, at::Tensor, c10::optional<at::Tensor>, c10::optional<at::Tensor>,
                                 c10::optional<at::Tensor>, c10::optional<double>, double>;

bivol::BatchNormState batch_norm_state(const BatchNormArgs& bn) {
  const auto& [weight, bias, running_mean, running_var, num_batches_tracked, momentum, eps] = bn;
  TORCH_CHECK(running_mean.has_value() == running_var.has_value() &&
                  running_mean.has_value() == num_batches_tracked.has_value(),
              "batch norm: running_mean, running_var and num_batches_tracked come together");
  return {weight, bias, running_mean, running_var, num_batches_tracked, momentum, eps};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bf16_dot", &bivol::bf16_dot,
        "whether bf16 stride-1 aggregation runs on AVX512-BF16 (involution_cpu.cpp's dot_kernels)");
  m.def("forward", &bivol::involution_forward, "fused involution aggregation (CPU)");
  m.def("forward_stats", &bivol::involution_forward_stats,
        "forward, and with need_stats the outputs' sum and sum of squares per channel, (C, 2) float64 (CPU)");
  m.def("scale_add_", &bivol::scale_add_, "out += scale[c] * y + shift[c] (CPU)");
  m.def("backward", &bivol::involution_backward, "gradients of the fused involution aggregation (CPU)");
  m.def("backward_prior", &bivol::involution_backward_prior,
        "backward, adding grad_x to grad_input_prior in place where given (CPU)");
  m.def("separable_forward", &bivol::separable_forward, "kernel generator: depth-wise 3x3 + 1x1 (CPU)");
  m.def("separable_backward", &bivol::separable_backward, "gradients of separable_forward (CPU)");
  m.def("relu_pointwise_forward", &bivol::relu_pointwise_forward, "kernel generator: ReLU + 1x1 (CPU)");
  m.def("relu_pointwise_backward", &bivol::relu_pointwise_backward, "gradients of relu_pointwise_forward (CPU)");
  m.def(
      "batch_norm_fold",
      [](const at::Tensor& sums, int64_t count, const at::Tensor& act, const BatchNormArgs& bn) {
        return bivol::batch_norm_fold(sums, count, act, batch_norm_state(bn));
      },
      "a batch norm of batch statistics from its input's sums, as {scale, shift, mean, invstd} (CPU)");
  m.def(
      "generator_norm_forward",
      [](const at::Tensor& r, const at::Tensor& r_sums, const c10::optional<at::Tensor>& x_sums,
         const c10::optional<at::Tensor>& linear_weight, const c10::optional<at::Tensor>& linear_bias,
         const BatchNormArgs& bn) {
        return bivol::generator_norm_forward(r, r_sums, x_sums, linear_weight, linear_bias, batch_norm_state(bn));
      },
      "kernel generator: its BN (with the channel term) folded into the passes around it (CPU)");
  m.def("generator_norm_backward", &bivol::generator_norm_backward, "backward of generator_norm_forward (CPU)");
  m.def("avg_pool_forward", &bivol::avg_pool_forward, "kernel generator: s x s average pool, ceil mode (CPU)");
  m.def("avg_pool_backward", &bivol::avg_pool_backward,
        "gradient of avg_pool_forward, added to grad_x_prior in place where given (CPU)");
  m.def("channel_sums", &bivol::channel_sums, "sum and sum of squares per channel, (C, 2) float64 (CPU)");
}
