// adain::mean_std and adain::_mean_std_backward on CPU.
#include <torch/library.h>

#include <cmath>

#include "cpu/kernels.h"
#include "cpu/row_kernels.h"

namespace adain::cpu {

std::tuple<at::Tensor, at::Tensor> row_mean_std(const at::Tensor& x_in, double eps, bool unbiased) {
  auto [x, layout] = canonical_layout(x_in);
  const auto acc = acc_dtype(x.scalar_type());
  at::Tensor mean = at::empty({x.size(0), x.size(1)}, x.options().dtype(acc));
  at::Tensor std = at::empty_like(mean);
  if (mean.numel() == 0) return {mean, std};
  const Geometry geo = geometry_of(x, layout);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adain_mean_std_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    acc_t* mean_out = mean.data_ptr<acc_t>();
    acc_t* std_out = std.data_ptr<acc_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const auto finish = [&](int64_t row, const WelfordState<acc_t>& s) {
      mean_out[row] = s.mean;
      std_out[row] = std_of(s, static_cast<acc_t>(eps), unbiased);
      return RowCoef<acc_t>{};  // statistics only: no map
    };
    const int64_t L = geo.L;
    const bool short_rows = for_each_short_row<acc_t>(geo, [&](int64_t row, auto nv) {
      ShortRow<acc_t, decltype(nv)::value> x_row;
      x_row.load(xp + row * L, L);
      finish(row, x_row.welford());
    });
    if (!short_rows) welford_then_map(geo, xp, finish, [](int64_t, int64_t, int64_t, const RowCoef<acc_t>*) {});
  });
  return {mean, std};
}

std::tuple<at::Tensor, at::Tensor> mean_std(const at::Tensor& x, double eps, bool unbiased) {
  check_features(x, "x", unbiased);
  check_eps(eps);
  auto [mean, std] = row_mean_std(x, eps, unbiased);
  const auto shape = stat_shape_of(x);
  return {mean.to(x.scalar_type()).view(shape), std.to(x.scalar_type()).view(shape)};
}

// grad_x = grad_mean / L + grad_std * (x - mean) / (D * std): one map per row, with the
// coefficients of mean_std_backward_coef.
at::Tensor mean_std_backward(const at::Tensor& grad_mean, const at::Tensor& grad_std,
                             const at::Tensor& x_in, const at::Tensor& mean, const at::Tensor& std,
                             bool unbiased) {
  auto [x, layout] = canonical_layout(x_in);
  at::Tensor grad_x = empty_output(x, layout);
  if (grad_x.numel() == 0) return shaped_like(grad_x, x_in);
  const Geometry geo = geometry_of(x, layout);
  const auto acc = acc_dtype(x.scalar_type());
  const at::Tensor gm = flat_stat(grad_mean, acc), gs = flat_stat(grad_std, acc);
  const at::Tensor m = flat_stat(mean, acc), sd = flat_stat(std, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adain_mean_std_backward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const int64_t rpu = rows_per_unit(geo);
    const acc_t *gsp = gs.const_data_ptr<acc_t>(), *gmp = gm.const_data_ptr<acc_t>();
    const acc_t *mp = m.const_data_ptr<acc_t>(), *sdp = sd.const_data_ptr<acc_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* out = grad_x.mutable_data_ptr<scalar_t>();
    const int64_t L = geo.L;
    const bool short_rows = for_each_short_row<acc_t>(geo, [&](int64_t row, auto nv) {
      ShortRow<acc_t, decltype(nv)::value> x_row;
      x_row.load(xp + row * L, L);
      x_row.store_map(out + row * L,
                      mean_std_backward_coef(gmp[row], gsp[row], mp[row], sdp[row], L, unbiased),
                      nullptr);
    });
    if (short_rows) return;
    // Each unit's coefficients where its map runs (a segment of a split unit recomputes them):
    // no (N*C)-row array to allocate per call.
    map_units(geo, [&](int64_t u, int64_t b, int64_t e) {
      RowCoef<acc_t> one;
      std::vector<RowCoef<acc_t>> many(rpu > 1 ? rpu : 0);
      RowCoef<acc_t>* unit_coefs = rpu > 1 ? many.data() : &one;
      for (int64_t r = 0, row = u * rpu; r < rpu; ++r, ++row) {
        unit_coefs[r] = mean_std_backward_coef(gmp[row], gsp[row], mp[row], sdp[row], geo.L, unbiased);
      }
      map_unit<scalar_t>(geo, u, b, e, out, xp, nullptr, unit_coefs);
    });
  });
  return shaped_like(grad_x, x_in);
}

std::vector<int64_t> take_segment_log(bool record) {
  SegmentLog& log = segment_log();
  std::lock_guard<std::mutex> lock(log.mutex);
  std::vector<int64_t> taken;
  taken.swap(log.entries);
  log.recording.store(record);
  return taken;
}

int64_t stream_bytes_hook(int64_t bytes) { return set_stream_bytes(bytes); }

}  // namespace adain::cpu

TORCH_LIBRARY_IMPL(adain, CPU, m) {
  m.impl("mean_std", &adain::cpu::mean_std);
  m.impl("_mean_std_backward", &adain::cpu::mean_std_backward);
}
