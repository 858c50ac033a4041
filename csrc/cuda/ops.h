// Host entry points one CUDA op file lends another: the fused op's general path is the style's
// statistics (mean_std_kernel.cu) followed by the affine forward (affine_kernel.cu).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <tuple>

namespace adain {
namespace cuda {

// Per-row mean and std = sqrt(var + eps) of x, as (N, C) contiguous tensors of the accumulation
// dtype. x must already have passed check_features.
std::tuple<at::Tensor, at::Tensor> row_statistics(const at::Tensor& x, double eps, bool unbiased);

// adain::_affine_forward on CUDA (checks its inputs); activation "none", "relu" or "leaky_relu".
std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_forward(
    const at::Tensor& x, const at::Tensor& mean, const at::Tensor& std, double alpha, double eps,
    bool unbiased, c10::string_view activation, double negative_slope);

}  // namespace cuda
}  // namespace adain
