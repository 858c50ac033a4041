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

// ---- The affine op with its prologue: pre = x + noise_weight * noise + bias, p = act_pre(pre)
// (row_math.h), statistics and map over p, alpha 1.

namespace {

// The prologue's tensors on the device side: the noise as (N, Cn, L, 1) rows in x's layout (none:
// nothing), noise_weight and bias as contiguous (C) tensors of the accumulation dtype.
struct PrologueTensors {
  at::Tensor noise, weight, bias;
};

PrologueTensors prologue_tensors(const at::Tensor& x, Layout layout, at::MemoryFormat format,
                                 const std::optional<at::Tensor>& noise,
                                 const std::optional<at::Tensor>& noise_weight,
                                 const std::optional<at::Tensor>& bias, at::ScalarType acc) {
  PrologueTensors t;
  const int64_t C = x.size(1);
  if (noise.has_value()) t.noise = aligned16(as_rows(*noise, layout), format);
  t.weight = channel_param(noise_weight, C, acc, x.options(), 1.0);
  t.bias = channel_param(bias, C, acc, x.options(), 0.0);
  return t;
}

template <typename T, typename acc_t>
void set_prologue(Params<T, acc_t>& p, const PrologueTensors& t, int64_t C,
                  c10::string_view pre_activation, double pre_negative_slope) {
  p.noise = t.noise.defined() ? t.noise.data_ptr<T>() : nullptr;
  p.pro.act = epilogue_of<acc_t>(pre_activation, pre_negative_slope);
  p.pro.weight = t.weight.data_ptr<acc_t>();
  p.pro.bias = t.bias.data_ptr<acc_t>();
  p.pro.channels = C;
  p.pro.noise_channels = t.noise.defined() ? t.noise.size(1) : 0;
}

}  // namespace

// (out, mean_p, std_p): out = act(std * (p - mean_p) / std_p + mean) per row, mean_p and std_p
// (N, C) in the accumulation dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor> prologue_affine_forward(
    const at::Tensor& x_in, const std::optional<at::Tensor>& noise,
    const std::optional<at::Tensor>& noise_weight, const std::optional<at::Tensor>& bias,
    c10::string_view pre_activation, double pre_negative_slope, const at::Tensor& mean,
    const at::Tensor& std, double eps, bool unbiased, c10::string_view activation,
    double negative_slope) {
  check_affine(x_in, mean, std, unbiased);
  check_eps(eps);
  check_activation(activation, negative_slope);
  check_prologue(x_in, noise, noise_weight, bias, pre_activation, pre_negative_slope);
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
  at::Tensor mean_p = at::empty({N, C}, acc_options);
  at::Tensor std_p = at::empty({N, C}, acc_options);
  if (R == 0) return {shaped_like(out, x_in), mean_p, std_p};
  const int64_t L = x.size(2) * x.size(3);
  const at::Tensor mean_t = flat_stat(mean, acc), std_t = flat_stat(std, acc);
  const PrologueTensors pro = prologue_tensors(x, layout, format, noise, noise_weight, bias, acc);
  const Device dev = device_info();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "adain_prologue_affine_forward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    Params<scalar_t, acc_t> p;
    p.x = x.data_ptr<scalar_t>();
    p.out = out.data_ptr<scalar_t>();
    p.d.rows = R;
    p.d.L = L;
    p.d.segment_len = L;
    p.d.alpha = acc_t(1);
    p.d.eps = static_cast<acc_t>(eps);
    p.d.unbiased = unbiased;
    p.d.mean_t = mean_t.data_ptr<acc_t>();
    p.d.std_t = std_t.data_ptr<acc_t>();
    p.d.mean_out = mean_p.data_ptr<acc_t>();
    p.d.std_out = std_p.data_ptr<acc_t>();
    p.d.epilogue = epilogue_of<acc_t>(activation, negative_slope);
    set_prologue(p, pro, C, pre_activation, pre_negative_slope);
    run_prologue_op<RowMode::Affine>(p, layout, N, C, acc_options, dev);
  });
  return {shaped_like(out, x_in), mean_p, std_p};
}

// (grad_x, grad_mean, grad_std, grad_bias, grad_noise_weight): pre and p recomputed from x, g
// through the epilogue's backward at the forward's y, GradSums of (p, g_y) with the masked
// PrologueSums in the same sweep; grad_x = act_pre'(pre) * (the affine backward's map of p);
// grad_bias and grad_noise_weight per (n, c) row (the caller sums them over N).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> prologue_affine_backward(
    const at::Tensor& grad_out, const at::Tensor& x_in, const std::optional<at::Tensor>& noise,
    const std::optional<at::Tensor>& noise_weight, const std::optional<at::Tensor>& bias,
    c10::string_view pre_activation, double pre_negative_slope, const at::Tensor& mean_p_in,
    const at::Tensor& std_p_in, const at::Tensor& mean, const at::Tensor& std, bool unbiased,
    c10::string_view activation, double negative_slope) {
  check_activation(activation, negative_slope);
  check_prologue(x_in, noise, noise_weight, bias, pre_activation, pre_negative_slope);
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
  at::Tensor grad_bias = at::empty({N, C}, acc_options);
  at::Tensor grad_weight = at::empty({N, C}, acc_options);
  if (R == 0) return {shaped_like(grad_x, x_in), grad_mean, grad_std, grad_bias, grad_weight};
  const int64_t L = x.size(2) * x.size(3);
  const at::Tensor mean_f = flat_stat(mean_p_in, acc), std_f = flat_stat(std_p_in, acc);
  const at::Tensor mean_t = flat_stat(mean, acc), std_t = flat_stat(std, acc);
  const PrologueTensors pro = prologue_tensors(x, layout, format, noise, noise_weight, bias, acc);
  const Device dev = device_info();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "adain_prologue_affine_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    Params<scalar_t, acc_t> p;
    p.x = x.data_ptr<scalar_t>();
    p.g = g.data_ptr<scalar_t>();
    p.out = grad_x.data_ptr<scalar_t>();
    p.d.rows = R;
    p.d.L = L;
    p.d.segment_len = L;
    p.d.alpha = acc_t(1);
    p.d.unbiased = unbiased;
    p.d.mean_x = mean_f.data_ptr<acc_t>();
    p.d.std_x = std_f.data_ptr<acc_t>();
    p.d.mean_t = mean_t.data_ptr<acc_t>();
    p.d.std_t = std_t.data_ptr<acc_t>();
    p.d.grad_mean_out = grad_mean.data_ptr<acc_t>();
    p.d.grad_std_out = grad_std.data_ptr<acc_t>();
    p.d.epilogue = epilogue_of<acc_t>(activation, negative_slope);
    set_prologue(p, pro, C, pre_activation, pre_negative_slope);
    p.pro.grad_bias_out = grad_bias.data_ptr<acc_t>();
    p.pro.grad_weight_out = grad_weight.data_ptr<acc_t>();
    run_prologue_op<RowMode::AffineBackward>(p, layout, N, C, acc_options, dev);
  });
  return {shaped_like(grad_x, x_in), grad_mean, grad_std, grad_bias, grad_weight};
}

}  // namespace cuda

TORCH_LIBRARY_IMPL(adain, CUDA, m) {
  m.impl("_affine_forward", TORCH_FN(cuda::affine_forward));
  m.impl("_affine_backward", TORCH_FN(cuda::affine_backward_cuda));
  m.impl("_prologue_affine_forward", TORCH_FN(cuda::prologue_affine_forward));
  m.impl("_prologue_affine_backward", TORCH_FN(cuda::prologue_affine_backward));
}

}  // namespace adain
