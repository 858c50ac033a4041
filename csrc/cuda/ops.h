// Host entry points one CUDA op file lends another: the fused op's general path is the style's
// statistics (mean_std_kernel.cu) followed by the affine forward (affine_kernel.cu).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <optional>
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

// adain::_prologue_affine_forward and _prologue_affine_backward on CUDA (affine_kernel.cu; check
// their inputs).
std::tuple<at::Tensor, at::Tensor, at::Tensor> prologue_affine_forward(
    const at::Tensor& x, const std::optional<at::Tensor>& noise,
    const std::optional<at::Tensor>& noise_weight, const std::optional<at::Tensor>& bias,
    c10::string_view pre_activation, double pre_negative_slope, const at::Tensor& mean,
    const at::Tensor& std, double eps, bool unbiased, c10::string_view activation,
    double negative_slope);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> prologue_affine_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const std::optional<at::Tensor>& noise,
    const std::optional<at::Tensor>& noise_weight, const std::optional<at::Tensor>& bias,
    c10::string_view pre_activation, double pre_negative_slope, const at::Tensor& mean_p,
    const at::Tensor& std_p, const at::Tensor& mean, const at::Tensor& std, bool unbiased,
    c10::string_view activation, double negative_slope);

}  // namespace cuda
}  // namespace adain
