// adain::_affine_forward and adain::_affine_backward on CUDA. Paths and geometry: launch.cuh.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>

#include "checks.h"
#include "cuda/ops.h"
#include "cuda/launch.cuh"

namespace adain {
namespace cuda {

// out = act(target_std * (x - mean_x) / std_x + target_mean) per row (the target statistics
// blended with x's own by alpha: affine_forward_coef in row_math.h; act the epilogue: activate);
// also returns x's statistics (N, C) in the accumulation dtype for the backward.
std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_forward(
    const at::Tensor& x_in, const at::Tensor& mean, const at::Tensor& std, double alpha,
    double eps, bool unbiased, c10::string_view activation, double negative_slope) {
  check_affine(x_in, mean, std, unbiased);
  check_eps(eps);
  check_alpha(alpha);
  check_activation(activation, negative_slope);
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x;
  Layout layout;
  std::tie(x, layout) = canonical_layout(x_in);
  const auto format = memory_format_of(layout);
  x = aligned16(x, format);
  const int64_t N = x.size(0), C = x.size(1), R = N * C;
  const auto acc = acc_dtype(x.scalar_type());
  const auto acc_options = x.options().dtype(acc);
  at::Tensor out = at::empty_like(x, format);
  at::Tensor mean_x = at::empty({N, C}, acc_options);
  at::Tensor std_x = at::empty({N, C}, acc_options);
  if (R == 0) return {shaped_like(out, x_in), mean_x, std_x};
  const int64_t L = x.size(2) * x.size(3);
  const at::Tensor mean_t = flat_stat(mean, acc), std_t = flat_stat(std, acc);
  const Device dev = device_info();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "adain_affine_forward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    Params<scalar_t, acc_t> p;
    p.x = x.data_ptr<scalar_t>();
    p.out = out.data_ptr<scalar_t>();
    p.d.rows = R;
    p.d.L = L;
    p.d.segment_len = L;
    p.d.alpha = static_cast<acc_t>(alpha);
    p.d.eps = static_cast<acc_t>(eps);
    p.d.unbiased = unbiased;
    p.d.mean_t = mean_t.data_ptr<acc_t>();
    p.d.std_t = std_t.data_ptr<acc_t>();
    p.d.mean_out = mean_x.data_ptr<acc_t>();
    p.d.std_out = std_x.data_ptr<acc_t>();
    p.d.epilogue = epilogue_of<acc_t>(activation, negative_slope);
    run_row_op<RowMode::Affine>(p, layout, N, C, acc_options, dev);
  });
  return {shaped_like(out, x_in), mean_x, std_x};
}

namespace {

// grad_x = k*g + ((1-alpha) - k) * (sum_g_xhat/D * x_hat + sum_g/L), grad_mean = alpha*sum_g,
// grad_std = alpha*sum_g_xhat, with sum_g = sum(g), sum_g_xhat = sum(g * x_hat) per row
// (affine_backward_coef in row_math.h); g is read in x's layout. With an activation, g is
// g_y = activation_grad(y, g) throughout, y recomputed per element with the forward's
// coefficients, from the target mean (`mean`) among them.
std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x_in, const at::Tensor& mean_x,
    const at::Tensor& std_x, const at::Tensor& std, double alpha, bool unbiased,
    const std::optional<at::Tensor>& mean, c10::string_view activation, double negative_slope) {
  check_backward_mean(mean, activation, negative_slope);
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x;
  Layout layout;
  std::tie(x, layout) = canonical_layout(x_in);
  const auto format = memory_format_of(layout);
  x = aligned16(x, format);
  const at::Tensor g = aligned16(as_rows(grad_out.to(x.scalar_type()), layout), format);
  const int64_t N = x.size(0), C = x.size(1), R = N * C;
  const auto acc = acc_dtype(x.scalar_type());
  const auto acc_options = x.options().dtype(acc);
  at::Tensor grad_x = at::empty_like(x, format);
  at::Tensor grad_mean = at::empty({N, C}, acc_options);
  at::Tensor grad_std = at::empty({N, C}, acc_options);
  if (R == 0) return {shaped_like(grad_x, x_in), grad_mean, grad_std};
  const int64_t L = x.size(2) * x.size(3);
  const at::Tensor mean_f = flat_stat(mean_x, acc), std_f = flat_stat(std_x, acc);
  const at::Tensor std_t = flat_stat(std, acc);
  const bool has_activation = activation != "none";
  const at::Tensor mean_t = has_activation ? flat_stat(*mean, acc) : at::Tensor();
  const Device dev = device_info();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "adain_affine_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    Params<scalar_t, acc_t> p;
    p.x = x.data_ptr<scalar_t>();
    p.g = g.data_ptr<scalar_t>();
    p.out = grad_x.data_ptr<scalar_t>();
    p.d.rows = R;
    p.d.L = L;
    p.d.segment_len = L;
    p.d.alpha = static_cast<acc_t>(alpha);
    p.d.unbiased = unbiased;
    p.d.mean_x = mean_f.data_ptr<acc_t>();
    p.d.std_x = std_f.data_ptr<acc_t>();
    p.d.std_t = std_t.data_ptr<acc_t>();
    p.d.grad_mean_out = grad_mean.data_ptr<acc_t>();
    p.d.grad_std_out = grad_std.data_ptr<acc_t>();
    if (has_activation) {
      p.d.mean_t = mean_t.data_ptr<acc_t>();
      p.d.epilogue = epilogue_of<acc_t>(activation, negative_slope);
    }
    run_row_op<RowMode::AffineBackward>(p, layout, N, C, acc_options, dev);
  });
  return {shaped_like(grad_x, x_in), grad_mean, grad_std};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(adain, CUDA, m) {
  m.impl("_affine_forward", TORCH_FN(cuda::affine_forward));
  m.impl("_affine_backward", TORCH_FN(cuda::affine_backward_cuda));
}

}  // namespace adain
