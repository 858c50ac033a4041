// The CPU kernels' entry points, for the ops that compose them (fused = style statistics, then
// affine with alpha).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace adain::cpu {

// Statistics of every row of x as two (N, C) tensors in the accumulation dtype: mean, std.
std::tuple<at::Tensor, at::Tensor> row_mean_std(const at::Tensor& x, double eps, bool unbiased);

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_forward(const at::Tensor& x,
                                                              const at::Tensor& mean,
                                                              const at::Tensor& std, double alpha,
                                                              double eps, bool unbiased);

}  // namespace adain::cpu
