// Input checks shared by the CPU and CUDA kernels. Messages match adain_ext/_validation.py word
// for word, so users see the same error whichever backend runs (tests/test_errors.py checks).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "row_math.h"

namespace adain {

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

// Elements per (n, c) row: the product of the trailing dims of a (N, C, *) tensor.
inline int64_t row_length(const at::Tensor& x) {
  int64_t L = 1;
  for (int64_t d = 2; d < x.dim(); ++d) L *= x.size(d);
  return L;
}

inline void check_features(const at::Tensor& x, const char* name, bool unbiased) {
  TORCH_CHECK_VALUE(x.dim() >= 3, "adain: ", name,
                    " must be a (N, C, *) tensor with at least 3 dims, got ", x.dim(),
                    "-D with shape ", x.sizes());
  TORCH_CHECK_TYPE(is_float_dtype(x.scalar_type()), "adain: ", name,
                   " must be float16, bfloat16, float32 or float64, got ", x.scalar_type());
  if (x.size(0) * x.size(1) == 0) return;  // empty N or C: an empty result
  const int64_t L = row_length(x);
  TORCH_CHECK_VALUE(L > 0, "adain: ", name, " has L = 0 elements per (n, c) row (shape ", x.sizes(),
                    "); statistics need at least one element");
  TORCH_CHECK_VALUE(!unbiased || L >= 2, "adain: ", name, " has L = ", L,
                    " element per (n, c) row (shape ", x.sizes(), "); unbiased variance needs L >= 2 ",
                    "(pass unbiased=False for instance-norm statistics)");
}

inline void check_eps(double eps) {
  TORCH_CHECK_VALUE(eps >= 0 && std::isfinite(eps), "adain: eps must be >= 0 and finite, got ",
                    eps);  // false for NaN too
}

// NaN or Inf would make every output NaN without an error.
inline void check_alpha(double alpha) {
  TORCH_CHECK_VALUE(std::isfinite(alpha), "adain: alpha must be a finite number, got ", alpha);
}

// The affine op's output activation by name: "none", "relu" or "leaky_relu" (the names of
// F.relu and F.leaky_relu; negative_slope is leaky_relu's and ignored otherwise).
template <typename acc_t>
Epilogue<acc_t> epilogue_of(c10::string_view activation, double negative_slope) {
  Epilogue<acc_t> e;
  if (activation == "none") return e;
  if (activation == "relu") {
    e.kind = Activation::Relu;
  } else {
    TORCH_CHECK_VALUE(activation == "leaky_relu",
                      "adain: activation must be 'none', 'relu' or 'leaky_relu', got '",
                      std::string(activation), "'");
    e.kind = Activation::LeakyRelu;
  }
  TORCH_CHECK_VALUE(std::isfinite(negative_slope),
                    "adain: negative_slope must be a finite number, got ", negative_slope);
  e.negative_slope = static_cast<acc_t>(negative_slope);
  return e;
}

inline void check_activation(c10::string_view activation, double negative_slope) {
  (void)epilogue_of<double>(activation, negative_slope);
}

// _affine_backward with an activation recomputes the output before it, which needs the target mean.
inline void check_backward_mean(const std::optional<at::Tensor>& mean, c10::string_view activation,
                                double negative_slope) {
  check_activation(activation, negative_slope);
  TORCH_CHECK_VALUE(activation == "none" || (mean.has_value() && mean->defined()),
                    "adain: _affine_backward with activation='", std::string(activation),
                    "' needs the target mean (it recomputes the output before the activation)");
}

// The prologue's inputs (pre = x + noise_weight * noise + bias, then pre_activation):
//   noise        (N, 1, *) or (N, C, *) with x's trailing dims, x's dtype and device;
//   noise_weight one per channel or one in all ((C,), (1, C, 1, ...), (1,) or a scalar tensor),
//                given only with noise (noise without it is added as it is: weight 1);
//   bias         one per channel ((C,) or (1, C, 1, ...)).
inline bool has_prologue(const std::optional<at::Tensor>& noise,
                         const std::optional<at::Tensor>& noise_weight,
                         const std::optional<at::Tensor>& bias, c10::string_view pre_activation) {
  return noise.has_value() || noise_weight.has_value() || bias.has_value() ||
         pre_activation != "none";
}

inline void check_channel_param(const at::Tensor& t, const char* name, const at::Tensor& x,
                                 bool one_allowed) {
  const int64_t C = x.size(1);
  bool ok = t.numel() == C || (one_allowed && t.numel() == 1);
  // (C,), or (1, C, 1, ...) like x: one value per channel wherever it sits.
  if (ok && t.dim() > 1) {
    ok = t.dim() == x.dim() && t.size(0) == 1;
    for (int64_t d = 2; ok && d < t.dim(); ++d) ok = t.size(d) == 1;
  }
  TORCH_CHECK_VALUE(ok, "adain: ", name, " must have one value per channel, (", C, ",) or (1, ", C,
                    ", 1, ...)", one_allowed ? ", or a single value" : "", "; got shape ",
                    t.sizes());
  TORCH_CHECK_TYPE(is_float_dtype(t.scalar_type()), "adain: ", name,
                   " must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), "adain: ", name, " is on ", t.device(),
                    " but x is on ", x.device());
}

inline void check_prologue(const at::Tensor& x, const std::optional<at::Tensor>& noise,
                           const std::optional<at::Tensor>& noise_weight,
                           const std::optional<at::Tensor>& bias, c10::string_view pre_activation,
                           double pre_negative_slope) {
  TORCH_CHECK_VALUE(pre_activation == "none" || pre_activation == "relu" ||
                        pre_activation == "leaky_relu",
                    "adain: pre_activation must be 'none', 'relu' or 'leaky_relu', got '",
                    std::string(pre_activation), "'");
  TORCH_CHECK_VALUE(pre_activation == "none" || std::isfinite(pre_negative_slope),
                    "adain: pre_negative_slope must be a finite number, got ", pre_negative_slope);
  if (noise.has_value()) {
    const at::Tensor& n = *noise;
    bool ok = n.dim() == x.dim() && n.size(0) == x.size(0) &&
              (n.size(1) == 1 || n.size(1) == x.size(1));
    for (int64_t d = 2; ok && d < x.dim(); ++d) ok = n.size(d) == x.size(d);
    TORCH_CHECK_VALUE(ok, "adain: noise must have shape (N, 1, *) or (N, C, *) with x's N, C and "
                      "trailing dims ", x.sizes(), ", got ", n.sizes());
    TORCH_CHECK_TYPE(n.scalar_type() == x.scalar_type(), "adain: noise dtype (", n.scalar_type(),
                     ") must match x dtype (", x.scalar_type(), ")");
    TORCH_CHECK_VALUE(n.device() == x.device(), "adain: noise is on ", n.device(),
                      " but x is on ", x.device());
  }
  if (noise_weight.has_value()) {
    TORCH_CHECK_VALUE(noise.has_value(), "adain: noise_weight was given without noise");
    check_channel_param(*noise_weight, "noise_weight", x, /*one_allowed=*/true);
  }
  if (bias.has_value()) check_channel_param(*bias, "bias", x, /*one_allowed=*/false);
}

// A per-channel parameter as a contiguous (C) tensor of the accumulation dtype (`fill` where it
// was not given).
inline at::Tensor channel_param(const std::optional<at::Tensor>& t, int64_t C, at::ScalarType acc,
                                const at::TensorOptions& options, double fill) {
  if (!t.has_value()) return at::full({C}, fill, options.dtype(acc));
  return t->reshape({-1}).to(acc).expand({C}).contiguous();
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

// Per-(n, c) statistics: (N, C), or (N, C) followed by any number of 1s ((N, C, 1, 1) for 4-D x).
inline void check_statistic(const at::Tensor& stat, const char* name, const at::Tensor& x) {
  const int64_t N = x.size(0), C = x.size(1);
  bool ok = stat.dim() >= 2 && stat.size(0) == N && stat.size(1) == C;
  for (int64_t d = 2; ok && d < stat.dim(); ++d) ok = stat.size(d) == 1;
  TORCH_CHECK_VALUE(ok, "adain: ", name, " must have shape (N, C) or (N, C, 1, ...) = (", N, ", ",
                    C, "), got ", stat.sizes());
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

// ---- Layout and dtype conventions every kernel follows (mirrored in adain_ext/_layout.py).

enum class Layout { Contiguous, ChannelsLast };

inline at::MemoryFormat memory_format_of(Layout layout) {
  return layout == Layout::ChannelsLast ? at::MemoryFormat::ChannelsLast
                                        : at::MemoryFormat::Contiguous;
}

// (N, C, *) tensors of any rank >= 3 run as the rows of a 4-D tensor. "Channels last" means C
// innermost with the other dims in order (channels_last for 4-D, channels_last_3d for 5-D, the
// (N, T, C) memory of a transposed sequence for 3-D); in both layouts the trailing dims merge into
// one, so a (N, C, *) tensor reads as (N, C, L, 1) in the same layout without a copy. 4-D tensors
// keep their own shape.
inline bool is_channels_last(const at::Tensor& x) {
  std::vector<int64_t> order{0};
  for (int64_t d = 2; d < x.dim(); ++d) order.push_back(d);
  order.push_back(1);
  return x.permute(order).is_contiguous();
}

// x as 4-D rows in `layout` (copied only when its strides differ).
inline at::Tensor as_rows(const at::Tensor& x, Layout layout) {
  if (x.dim() == 4) return x.contiguous(memory_format_of(layout));
  at::Tensor in_layout = x;
  if (layout == Layout::Contiguous) {
    in_layout = x.contiguous();
  } else if (!is_channels_last(x)) {
    std::vector<int64_t> order{0}, inverse(x.dim());
    for (int64_t d = 2; d < x.dim(); ++d) order.push_back(d);
    order.push_back(1);
    for (int64_t d = 0; d < x.dim(); ++d) inverse[order[d]] = d;
    in_layout = x.permute(order).contiguous().permute(inverse);
  }
  return in_layout.view({x.size(0), x.size(1), row_length(x), 1});  // the trailing dims merge
}

// Contiguous and channels last are kept (contiguous wins when a tensor is both); any other
// strides are made contiguous. Returns the 4-D rows to read and their layout.
// (The CUDA files unpack the pair with std::tie: a lambda capturing structured bindings is C++20,
// and torch 2.11 compiles extensions as C++17, where nvcc warns (#3357) at every dispatch.)
inline std::pair<at::Tensor, Layout> canonical_layout(const at::Tensor& x) {
  const Layout layout = !x.is_contiguous() && is_channels_last(x) ? Layout::ChannelsLast
                                                                   : Layout::Contiguous;
  return {as_rows(x, layout), layout};
}

// A kernel's 4-D result (rows of `like`) back in the shape of `like`, keeping its layout.
// Always a view: L's stride is 1 (contiguous) or C (channels last), and unflattening it gives the
// trailing dims the strides of that layout.
inline at::Tensor shaped_like(const at::Tensor& rows, const at::Tensor& like) {
  return like.dim() == 4 ? rows : rows.view(like.sizes());
}

// mean_std's outputs: (N, C) followed by a 1 per trailing dim of x, broadcastable against x.
inline std::vector<int64_t> stat_shape_of(const at::Tensor& x) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[0] = x.size(0);
  shape[1] = x.size(1);
  return shape;
}

inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Per-(n, c) statistics in, as a contiguous (N*C) tensor of the accumulation dtype.
inline at::Tensor flat_stat(const at::Tensor& stat, at::ScalarType acc) {
  return stat.reshape({-1}).to(acc).contiguous();
}

}  // namespace adain
