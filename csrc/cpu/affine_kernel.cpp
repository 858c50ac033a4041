// adain::_affine_forward and adain::_affine_backward on CPU (adain::affine calls the forward).
//
// Per row, with L = H*W, D = L - 1 (unbiased) or L, x_hat = (x - mean_x) / std_x and the target
// statistics blended with the row's own by alpha (target_mean, target_std):
//   forward   out = target_std * x_hat + target_mean;
//   backward  with sum_g = sum(g), sum_g_xhat = sum(g * x_hat) and k = target_std / std_x,
//             grad_x = k * g + ((1 - alpha) - k) * (sum_g_xhat / D * x_hat + sum_g / L),
//             grad_mean = alpha * sum_g, grad_std = alpha * sum_g_xhat.
// Both as per-row coefficients from csrc/row_math.h. With an activation (the epilogue), out =
// act(target_std * x_hat + target_mean), and the backward first replaces g by act'(y) * g, y
// recomputed from x with the forward's coefficients (row_math.h's activation_grad).
#include <torch/library.h>

#include <cmath>

#include "cpu/kernels.h"
#include "cpu/row_kernels.h"

namespace adain::cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_forward(
    const at::Tensor& x_in, const at::Tensor& mean, const at::Tensor& std, double alpha,
    double eps, bool unbiased, c10::string_view activation, double negative_slope) {
  check_affine(x_in, mean, std, unbiased);
  check_eps(eps);
  check_alpha(alpha);
  check_activation(activation, negative_slope);
  auto [x, layout] = canonical_layout(x_in);
  const auto acc = acc_dtype(x.scalar_type());
  at::Tensor out = empty_output(x, layout);
  at::Tensor mean_x = at::empty({x.size(0), x.size(1)}, x.options().dtype(acc));
  at::Tensor std_x = at::empty_like(mean_x);
  if (out.numel() == 0) return {shaped_like(out, x_in), mean_x, std_x};
  const Geometry geo = geometry_of(x, layout);
  // The given target statistics (before the blend), flat in the accumulation dtype.
  const at::Tensor mean_t_acc = flat_stat(mean, acc), std_t_acc = flat_stat(std, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adain_affine_forward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const acc_t a_ = static_cast<acc_t>(alpha), eps_ = static_cast<acc_t>(eps);
    const Epilogue<acc_t> epilogue = epilogue_of<acc_t>(activation, negative_slope);
    const acc_t* mean_t = mean_t_acc.const_data_ptr<acc_t>();
    const acc_t* std_t = std_t_acc.const_data_ptr<acc_t>();
    acc_t* mean_out = mean_x.mutable_data_ptr<acc_t>();
    acc_t* std_out = std_x.mutable_data_ptr<acc_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const auto finish = [&](int64_t row, const WelfordState<acc_t>& s) {
      mean_out[row] = s.mean;
      std_out[row] = std_of(s, eps_, unbiased);
      return affine_forward_coef(s.mean, std_out[row], mean_t[row], std_t[row], a_);
    };
    const int64_t L = geo.L;
    const bool short_rows = for_each_short_row<acc_t>(geo, [&](int64_t row, auto nv) {
      ShortRow<acc_t, decltype(nv)::value> x_row;
      x_row.load(xp + row * L, L);
      x_row.store_map(op + row * L, finish(row, x_row.welford()), nullptr, epilogue);
    });
    if (short_rows) return;
    welford_then_map(geo, xp, finish,
                     [&](int64_t u, int64_t b, int64_t e, const RowCoef<acc_t>* unit_coefs) {
                       map_unit<scalar_t>(geo, u, b, e, op, xp, nullptr, unit_coefs, epilogue);
                     });
  });
  return {shaped_like(out, x_in), mean_x, std_x};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_backward(
    const at::Tensor& grad_out, const at::Tensor& x_in, const at::Tensor& mean_x,
    const at::Tensor& std_x, const at::Tensor& std, double alpha, bool unbiased,
    const std::optional<at::Tensor>& mean, c10::string_view activation, double negative_slope) {
  check_backward_mean(mean, activation, negative_slope);
  auto [x, layout] = canonical_layout(x_in);
  const at::Tensor g = as_rows(grad_out.to(x.scalar_type()), layout);
  const auto acc = acc_dtype(x.scalar_type());
  at::Tensor grad_x = empty_output(x, layout);
  at::Tensor grad_mean = at::empty({x.size(0), x.size(1)}, x.options().dtype(acc));
  at::Tensor grad_std = at::empty_like(grad_mean);
  if (grad_x.numel() == 0) return {shaped_like(grad_x, x_in), grad_mean, grad_std};
  const Geometry geo = geometry_of(x, layout);
  const at::Tensor m = flat_stat(mean_x, acc), sd = flat_stat(std_x, acc);
  const at::Tensor std_t_acc = flat_stat(std, acc);
  // The target mean, needed only to recompute the output before an activation.
  const at::Tensor mean_t_acc = activation != "none" ? flat_stat(*mean, acc) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adain_affine_backward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const acc_t a_ = static_cast<acc_t>(alpha);
    const Epilogue<acc_t> epilogue = epilogue_of<acc_t>(activation, negative_slope);
    const bool has_act = epilogue.kind != Activation::None;
    const acc_t* mp = m.const_data_ptr<acc_t>();
    const acc_t* sdp = sd.const_data_ptr<acc_t>();
    const acc_t* std_t = std_t_acc.const_data_ptr<acc_t>();
    const acc_t* mean_t = has_act ? mean_t_acc.const_data_ptr<acc_t>() : nullptr;
    // The forward's coefficients of a row: the same call the forward made, so y is bitwise its y.
    const auto forward_coef = [&](int64_t row) {
      return affine_forward_coef(mp[row], sdp[row], mean_t[row], std_t[row], a_);
    };
    acc_t* gmean = grad_mean.mutable_data_ptr<acc_t>();
    acc_t* gstd = grad_std.mutable_data_ptr<acc_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* out = grad_x.mutable_data_ptr<scalar_t>();
    const auto finish = [&](int64_t row, const GradSums<acc_t>& s) {
      const AffineGrads<acc_t> grads =
          affine_backward_coef(s, mp[row], sdp[row], std_t[row], a_, geo.L, unbiased);
      gmean[row] = grads.grad_mean_t;
      gstd[row] = grads.grad_std_t;
      return grads.grad_x;
    };
    const int64_t L = geo.L;
    const bool short_rows = for_each_short_row<acc_t>(geo, [&](int64_t row, auto nv) {
      ShortRow<acc_t, decltype(nv)::value> x_row, g_row;
      x_row.load(xp + row * L, L);
      g_row.load(gp + row * L, L);
      if (has_act) g_row.activation_grad(x_row, forward_coef(row), epilogue);
      x_row.store_map(out + row * L, finish(row, g_row.grad_sums(x_row, mp[row])), &g_row);
    });
    if (short_rows) return;
    // run(act) with the epilogue's backward for unit u (null without an activation): its rows'
    // forward coefficients, on the stack for a contiguous row (no allocation per row), in a
    // vector for a channels_last image's C rows.
    const int64_t rpu = rows_per_unit(geo);
    const auto with_act = [&](int64_t u, auto run) {
      if (!has_act) return run(nullptr);
      if (rpu == 1) {
        const RowCoef<acc_t> fwd = forward_coef(u);
        const ActGrad<acc_t> act{epilogue, &fwd};
        return run(&act);
      }
      std::vector<RowCoef<acc_t>> fwd(rpu);
      for (int64_t r = 0; r < rpu; ++r) fwd[r] = forward_coef(u * rpu + r);
      const ActGrad<acc_t> act{epilogue, fwd.data()};
      run(&act);
    };
    reduce_then_map<GradSums<acc_t>, RowCoef<acc_t>>(
        geo,
        [&](int64_t u, int64_t b, int64_t e, GradSums<acc_t>* sums) {
          with_act(u, [&](const ActGrad<acc_t>* act) {
            grad_sums_unit(geo, gp, xp, mp, u, b, e, sums, act);
          });
        },
        [](const GradSums<acc_t>& a, const GradSums<acc_t>& b) { return grad_sums_merge(a, b); },
        finish,
        [&](int64_t u, int64_t b, int64_t e, const RowCoef<acc_t>* unit_coefs) {
          with_act(u, [&](const ActGrad<acc_t>* act) {
            map_unit<scalar_t>(geo, u, b, e, out, xp, gp, unit_coefs, {}, act);
          });
        });
  });
  return {shaped_like(grad_x, x_in), grad_mean, grad_std};
}

}  // namespace adain::cpu

TORCH_LIBRARY_IMPL(adain, CPU, m) {
  m.impl("_affine_forward", &adain::cpu::affine_forward);
  m.impl("_affine_backward", &adain::cpu::affine_backward);
}
