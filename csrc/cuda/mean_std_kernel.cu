// adain::mean_std and adain::_mean_std_backward on CUDA. Paths and geometry: launch.cuh.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/ops.h"
#include "cuda/launch.cuh"

namespace adain {
namespace cuda {

std::tuple<at::Tensor, at::Tensor> row_statistics(const at::Tensor& x_in, double eps,
                                                  bool unbiased) {
  at::Tensor x;
  Layout layout;
  std::tie(x, layout) = canonical_layout(x_in);
  x = aligned16(x, memory_format_of(layout));
  const int64_t N = x.size(0), C = x.size(1), R = N * C;
  const auto acc_options = x.options().dtype(acc_dtype(x.scalar_type()));
  at::Tensor mean = at::empty({N, C}, acc_options);
  at::Tensor std = at::empty({N, C}, acc_options);
  if (R == 0) return {mean, std};
  const int64_t L = x.size(2) * x.size(3);
  const Device dev = device_info();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adain_mean_std_cuda",
                                  [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    Params<scalar_t, acc_t> p;
    p.x = x.data_ptr<scalar_t>();
    p.d.rows = R;
    p.d.L = L;
    p.d.segment_len = L;
    p.d.eps = static_cast<acc_t>(eps);
    p.d.unbiased = unbiased;
    p.d.mean_out = mean.data_ptr<acc_t>();
    p.d.std_out = std.data_ptr<acc_t>();
    run_row_op<RowMode::Stats>(p, layout, N, C, acc_options, dev);
  });
  return {mean, std};
}

namespace {

std::tuple<at::Tensor, at::Tensor> mean_std_cuda(const at::Tensor& x, double eps, bool unbiased) {
  check_features(x, "x", unbiased);
  check_eps(eps);
  const c10::cuda::CUDAGuard guard(x.device());
  auto [mean, std] = row_statistics(x, eps, unbiased);
  const auto shape = stat_shape_of(x);
  // One cast at the store: the statistics were accumulated (and are stored) in acc dtype.
  return {mean.view(shape).to(x.scalar_type()), std.view(shape).to(x.scalar_type())};
}

// grad_x = grad_mean / L + grad_std * (x - mean) / (D * std) (mean_std_backward_coef in
// row_math.h), in x's layout and dtype.
at::Tensor mean_std_backward_cuda(const at::Tensor& grad_mean, const at::Tensor& grad_std,
                                  const at::Tensor& x_in, const at::Tensor& mean,
                                  const at::Tensor& std, bool unbiased) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x;
  Layout layout;
  std::tie(x, layout) = canonical_layout(x_in);
  const auto format = memory_format_of(layout);
  x = aligned16(x, format);
  at::Tensor grad_x = at::empty_like(x, format);
  const int64_t N = x.size(0), C = x.size(1), R = N * C;
  if (R == 0) return shaped_like(grad_x, x_in);
  const int64_t L = x.size(2) * x.size(3);
  const auto acc = acc_dtype(x.scalar_type());
  const auto acc_options = x.options().dtype(acc);
  const at::Tensor gm = flat_stat(grad_mean, acc), gs = flat_stat(grad_std, acc);
  const at::Tensor mean_f = flat_stat(mean, acc), std_f = flat_stat(std, acc);
  const Device dev = device_info();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "adain_mean_std_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    constexpr int VEC = vec_width<scalar_t>();
    Params<scalar_t, acc_t> p;
    p.x = x.data_ptr<scalar_t>();
    p.out = grad_x.data_ptr<scalar_t>();
    p.d.rows = R;
    p.d.L = L;
    p.d.segment_len = L;
    p.d.unbiased = unbiased;
    p.d.grad_mean_in = gm.data_ptr<acc_t>();
    p.d.grad_std_in = gs.data_ptr<acc_t>();
    p.d.mean_x = mean_f.data_ptr<acc_t>();
    p.d.std_x = std_f.data_ptr<acc_t>();
    const at::Tensor coef = attach_coef(p.d, acc_options);
    launch_finalize<acc_t, RowMode::MeanStdBackward>(p.d, dev);
    if (layout == Layout::ChannelsLast) {
      const int grid = plan_channels_last(p, N, C, L, dev);
      launch_cl_apply<scalar_t, acc_t, /*kHasG=*/false>(p, grid);
      record_launch(LaunchPath::ChannelsLast, 2, grid, kClBlock, 0, p.d.segments);
    } else {
      if (use_split(R, L, dev)) {
        choose_segments<scalar_t>(R, L, dev, p.d.segments, p.d.segment_len);
      }
      const RowsLaunch geometry =
          plan_rows<scalar_t>(R * p.d.segments, p.d.segment_len, L % VEC == 0, 0, dev);
      launch_rows<scalar_t, acc_t, RowMode::Apply>(p, geometry);
      record_rows_launch(geometry, 0, 2, p.d.segments);
    }
  });
  return shaped_like(grad_x, x_in);
}

}  // namespace
}  // namespace cuda

// Debug hook for tests, no tensor arguments: [path, launches, grid, block, smem, segments] of the
// last CUDA op (LaunchPath in launch.cuh; adain_ext._extension.last_cuda_launch decodes it, naming
// the segments per row "chunks").
TORCH_LIBRARY_FRAGMENT(adain, m) {
  m.def("_cuda_last_launch() -> int[]", &cuda::last_launch);
}

TORCH_LIBRARY_IMPL(adain, CUDA, m) {
  m.impl("mean_std", TORCH_FN(cuda::mean_std_cuda));
  m.impl("_mean_std_backward", TORCH_FN(cuda::mean_std_backward_cuda));
}

}  // namespace adain
