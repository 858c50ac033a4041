// adain::_fused_forward on CUDA: style statistics, then the affine forward with them as targets.
// When both tensors are contiguous and their rows are not split, that is one launch
// (RowMode::Fused): each row group reduces its style row, then its content row (kept in shared
// memory), then writes the output. Otherwise: row_statistics(style) then affine_forward(content).
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "checks.h"
#include "cuda/ops.h"
#include "cuda/launch.cuh"

namespace adain {
namespace cuda {
namespace {

using FusedResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

FusedResult fused_forward_cuda(const at::Tensor& content_in, const at::Tensor& style_in,
                               double alpha, double eps, bool unbiased) {
  check_pair(content_in, style_in, unbiased);
  check_eps(eps);
  check_alpha(alpha);
  const c10::cuda::CUDAGuard guard(content_in.device());
  at::Tensor content;
  Layout content_layout;
  std::tie(content, content_layout) = canonical_layout(content_in);
  at::Tensor style;
  Layout style_layout;
  std::tie(style, style_layout) = canonical_layout(style_in);
  const int64_t N = content.size(0), C = content.size(1), R = N * C;
  const int64_t L = content.size(2) * content.size(3);
  const int64_t L_style = style.size(2) * style.size(3);
  const Device dev = device_info();
  const bool one_launch = R > 0 && content_layout == Layout::Contiguous &&
                          style_layout == Layout::Contiguous && !use_split(R, L, dev) &&
                          !use_split(R, L_style, dev);
  if (!one_launch) {
    auto [style_mean, style_std] = row_statistics(style, eps, unbiased);
    auto [out, content_mean, content_std] =
        affine_forward(content, style_mean, style_std, alpha, eps, unbiased, "none", 0.01);
    return {shaped_like(out, content_in), content_mean, content_std, style_mean, style_std};
  }
  content = aligned16(content, at::MemoryFormat::Contiguous);
  style = aligned16(style, at::MemoryFormat::Contiguous);
  const auto acc_options = content.options().dtype(acc_dtype(content.scalar_type()));
  at::Tensor out = at::empty_like(content, at::MemoryFormat::Contiguous);
  at::Tensor content_mean = at::empty({N, C}, acc_options);
  at::Tensor content_std = at::empty({N, C}, acc_options);
  at::Tensor style_mean = at::empty({N, C}, acc_options);
  at::Tensor style_std = at::empty({N, C}, acc_options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, content.scalar_type(),
                                  "adain_fused_forward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    constexpr int VEC = vec_width<scalar_t>();
    Params<scalar_t, acc_t> p;
    p.x = content.data_ptr<scalar_t>();
    p.style = style.data_ptr<scalar_t>();
    p.out = out.data_ptr<scalar_t>();
    p.d.rows = R;
    p.d.L = L;
    p.d.L_style = L_style;
    p.d.segment_len = L;
    p.d.alpha = static_cast<acc_t>(alpha);
    p.d.eps = static_cast<acc_t>(eps);
    p.d.unbiased = unbiased;
    p.d.mean_out = content_mean.data_ptr<acc_t>();
    p.d.std_out = content_std.data_ptr<acc_t>();
    p.d.style_mean_out = style_mean.data_ptr<acc_t>();
    p.d.style_std_out = style_std.data_ptr<acc_t>();
    // Threads per row for the longer of the two rows; the cache holds content slots only.
    RowsLaunch geometry =
        plan_rows<scalar_t>(R, std::max(L, L_style), L % VEC == 0, /*cached_rows=*/1, dev);
    const int64_t content_slots = L % VEC == 0 ? L / VEC : ceil_div(L + VEC - 1, VEC);
    geometry.row_slots = content_slots;
    if (geometry.cache_slots > content_slots) {
      geometry.cache_slots = content_slots;
      geometry.smem = static_cast<size_t>(geometry.block / geometry.group) * content_slots *
                      sizeof(Vec<scalar_t, VEC>);
    }
    launch_rows<scalar_t, acc_t, RowMode::Fused>(p, geometry);
    record_rows_launch(geometry, /*cached_rows=*/1, 1, 1);
  });
  return {shaped_like(out, content_in), content_mean, content_std, style_mean, style_std};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(adain, CUDA, m) {
  m.impl("_fused_forward", TORCH_FN(cuda::fused_forward_cuda));
}

}  // namespace adain
