// adain::_affine_forward and adain::_affine_backward on CPU (adain::affine calls the forward).
//
// Per row, with L = H*W, D = L - 1 (unbiased) or L, x_hat = (x - mean_x) / std_x and target
// statistics blended with the row's own by alpha (T = alpha * target + (1 - alpha) * own):
//   forward   out = T_std * x_hat + T_mean, applied as (T_std / std_x) * (x - mean_x) + T_mean;
//   backward  with sg = sum(g), sgx = sum(g * x_hat) and k = T_std / std_x,
//             grad_x = k * g + ((1 - alpha) - k) * (sgx / D * x_hat + sg / L),
//             grad_mean = alpha * sg, grad_std = alpha * sgx.
#include <torch/library.h>

#include <cmath>

#include "cpu/kernels.h"
#include "cpu/row_kernels.h"

namespace adain::cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_forward(const at::Tensor& x_in,
                                                              const at::Tensor& mean,
                                                              const at::Tensor& std, double alpha,
                                                              double eps, bool unbiased) {
  check_affine(x_in, mean, std, unbiased);
  check_eps(eps);
  auto [x, layout] = canonical_layout(x_in);
  const auto acc = acc_dtype(x.scalar_type());
  at::Tensor out = empty_output(x, layout);
  at::Tensor x_mean = at::empty({x.size(0), x.size(1)}, x.options().dtype(acc));
  at::Tensor x_std = at::empty_like(x_mean);
  if (out.numel() == 0) return {shaped_like(out, x_in), x_mean, x_std};
  const Geometry geo = geometry_of(x, layout);
  const at::Tensor target_mean = flat_stat(mean, acc), target_std = flat_stat(std, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adain_affine_forward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const acc_t a_ = static_cast<acc_t>(alpha), eps_ = static_cast<acc_t>(eps);
    const acc_t* tm = target_mean.const_data_ptr<acc_t>();
    const acc_t* ts = target_std.const_data_ptr<acc_t>();
    acc_t* mean_out = x_mean.mutable_data_ptr<acc_t>();
    acc_t* std_out = x_std.mutable_data_ptr<acc_t>();
    std::vector<acc_t> scale(geo.N * geo.C), shift(geo.N * geo.C);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    welford_then_map(
        geo, xp,
        [&](int64_t row, const WelfordState<acc_t>& s) {
          mean_out[row] = s.mean;
          std_out[row] = std_of(s, eps_, unbiased);
          const auto c = forward_coef(s.mean, std_out[row], tm[row], ts[row], a_);
          scale[row] = c.scale;
          shift[row] = c.shift;
        },
        [&](int64_t u, int64_t b, int64_t e) {
          map_unit<scalar_t>(geo, u, b, e, op, xp, nullptr, nullptr, scale.data(), shift.data(),
                             mean_out);
        });
  });
  return {shaped_like(out, x_in), x_mean, x_std};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> affine_backward(
    const at::Tensor& grad_out, const at::Tensor& x_in, const at::Tensor& x_mean,
    const at::Tensor& x_std, const at::Tensor& std, double alpha, bool unbiased) {
  auto [x, layout] = canonical_layout(x_in);
  const at::Tensor g = as_rows(grad_out.to(x.scalar_type()), layout);
  const auto acc = acc_dtype(x.scalar_type());
  at::Tensor grad_x = empty_output(x, layout);
  at::Tensor grad_mean = at::empty({x.size(0), x.size(1)}, x.options().dtype(acc));
  at::Tensor grad_std = at::empty_like(grad_mean);
  if (grad_x.numel() == 0) return {shaped_like(grad_x, x_in), grad_mean, grad_std};
  const Geometry geo = geometry_of(x, layout);
  const at::Tensor m = flat_stat(x_mean, acc), sd = flat_stat(x_std, acc);
  const at::Tensor ts = flat_stat(std, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adain_affine_backward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const acc_t a_ = static_cast<acc_t>(alpha);
    const acc_t L = static_cast<acc_t>(geo.L), D = variance_divisor<acc_t>(geo.L, unbiased);
    const acc_t* mp = m.const_data_ptr<acc_t>();
    const acc_t* sdp = sd.const_data_ptr<acc_t>();
    const acc_t* tsp = ts.const_data_ptr<acc_t>();
    acc_t* gmean = grad_mean.mutable_data_ptr<acc_t>();
    acc_t* gstd = grad_std.mutable_data_ptr<acc_t>();
    const int64_t rows = geo.N * geo.C;
    std::vector<acc_t> k(rows), p(rows), q(rows);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* out = grad_x.mutable_data_ptr<scalar_t>();
    reduce_then_map<GradSums<acc_t>>(
        geo,
        [&](int64_t u, int64_t b, int64_t e, GradSums<acc_t>* sums) {
          grad_sums_unit(geo, gp, xp, mp, u, b, e, sums);
        },
        [](const GradSums<acc_t>& a, const GradSums<acc_t>& b) { return grad_sums_merge(a, b); },
        [&](int64_t row, const GradSums<acc_t>& s) {
          const auto c = backward_coef(s, sdp[row], tsp[row], a_, L, D);
          k[row] = c.k;
          p[row] = c.p;
          q[row] = c.q;
          gmean[row] = c.grad_mean;
          gstd[row] = c.grad_std;
        },
        [&](int64_t u, int64_t b, int64_t e) {
          map_unit<scalar_t>(geo, u, b, e, out, xp, gp, k.data(), p.data(), q.data(), mp);
        });
  });
  return {shaped_like(grad_x, x_in), grad_mean, grad_std};
}

}  // namespace adain::cpu

TORCH_LIBRARY_IMPL(adain, CPU, m) {
  m.impl("_affine_forward", &adain::cpu::affine_forward);
  m.impl("_affine_backward", &adain::cpu::affine_backward);
}
