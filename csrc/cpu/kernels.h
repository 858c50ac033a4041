// The CPU kernels' entry points, for the ops that compose them (fused = style statistics, then
// affine with alpha; its backward = affine backward, then mean_std backward of the style).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <optional>

#include <tuple>
#include <vector>

namespace adain::cpu {

// Statistics of every row of x as two (N, C) tensors in the accumulation dtype: mean, std.
std::tuple<at::Tensor, at::Tensor> row_mean_std(const at::Tensor& x, double eps, bool unbiased);

// activation: "none", "relu" or "leaky_relu" on the output (csrc/row_math.h's Epilogue).
std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_forward(
    const at::Tensor& x, const at::Tensor& mean, const at::Tensor& std, double alpha, double eps,
    bool unbiased, c10::string_view activation = "none", double negative_slope = 0.01);

// With an activation, `mean` (the forward's target mean) is required.
std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& mean_x,
    const at::Tensor& std_x, const at::Tensor& std, double alpha, bool unbiased,
    const std::optional<at::Tensor>& mean = std::nullopt, c10::string_view activation = "none",
    double negative_slope = 0.01);

at::Tensor mean_std_backward(const at::Tensor& grad_mean, const at::Tensor& grad_std,
                             const at::Tensor& x, const at::Tensor& mean, const at::Tensor& std,
                             bool unbiased);

// adain::_cpu_segment_log: the segment counts logged since the previous call (see SegmentLog in
// row_kernels.h); recording stays on afterwards iff `record`.
std::vector<int64_t> take_segment_log(bool record);

// adain::_cpu_stream_bytes: outputs of at least `bytes` are streamed from now on (bytes >= 0);
// returns the threshold before the call (row_kernels.h's stream_threshold).
int64_t stream_bytes_hook(int64_t bytes);

}  // namespace adain::cpu
