// Input checks shared by the CPU and CUDA kernels. Messages match adain_ext/_validation.py word
// for word, so users see the same error whichever backend runs (tests/test_errors.py checks).
#pragma once

#include <ATen/ATen.h>

namespace adain {

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

inline void check_features(const at::Tensor& x, const char* name, bool unbiased) {
  TORCH_CHECK_VALUE(x.dim() == 4, "adain: ", name, " must be a 4-D (N, C, H, W) tensor, got ",
                    x.dim(), "-D with shape ", x.sizes());
  TORCH_CHECK_TYPE(is_float_dtype(x.scalar_type()), "adain: ", name,
                   " must be float16, bfloat16, float32 or float64, got ", x.scalar_type());
  if (x.size(0) * x.size(1) == 0) return;  // empty N or C: an empty result
  const int64_t hw = x.size(2) * x.size(3);
  TORCH_CHECK_VALUE(hw > 0, "adain: ", name, " has H*W = 0 (shape ", x.sizes(),
                    "); statistics need at least one element");
  TORCH_CHECK_VALUE(!unbiased || hw >= 2, "adain: ", name, " has H*W = ", hw, " (shape ",
                    x.sizes(), "); unbiased variance needs H*W >= 2 ",
                    "(pass unbiased=False for instance-norm statistics)");
}

inline void check_eps(double eps) {
  TORCH_CHECK_VALUE(eps >= 0, "adain: eps must be >= 0, got ", eps);  // false for NaN too
}

inline void check_pair(const at::Tensor& content, const at::Tensor& style, bool unbiased) {
  check_features(content, "content", unbiased);
  check_features(style, "style", unbiased);
  TORCH_CHECK_VALUE(content.size(0) == style.size(0) && content.size(1) == style.size(1),
                    "adain: style must have the same N and C as content (got ", content.size(0),
                    "x", content.size(1), " and ", style.size(0), "x", style.size(1), ")");
  TORCH_CHECK_TYPE(content.scalar_type() == style.scalar_type(), "adain: style dtype (",
                   style.scalar_type(), ") must match content dtype (", content.scalar_type(), ")");
  TORCH_CHECK_VALUE(content.device() == style.device(), "adain: style is on ", style.device(),
                    " but content is on ", content.device());
}

inline void check_statistic(const at::Tensor& stat, const char* name, const at::Tensor& x) {
  const int64_t N = x.size(0), C = x.size(1);
  const bool ok = (stat.dim() == 2 && stat.size(0) == N && stat.size(1) == C) ||
                  (stat.dim() == 4 && stat.size(0) == N && stat.size(1) == C &&
                   stat.size(2) == 1 && stat.size(3) == 1);
  TORCH_CHECK_VALUE(ok, "adain: ", name, " must have shape (N, C) or (N, C, 1, 1) = (", N, ", ", C,
                    "), got ", stat.sizes());
  TORCH_CHECK_TYPE(is_float_dtype(stat.scalar_type()), "adain: ", name,
                   " must be float16, bfloat16, float32 or float64, got ", stat.scalar_type());
  TORCH_CHECK_VALUE(stat.device() == x.device(), "adain: ", name, " is on ", stat.device(),
                    " but x is on ", x.device());
}

inline void check_affine(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& std,
                         bool unbiased) {
  check_features(x, "x", unbiased);
  check_statistic(mean, "mean", x);
  check_statistic(std, "std", x);
}

// ---- Layout and dtype conventions every kernel follows (mirrored in adain_ext/ops/_common.py).

enum class Layout { Contiguous, ChannelsLast };

// Contiguous and channels_last are kept (contiguous wins when a tensor is both); any other
// strides are made contiguous. Returns the tensor to read and its layout.
// (The CUDA files unpack the pair with std::tie: a lambda capturing structured bindings is C++20,
// and torch 2.11 compiles extensions as C++17, where nvcc warns (#3357) at every dispatch.)
inline std::pair<at::Tensor, Layout> canonical_layout(const at::Tensor& x) {
  if (x.is_contiguous()) return {x, Layout::Contiguous};
  if (x.is_contiguous(at::MemoryFormat::ChannelsLast)) return {x, Layout::ChannelsLast};
  return {x.contiguous(), Layout::Contiguous};
}

inline at::MemoryFormat memory_format_of(Layout layout) {
  return layout == Layout::ChannelsLast ? at::MemoryFormat::ChannelsLast
                                        : at::MemoryFormat::Contiguous;
}

inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Per-(n, c) statistics in, as a contiguous (N*C) tensor of the accumulation dtype.
inline at::Tensor flat_stat(const at::Tensor& stat, at::ScalarType acc) {
  return stat.reshape({-1}).to(acc).contiguous();
}

}  // namespace adain
