// adain::_fused_forward on CPU (adain::fused calls it): the style's statistics, then the content
// renormalised to them with alpha blending. On CPU the two passes cost what one would: the style
// is read once, the content once per row while it is in cache.
#include <torch/library.h>

#include "checks.h"
#include "cpu/kernels.h"

namespace adain::cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_forward(
    const at::Tensor& content, const at::Tensor& style, double alpha, double eps, bool unbiased) {
  check_pair(content, style, unbiased);
  check_eps(eps);
  auto [style_mean, style_std] = row_mean_std(style, eps, unbiased);
  auto [out, content_mean, content_std] =
      affine_forward(content, style_mean, style_std, alpha, eps, unbiased);
  return {out, content_mean, content_std, style_mean, style_std};
}

}  // namespace adain::cpu

TORCH_LIBRARY_IMPL(adain, CPU, m) { m.impl("_fused_forward", &adain::cpu::fused_forward); }
