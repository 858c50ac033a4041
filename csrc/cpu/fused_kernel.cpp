// adain::_fused_forward (behind adain::fused) and adain::_fused_backward on CPU.
//
// When content and style share a layout and have enough rows (or images) to keep every thread
// busy, each task handles whole rows end to end in one parallel region: the style row's statistics,
// the content row's statistics and output (backward: the content row's gradient sums, its gradient,
// then the style row's gradient from the two sums just computed), each row read while it is in
// cache and no intermediate (N, C) tensors. Otherwise the ops compose the affine and mean_std
// kernels, which split long rows across threads.
#include <torch/library.h>

#include "cpu/kernels.h"
#include "cpu/row_kernels.h"

namespace adain::cpu {
namespace {

// Both inputs in one layout, and no row split: the one-region paths apply.
bool one_region(const Geometry& content, const Geometry& style) {
  return content.layout == style.layout && content.segments() == 1 && style.segments() == 1;
}

int64_t grain_of(const Geometry& content, const Geometry& style) {
  const int64_t per_unit = content.unit_elements() + style.unit_elements();
  return std::max<int64_t>(1, kMinTaskElements / std::max<int64_t>(1, per_unit));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_forward(
    const at::Tensor& content_in, const at::Tensor& style_in, double alpha, double eps,
    bool unbiased) {
  check_pair(content_in, style_in, unbiased);
  check_eps(eps);
  check_alpha(alpha);
  auto [content, c_layout] = canonical_layout(content_in);
  auto [style, s_layout] = canonical_layout(style_in);
  const Geometry content_geo = geometry_of(content, c_layout);
  const Geometry style_geo = geometry_of(style, s_layout);
  if (content.numel() == 0 || !one_region(content_geo, style_geo)) {
    auto [style_mean, style_std] = row_mean_std(style, eps, unbiased);
    auto [out, content_mean, content_std] =
        affine_forward(content, style_mean, style_std, alpha, eps, unbiased);
    return {shaped_like(out, content_in), content_mean, content_std, style_mean, style_std};
  }
  const auto acc = acc_dtype(content.scalar_type());
  at::Tensor out = empty_output(content, c_layout);
  at::Tensor c_mean = at::empty({content_geo.N, content_geo.C}, content.options().dtype(acc));
  at::Tensor c_std = at::empty_like(c_mean), s_mean = at::empty_like(c_mean);
  at::Tensor s_std = at::empty_like(c_mean);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, content.scalar_type(), "adain_fused_forward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const acc_t a_ = static_cast<acc_t>(alpha), eps_ = static_cast<acc_t>(eps);
    const scalar_t* cp = content.const_data_ptr<scalar_t>();
    const scalar_t* sp = style.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    acc_t *cm = c_mean.mutable_data_ptr<acc_t>(), *cs = c_std.mutable_data_ptr<acc_t>();
    acc_t *sm = s_mean.mutable_data_ptr<acc_t>(), *ss = s_std.mutable_data_ptr<acc_t>();
    const int64_t L = content_geo.L;
    if (style_geo.L == L && for_each_short_row<acc_t>(content_geo, [&](int64_t row, auto nv) {
          ShortRow<acc_t, decltype(nv)::value> style_row, content_row;
          style_row.load(sp + row * L, L);
          const WelfordState<acc_t> s_state = style_row.welford();
          const acc_t s_std = std_of(s_state, eps_, unbiased);
          content_row.load(cp + row * L, L);
          const WelfordState<acc_t> c_state = content_row.welford();
          const acc_t c_std = std_of(c_state, eps_, unbiased);
          content_row.store_map(op + row * L,
                                affine_forward_coef(c_state.mean, c_std, s_state.mean, s_std, a_),
                                nullptr);
          // The statistics are stored last: a float store could alias the row's vectors.
          sm[row] = s_state.mean;
          ss[row] = s_std;
          cm[row] = c_state.mean;
          cs[row] = c_std;
        })) {
      return;
    }
    log_segments(1);
    const int64_t rpu = rows_per_unit(content_geo);
    const int64_t grain = grain_of(content_geo, style_geo);
    at::parallel_for(0, content_geo.units(), grain, [&](int64_t begin, int64_t end) {
      std::vector<WelfordState<acc_t>> states(rpu);
      std::vector<RowCoef<acc_t>> coefs(rpu);  // this unit's rows
      for (int64_t u = begin; u < end; ++u) {
        std::fill(states.begin(), states.end(), WelfordState<acc_t>{});
        welford_unit(style_geo, sp, u, 0, style_geo.L, states.data());
        for (int64_t r = 0, row = u * rpu; r < rpu; ++r, ++row) {
          sm[row] = states[r].mean;
          ss[row] = std_of(states[r], eps_, unbiased);
        }
        std::fill(states.begin(), states.end(), WelfordState<acc_t>{});
        welford_unit(content_geo, cp, u, 0, content_geo.L, states.data());
        for (int64_t r = 0, row = u * rpu; r < rpu; ++r, ++row) {
          cm[row] = states[r].mean;
          cs[row] = std_of(states[r], eps_, unbiased);
          coefs[r] = affine_forward_coef(cm[row], cs[row], sm[row], ss[row], a_);
        }
        map_unit<scalar_t>(content_geo, u, 0, content_geo.L, op, cp, nullptr, coefs.data());
      }
      stream_fence(content_geo.stream);
    });
  });
  return {shaped_like(out, content_in), c_mean, c_std, s_mean, s_std};
}

std::tuple<at::Tensor, at::Tensor> fused_backward(
    const at::Tensor& grad_out, const at::Tensor& content_in, const at::Tensor& style_in,
    const at::Tensor& content_mean, const at::Tensor& content_std, const at::Tensor& style_mean,
    const at::Tensor& style_std, double alpha, bool unbiased) {
  auto [content, c_layout] = canonical_layout(content_in);
  auto [style, s_layout] = canonical_layout(style_in);
  const Geometry content_geo = geometry_of(content, c_layout);
  const Geometry style_geo = geometry_of(style, s_layout);
  if (content.numel() == 0 || !one_region(content_geo, style_geo)) {
    auto [grad_content, grad_mean, grad_std] =
        affine_backward(grad_out, content, content_mean, content_std, style_std, alpha, unbiased);
    return {shaped_like(grad_content, content_in),
            shaped_like(mean_std_backward(grad_mean, grad_std, style, style_mean, style_std,
                                          unbiased),
                        style_in)};
  }
  const at::Tensor g = as_rows(grad_out.to(content.scalar_type()), c_layout);
  const auto acc = acc_dtype(content.scalar_type());
  at::Tensor grad_content = empty_output(content, c_layout);
  at::Tensor grad_style = empty_output(style, s_layout);
  const at::Tensor cm = flat_stat(content_mean, acc), cs = flat_stat(content_std, acc);
  const at::Tensor sm = flat_stat(style_mean, acc), ss = flat_stat(style_std, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, content.scalar_type(), "adain_fused_backward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const acc_t a_ = static_cast<acc_t>(alpha);
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* cp = content.const_data_ptr<scalar_t>();
    const scalar_t* sp = style.const_data_ptr<scalar_t>();
    scalar_t* gcp = grad_content.mutable_data_ptr<scalar_t>();
    scalar_t* gsp = grad_style.mutable_data_ptr<scalar_t>();
    const acc_t *cmp = cm.const_data_ptr<acc_t>(), *csp = cs.const_data_ptr<acc_t>();
    const acc_t *smp = sm.const_data_ptr<acc_t>(), *ssp = ss.const_data_ptr<acc_t>();
    const int64_t L = content_geo.L;
    if (style_geo.L == L && for_each_short_row<acc_t>(content_geo, [&](int64_t row, auto nv) {
          ShortRow<acc_t, decltype(nv)::value> content_row, g_row;
          content_row.load(cp + row * L, L);
          g_row.load(gp + row * L, L);
          const AffineGrads<acc_t> grads = affine_backward_coef(
              g_row.grad_sums(content_row, cmp[row]), cmp[row], csp[row], ssp[row], a_, L, unbiased);
          content_row.store_map(gcp + row * L, grads.grad_x, &g_row);
          ShortRow<acc_t, decltype(nv)::value> style_row;
          style_row.load(sp + row * L, L);
          style_row.store_map(gsp + row * L,
                              mean_std_backward_coef(grads.grad_mean_t, grads.grad_std_t, smp[row],
                                                     ssp[row], L, unbiased),
                              nullptr);
        })) {
      return;
    }
    log_segments(1);
    const int64_t rpu = rows_per_unit(content_geo);
    const int64_t grain = grain_of(content_geo, style_geo);
    at::parallel_for(0, content_geo.units(), grain, [&](int64_t begin, int64_t end) {
      std::vector<GradSums<acc_t>> sums(rpu);
      std::vector<RowCoef<acc_t>> content_coefs(rpu), style_coefs(rpu);  // this unit's rows
      for (int64_t u = begin; u < end; ++u) {
        std::fill(sums.begin(), sums.end(), GradSums<acc_t>{});
        grad_sums_unit(content_geo, gp, cp, cmp, u, 0, content_geo.L, sums.data());
        for (int64_t r = 0, row = u * rpu; r < rpu; ++r, ++row) {
          const AffineGrads<acc_t> grads = affine_backward_coef(
              sums[r], cmp[row], csp[row], ssp[row], a_, content_geo.L, unbiased);
          content_coefs[r] = grads.grad_x;
          style_coefs[r] = mean_std_backward_coef(grads.grad_mean_t, grads.grad_std_t, smp[row],
                                                    ssp[row], style_geo.L, unbiased);
        }
        map_unit<scalar_t>(content_geo, u, 0, content_geo.L, gcp, cp, gp, content_coefs.data());
        map_unit<scalar_t>(style_geo, u, 0, style_geo.L, gsp, sp, nullptr, style_coefs.data());
      }
      stream_fence(content_geo.stream || style_geo.stream);
    });
  });
  return {shaped_like(grad_content, content_in), shaped_like(grad_style, style_in)};
}

}  // namespace adain::cpu

TORCH_LIBRARY_IMPL(adain, CPU, m) {
  m.impl("_fused_forward", &adain::cpu::fused_forward);
  m.impl("_fused_backward", &adain::cpu::fused_backward);
}
