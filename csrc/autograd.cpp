// Autograd of the compiled ops, registered for the Autograd key in C++ (as torchvision registers
// roi_align's), so that a call, with or without autograd, and its backward never enter Python.
//
// Three modes, each exact:
//   first backward     the backward kernels (_affine_backward, _fused_backward, _mean_std_backward);
//   double backward    a backward run with create_graph=True (gradient penalties, Hessian-vector
//                      products) differentiates the same math written as ATen ops (the composite
//                      below), recomputed from the saved inputs, so every higher derivative is
//                      exact;
//   forward-mode AD    a call whose inputs carry tangents (torch.func.jvp, jacfwd,
//                      torch.autograd.forward_ad) runs the composite itself, which ATen's own
//                      formulas differentiate in every mode;
//   torch.func         under a functorch transform that differentiates (grad, vjp, jacrev,
//                      hessian, vmap of grad) the composite too: functorch refuses C++
//                      autograd::Functions. vmap alone keeps the kernels (adain_ext/_vmap.py).
// The backward ops are not differentiable themselves: called with inputs that require grad while
// grad mode is on, they raise (never a silent zero).
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/FuncTorchTLS.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "checks.h"

namespace adain {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// ---- The composite: adain_ext/reference.py's math in ATen ops, in the accumulation dtype.
// Elementwise ops keep x's layout (channels last stays channels last), as the kernels do.

std::vector<int64_t> row_dims(const Tensor& x) {
  std::vector<int64_t> dims;
  for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
  return dims;
}

// (mean, std) of every (n, c) row, each (N, C, 1, ...), of x already in the accumulation dtype.
std::pair<Tensor, Tensor> composite_stats(const Tensor& x_acc, double eps, bool unbiased) {
  const auto dims = row_dims(x_acc);
  auto mean = x_acc.mean(dims, /*keepdim=*/true);
  auto var = at::var(x_acc, dims, at::Scalar(unbiased ? 1 : 0), /*keepdim=*/true);
  return {mean, (var + eps).sqrt()};
}

// row_math.h's blend, with its alpha == 1 rule (the target itself: an Inf/NaN statistic of the
// row's own must not leak into alpha = 1 through 0 * Inf).
Tensor composite_blend(double alpha, const Tensor& target, const Tensor& own) {
  return alpha == 1.0 ? target : alpha * target + (1.0 - alpha) * own;
}

// The output activation (reference.py's activate), on the output in x's dtype.
Tensor composite_activate(const Tensor& out, c10::string_view activation, double negative_slope) {
  if (activation == "relu") return at::relu(out);
  if (activation == "leaky_relu") return at::leaky_relu(out, negative_slope);
  return out;
}

// _affine_forward's three results: out in x's dtype and layout, mean_x and std_x (N, C) in the
// accumulation dtype (not differentiable, as the op's).
std::tuple<Tensor, Tensor, Tensor> composite_affine(const Tensor& x, const Tensor& mean,
                                                    const Tensor& std, double alpha, double eps,
                                                    bool unbiased,
                                                    c10::string_view activation = "none",
                                                    double negative_slope = 0.01) {
  const auto acc = acc_dtype(x.scalar_type());
  const auto shape = stat_shape_of(x);
  const auto x_acc = x.to(acc);
  auto [mean_x, std_x] = composite_stats(x_acc, eps, unbiased);
  const auto mean_t = composite_blend(alpha, mean.reshape(shape).to(acc), mean_x);
  const auto std_t = composite_blend(alpha, std.reshape(shape).to(acc), std_x);
  auto out = composite_activate(((x_acc - mean_x) / std_x * std_t + mean_t).to(x.scalar_type()),
                                activation, negative_slope);
  const std::vector<int64_t> flat{x.size(0), x.size(1)};
  return {out, mean_x.detach().reshape(flat), std_x.detach().reshape(flat)};
}

// The prologue (reference.py's prologue) in the accumulation dtype: pre_activation(x + w * noise +
// b), w and b shaped to broadcast over x's channels.
Tensor composite_prologue(const Tensor& x, const std::optional<Tensor>& noise,
                          const std::optional<Tensor>& noise_weight,
                          const std::optional<Tensor>& bias, c10::string_view pre_activation,
                          double pre_negative_slope) {
  const auto acc = acc_dtype(x.scalar_type());
  std::vector<int64_t> channel_shape(x.dim(), 1);
  channel_shape[1] = -1;
  Tensor pre = x.to(acc);
  if (noise.has_value()) {
    const Tensor n = noise->to(acc);
    pre = pre + (noise_weight.has_value() ? noise_weight->to(acc).reshape(channel_shape) * n : n);
  }
  if (bias.has_value()) pre = pre + bias->to(acc).reshape(channel_shape);
  return composite_activate(pre, pre_activation, pre_negative_slope);
}

// _prologue_affine_forward's three results: out in x's dtype, p's statistics (N, C).
std::tuple<Tensor, Tensor, Tensor> composite_prologue_affine(
    const Tensor& x, const std::optional<Tensor>& noise,
    const std::optional<Tensor>& noise_weight, const std::optional<Tensor>& bias,
    c10::string_view pre_activation, double pre_negative_slope, const Tensor& mean,
    const Tensor& std, double eps, bool unbiased, c10::string_view activation,
    double negative_slope) {
  const Tensor p = composite_prologue(x, noise, noise_weight, bias, pre_activation,
                                      pre_negative_slope);
  auto [out, mean_p, std_p] =
      composite_affine(p, mean, std, 1.0, eps, unbiased, activation, negative_slope);
  return {out.to(x.scalar_type()), mean_p, std_p};
}

// _fused_forward's five results.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> composite_fused(const Tensor& content,
                                                                   const Tensor& style, double alpha,
                                                                   double eps, bool unbiased) {
  auto [style_mean, style_std] =
      composite_stats(style.to(acc_dtype(style.scalar_type())), eps, unbiased);
  auto [out, content_mean, content_std] =
      composite_affine(content, style_mean, style_std, alpha, eps, unbiased);
  const std::vector<int64_t> flat{content.size(0), content.size(1)};
  return {out, content_mean, content_std, style_mean.detach().reshape(flat),
          style_std.detach().reshape(flat)};
}

// mean_std's results, (N, C, 1, ...) in x's dtype.
std::tuple<Tensor, Tensor> composite_mean_std(const Tensor& x, double eps, bool unbiased) {
  auto [mean, std] = composite_stats(x.to(acc_dtype(x.scalar_type())), eps, unbiased);
  return {mean.to(x.scalar_type()), std.to(x.scalar_type())};
}

// ---- Shared pieces of the three autograd kernels.

bool any_requires_grad(std::initializer_list<Tensor> tensors) {
  if (!at::GradMode::is_enabled()) return false;
  for (const auto& t : tensors) {
    if (t.requires_grad()) return true;
  }
  return false;
}

// Whether functorch would refuse an autograd::Function here (a transform is active); asked the
// way Function::apply asks, so the answer cannot drift from it.
bool functorch_refuses_function() {
  const auto& functorch = at::functorch::functorchTLSAccessor();
  if (!functorch) return false;
  try {
    functorch->checkSupportsCppAutogradFunction();
  } catch (const c10::Error&) {
    return true;
  }
  return false;
}

// Whether a call must run the composite: forward-mode AD (a tangent on any input; the one
// forward-AD level torch exposes is 0), or a functorch transform that differentiates.
bool needs_composite(std::initializer_list<Tensor> tensors) {
  for (const auto& t : tensors) {
    if (t._fw_grad(/*level=*/0).defined()) return true;
  }
  return any_requires_grad(tensors) && functorch_refuses_function();
}

// The backward of create_graph=True: the gradients of the composite `outputs` (recomputed from
// `inputs` with a graph of their own) with respect to the inputs that need one, as a
// differentiable graph. Inputs that require grad stay attached, so a gradient taken with respect
// to one input still depends on the others (d(grad_std)/dx is not lost).
variable_list composite_gradients(const variable_list& outputs, const variable_list& grad_outputs,
                                  const variable_list& inputs, const std::vector<bool>& needs) {
  variable_list used_outputs, used_grads, wanted;
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (grad_outputs[i].defined()) {
      used_outputs.push_back(outputs[i]);
      used_grads.push_back(grad_outputs[i]);
    }
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (needs[i]) wanted.push_back(inputs[i]);
  }
  variable_list result(inputs.size());
  if (used_outputs.empty() || wanted.empty()) return result;
  auto grads = torch::autograd::grad(used_outputs, wanted, used_grads, /*retain_graph=*/true,
                                     /*create_graph=*/true, /*allow_unused=*/true);
  for (size_t i = 0, k = 0; i < inputs.size(); ++i) {
    if (needs[i]) result[i] = grads[k++];
  }
  return result;
}

// A saved input as the composite's input: attached where it requires grad, else a constant.
Tensor attached(const Tensor& t) { return t.requires_grad() ? t : t.detach(); }

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using StatsOut = std::tuple<Tensor, Tensor>;
using AffineOut = std::tuple<Tensor, Tensor, Tensor>;
using FusedOut = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

// ---- adain::mean_std(x, eps, unbiased) -> (mean, std)

const auto& mean_std_op() {
  static auto op = find_op<StatsOut(const Tensor&, double, bool)>("adain::mean_std");
  return op;
}

const auto& mean_std_backward_op() {
  static auto op = find_op<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                  const Tensor&, bool)>("adain::_mean_std_backward");
  return op;
}

class MeanStdFunction : public torch::autograd::Function<MeanStdFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x, double eps, bool unbiased) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [mean, std] = mean_std_op().call(x, eps, unbiased);
    ctx->save_for_backward({x, mean, std});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["unbiased"] = unbiased;
    return {mean, std};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &mean = saved[1], &std = saved[2];
    const bool unbiased = ctx->saved_data["unbiased"].toBool();
    if (!ctx->needs_input_grad(0)) return {Tensor(), Tensor(), Tensor()};
    if (at::GradMode::is_enabled()) {
      const auto x_in = attached(x);
      auto [m, s] = composite_mean_std(x_in, ctx->saved_data["eps"].toDouble(), unbiased);
      return {composite_gradients({m, s}, grads, {x_in}, {true})[0], Tensor(), Tensor()};
    }
    // Either output may be unused; its gradient then arrives undefined.
    const auto grad_mean = grads[0].defined() ? grads[0] : at::zeros_like(mean);
    const auto grad_std = grads[1].defined() ? grads[1] : at::zeros_like(std);
    return {mean_std_backward_op().call(grad_mean, grad_std, x, mean, std, unbiased), Tensor(),
            Tensor()};
  }
};

StatsOut mean_std_autograd(const Tensor& x, double eps, bool unbiased) {
  if (needs_composite({x})) {
    check_features(x, "x", unbiased);
    check_eps(eps);
    return composite_mean_std(x, eps, unbiased);
  }
  if (!any_requires_grad({x})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return mean_std_op().call(x, eps, unbiased);
  }
  auto out = MeanStdFunction::apply(x, eps, unbiased);
  return {out[0], out[1]};
}

// ---- adain::_affine_forward(x, mean, std, alpha, eps, unbiased, activation, negative_slope)
//      -> (out, mean_x, std_x)

const auto& affine_forward_op() {
  static auto op = find_op<AffineOut(const Tensor&, const Tensor&, const Tensor&, double, double,
                                     bool, c10::string_view, double)>("adain::_affine_forward");
  return op;
}

const auto& affine_backward_op() {
  static auto op = find_op<AffineOut(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                     const Tensor&, double, bool, const std::optional<Tensor>&,
                                     c10::string_view, double)>("adain::_affine_backward");
  return op;
}

// A (N, C) accumulation-dtype gradient in the shape and dtype of the statistic it belongs to.
Tensor as_grad_of(const Tensor& grad, const Tensor& like) {
  auto shaped = grad.sizes() == like.sizes() ? grad : grad.view(like.sizes());
  return shaped.scalar_type() == like.scalar_type() ? shaped : shaped.to(like.scalar_type());
}

class AffineFunction : public torch::autograd::Function<AffineFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& mean,
                               const Tensor& std, double alpha, double eps, bool unbiased,
                               c10::string_view activation, double negative_slope) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, mean_x, std_x] =
        affine_forward_op().call(x, mean, std, alpha, eps, unbiased, activation, negative_slope);
    ctx->mark_non_differentiable({mean_x, std_x});
    ctx->save_for_backward({x, mean, std, mean_x, std_x});
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["unbiased"] = unbiased;
    ctx->saved_data["activation"] = std::string(activation);
    ctx->saved_data["negative_slope"] = negative_slope;
    return {out, mean_x, std_x};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &mean = saved[1], &std = saved[2];
    const double alpha = ctx->saved_data["alpha"].toDouble();
    const bool unbiased = ctx->saved_data["unbiased"].toBool();
    const std::string activation = ctx->saved_data["activation"].toStringRef();
    const double negative_slope = ctx->saved_data["negative_slope"].toDouble();
    const std::vector<bool> needs{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                  ctx->needs_input_grad(2)};
    variable_list result(8);
    if (!grads[0].defined()) return result;
    if (at::GradMode::is_enabled()) {
      const variable_list inputs{attached(x), attached(mean), attached(std)};
      auto out = std::get<0>(composite_affine(inputs[0], inputs[1], inputs[2], alpha,
                                              ctx->saved_data["eps"].toDouble(), unbiased,
                                              activation, negative_slope));
      auto grads_in = composite_gradients({out}, {grads[0]}, inputs, needs);
      std::copy(grads_in.begin(), grads_in.end(), result.begin());
      return result;
    }
    auto [grad_x, grad_mean, grad_std] = affine_backward_op().call(
        grads[0], x, saved[3], saved[4], std, alpha, unbiased, mean, activation, negative_slope);
    if (needs[0]) result[0] = grad_x;
    if (needs[1]) result[1] = as_grad_of(grad_mean, mean);
    if (needs[2]) result[2] = as_grad_of(grad_std, std);
    return result;
  }
};

AffineOut affine_forward_autograd(const Tensor& x, const Tensor& mean, const Tensor& std,
                                  double alpha, double eps, bool unbiased,
                                  c10::string_view activation, double negative_slope) {
  if (needs_composite({x, mean, std})) {
    check_affine(x, mean, std, unbiased);
    check_eps(eps);
    check_alpha(alpha);
    check_activation(activation, negative_slope);
    return composite_affine(x, mean, std, alpha, eps, unbiased, activation, negative_slope);
  }
  if (!any_requires_grad({x, mean, std})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return affine_forward_op().call(x, mean, std, alpha, eps, unbiased, activation,
                                    negative_slope);
  }
  auto out = AffineFunction::apply(x, mean, std, alpha, eps, unbiased, activation, negative_slope);
  return {out[0], out[1], out[2]};
}

// ---- adain::_prologue_affine_forward(x, noise, noise_weight, bias, pre_activation,
//      pre_negative_slope, mean, std, eps, unbiased, activation, negative_slope)
//      -> (out, mean_p, std_p)

using OptTensor = std::optional<Tensor>;
using PrologueBackwardOut = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

const auto& prologue_affine_forward_op() {
  static auto op = find_op<AffineOut(const Tensor&, const OptTensor&, const OptTensor&,
                                     const OptTensor&, c10::string_view, double, const Tensor&,
                                     const Tensor&, double, bool, c10::string_view, double)>(
      "adain::_prologue_affine_forward");
  return op;
}

const auto& prologue_affine_backward_op() {
  static auto op = find_op<PrologueBackwardOut(
      const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
      c10::string_view, double, const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool,
      c10::string_view, double)>("adain::_prologue_affine_backward");
  return op;
}

OptTensor defined_or_none(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// The gradient of a per-channel parameter from the kernel's (N, C) per-row sums: summed over N
// (and over C for a single value), in the parameter's shape and dtype.
Tensor per_channel_grad(const Tensor& rows, const Tensor& like) {
  Tensor g = rows.sum(0);
  if (like.sym_numel() == 1) g = g.sum();  // sym_: traced with symbolic shapes too
  return g.reshape_symint(like.sym_sizes()).to(like.scalar_type());
}

class PrologueAffineFunction : public torch::autograd::Function<PrologueAffineFunction> {
 public:
  // Argument positions, as in the schema (the gradients come back in this order).
  enum { kX = 0, kNoise = 1, kWeight = 2, kBias = 3, kMean = 6, kStd = 7, kArgs = 12 };

  static variable_list forward(AutogradContext* ctx, const Tensor& x, const OptTensor& noise,
                               const OptTensor& noise_weight, const OptTensor& bias,
                               c10::string_view pre_activation, double pre_negative_slope,
                               const Tensor& mean, const Tensor& std, double eps, bool unbiased,
                               c10::string_view activation, double negative_slope) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, mean_p, std_p] = prologue_affine_forward_op().call(
        x, noise, noise_weight, bias, pre_activation, pre_negative_slope, mean, std, eps,
        unbiased, activation, negative_slope);
    ctx->mark_non_differentiable({mean_p, std_p});
    ctx->save_for_backward({x, noise.value_or(Tensor()), noise_weight.value_or(Tensor()),
                            bias.value_or(Tensor()), mean, std, mean_p, std_p});
    ctx->saved_data["pre_activation"] = std::string(pre_activation);
    ctx->saved_data["pre_negative_slope"] = pre_negative_slope;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["unbiased"] = unbiased;
    ctx->saved_data["activation"] = std::string(activation);
    ctx->saved_data["negative_slope"] = negative_slope;
    return {out, mean_p, std_p};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &mean = saved[4], &std = saved[5];
    const OptTensor noise = defined_or_none(saved[1]), weight = defined_or_none(saved[2]),
                    bias = defined_or_none(saved[3]);
    const std::string pre_activation = ctx->saved_data["pre_activation"].toStringRef();
    const double pre_slope = ctx->saved_data["pre_negative_slope"].toDouble();
    const double eps = ctx->saved_data["eps"].toDouble();
    const bool unbiased = ctx->saved_data["unbiased"].toBool();
    const std::string activation = ctx->saved_data["activation"].toStringRef();
    const double slope = ctx->saved_data["negative_slope"].toDouble();
    variable_list result(kArgs);
    if (!grads[0].defined()) return result;
    // needs_input_grad counts the tensors given (an absent optional has no edge), not arguments.
    const bool given[6] = {true, noise.has_value(), weight.has_value(), bias.has_value(), true,
                           true};
    const auto needs_grad = [&](int arg) {
      if ((arg == kNoise && !noise) || (arg == kWeight && !weight) || (arg == kBias && !bias)) {
        return false;
      }
      int edge = 0;
      for (int i = 0; i < 6 && (i < 4 ? i : i + 2) < arg; ++i) edge += given[i];
      return ctx->needs_input_grad(edge);
    };
    const int positions[6] = {kX, kNoise, kWeight, kBias, kMean, kStd};
    if (at::GradMode::is_enabled()) {  // create_graph=True: differentiate the composite
      const Tensor in_x = attached(x), in_mean = attached(mean), in_std = attached(std);
      const OptTensor in_noise = noise ? OptTensor(attached(*noise)) : std::nullopt;
      const OptTensor in_weight = weight ? OptTensor(attached(*weight)) : std::nullopt;
      const OptTensor in_bias = bias ? OptTensor(attached(*bias)) : std::nullopt;
      auto out = std::get<0>(composite_prologue_affine(in_x, in_noise, in_weight, in_bias,
                                                       pre_activation, pre_slope, in_mean, in_std,
                                                       eps, unbiased, activation, slope));
      const Tensor candidates[6] = {in_x, in_noise.value_or(Tensor()),
                                    in_weight.value_or(Tensor()), in_bias.value_or(Tensor()),
                                    in_mean, in_std};
      variable_list inputs;
      std::vector<bool> needs;
      std::vector<int> where;
      for (int i = 0; i < 6; ++i) {
        if (!candidates[i].defined()) continue;
        inputs.push_back(candidates[i]);
        needs.push_back(needs_grad(positions[i]));
        where.push_back(positions[i]);
      }
      auto grads_in = composite_gradients({out}, {grads[0]}, inputs, needs);
      for (size_t i = 0; i < where.size(); ++i) result[where[i]] = grads_in[i];
      return result;
    }
    auto [grad_x, grad_mean, grad_std, grad_bias_rows, grad_weight_rows] =
        prologue_affine_backward_op().call(grads[0], x, noise, weight, bias, pre_activation,
                                           pre_slope, saved[6], saved[7], mean, std, unbiased,
                                           activation, slope);
    if (needs_grad(kNoise)) {
      // d(pre)/d(noise) = w: grad_x times the channel's weight, summed over the channels that
      // share one noise value.
      const auto acc = acc_dtype(x.scalar_type());
      Tensor g = grad_x.to(acc);
      if (weight) {
        std::vector<int64_t> channel_shape(x.dim(), 1);
        channel_shape[1] = -1;
        g = g * weight->to(acc).reshape(channel_shape);
      }
      if (noise->sym_size(1) == 1 && x.sym_size(1) != 1) g = g.sum(1, /*keepdim=*/true);
      result[kNoise] = g.to(noise->scalar_type());
    }
    if (needs_grad(kX)) result[kX] = grad_x;
    if (needs_grad(kWeight)) result[kWeight] = per_channel_grad(grad_weight_rows, *weight);
    if (needs_grad(kBias)) result[kBias] = per_channel_grad(grad_bias_rows, *bias);
    if (needs_grad(kMean)) result[kMean] = as_grad_of(grad_mean, mean);
    if (needs_grad(kStd)) result[kStd] = as_grad_of(grad_std, std);
    return result;
  }
};

AffineOut prologue_affine_forward_autograd(const Tensor& x, const OptTensor& noise,
                                           const OptTensor& noise_weight, const OptTensor& bias,
                                           c10::string_view pre_activation,
                                           double pre_negative_slope, const Tensor& mean,
                                           const Tensor& std, double eps, bool unbiased,
                                           c10::string_view activation, double negative_slope) {
  const std::initializer_list<Tensor> tensors{x, mean, std, noise.value_or(Tensor()),
                                              noise_weight.value_or(Tensor()),
                                              bias.value_or(Tensor())};
  bool composite = false;
  for (const auto& t : tensors) composite = composite || (t.defined() && t._fw_grad(0).defined());
  bool grad = false;
  for (const auto& t : tensors) grad = grad || (t.defined() && t.requires_grad());
  grad = grad && at::GradMode::is_enabled();
  if (composite || (grad && functorch_refuses_function())) {
    check_affine(x, mean, std, unbiased);
    check_prologue(x, noise, noise_weight, bias, pre_activation, pre_negative_slope);
    check_eps(eps);
    check_activation(activation, negative_slope);
    return composite_prologue_affine(x, noise, noise_weight, bias, pre_activation,
                                     pre_negative_slope, mean, std, eps, unbiased, activation,
                                     negative_slope);
  }
  if (!grad) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return prologue_affine_forward_op().call(x, noise, noise_weight, bias, pre_activation,
                                             pre_negative_slope, mean, std, eps, unbiased,
                                             activation, negative_slope);
  }
  auto out = PrologueAffineFunction::apply(x, noise, noise_weight, bias, pre_activation,
                                           pre_negative_slope, mean, std, eps, unbiased,
                                           activation, negative_slope);
  return {out[0], out[1], out[2]};
}

// ---- adain::_fused_forward(content, style, alpha, eps, unbiased) -> (out, 4 statistics)

const auto& fused_forward_op() {
  static auto op = find_op<FusedOut(const Tensor&, const Tensor&, double, double, bool)>(
      "adain::_fused_forward");
  return op;
}

const auto& fused_backward_op() {
  static auto op = find_op<std::tuple<Tensor, Tensor>(
      const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
      const Tensor&, double, bool)>("adain::_fused_backward");
  return op;
}

class FusedFunction : public torch::autograd::Function<FusedFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& content, const Tensor& style,
                               double alpha, double eps, bool unbiased) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, content_mean, content_std, style_mean, style_std] =
        fused_forward_op().call(content, style, alpha, eps, unbiased);
    ctx->mark_non_differentiable({content_mean, content_std, style_mean, style_std});
    ctx->save_for_backward({content, style, content_mean, content_std, style_mean, style_std});
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["unbiased"] = unbiased;
    return {out, content_mean, content_std, style_mean, style_std};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &content = saved[0], &style = saved[1];
    const double alpha = ctx->saved_data["alpha"].toDouble();
    const bool unbiased = ctx->saved_data["unbiased"].toBool();
    const std::vector<bool> needs{ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
    variable_list result(5);
    if (!grads[0].defined()) return result;
    if (at::GradMode::is_enabled()) {
      const variable_list inputs{attached(content), attached(style)};
      auto out = std::get<0>(composite_fused(inputs[0], inputs[1], alpha,
                                             ctx->saved_data["eps"].toDouble(), unbiased));
      auto grads_in = composite_gradients({out}, {grads[0]}, inputs, needs);
      std::copy(grads_in.begin(), grads_in.end(), result.begin());
      return result;
    }
    if (needs[1]) {  // the content gradient, the style statistics' and from them the style's
      auto [grad_content, grad_style] = fused_backward_op().call(
          grads[0], content, style, saved[2], saved[3], saved[4], saved[5], alpha, unbiased);
      result[0] = needs[0] ? grad_content : Tensor();
      result[1] = grad_style;
    } else {  // the content gradient alone
      result[0] = std::get<0>(affine_backward_op().call(grads[0], content, saved[2], saved[3],
                                                        saved[5], alpha, unbiased, std::nullopt,
                                                        "none", 0.01));
    }
    return result;
  }
};

FusedOut fused_forward_autograd(const Tensor& content, const Tensor& style, double alpha,
                                double eps, bool unbiased) {
  if (needs_composite({content, style})) {
    check_pair(content, style, unbiased);
    check_eps(eps);
    check_alpha(alpha);
    return composite_fused(content, style, alpha, eps, unbiased);
  }
  if (!any_requires_grad({content, style})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return fused_forward_op().call(content, style, alpha, eps, unbiased);
  }
  auto out = FusedFunction::apply(content, style, alpha, eps, unbiased);
  return {out[0], out[1], out[2], out[3], out[4]};
}

// ---- The backward ops: not differentiable. Their results are exact first derivatives; a graph
// through them would lose the second, so building one is refused with the way to get it.

void refuse_graph(const char* op, std::initializer_list<Tensor> tensors) {
  TORCH_CHECK(!any_requires_grad(tensors), "adain: ", op,
              " is not differentiable; for higher derivatives differentiate the forward op "
              "(adain_ext.adain, adain_affine, mean_std or torch.ops.adain.*) with "
              "create_graph=True, which differentiates an exact composite");
}

Tensor mean_std_backward_autograd(const Tensor& grad_mean, const Tensor& grad_std, const Tensor& x,
                                  const Tensor& mean, const Tensor& std, bool unbiased) {
  refuse_graph("adain::_mean_std_backward", {grad_mean, grad_std, x, mean, std});
  at::AutoDispatchBelowADInplaceOrView guard;
  return mean_std_backward_op().call(grad_mean, grad_std, x, mean, std, unbiased);
}

AffineOut affine_backward_autograd(const Tensor& grad_out, const Tensor& x, const Tensor& mean_x,
                                   const Tensor& std_x, const Tensor& std, double alpha,
                                   bool unbiased, const std::optional<Tensor>& mean,
                                   c10::string_view activation, double negative_slope) {
  refuse_graph("adain::_affine_backward", {grad_out, x, mean_x, std_x, std});
  if (mean.has_value()) refuse_graph("adain::_affine_backward", {*mean});
  at::AutoDispatchBelowADInplaceOrView guard;
  return affine_backward_op().call(grad_out, x, mean_x, std_x, std, alpha, unbiased, mean,
                                   activation, negative_slope);
}

PrologueBackwardOut prologue_affine_backward_autograd(
    const Tensor& grad_out, const Tensor& x, const OptTensor& noise,
    const OptTensor& noise_weight, const OptTensor& bias, c10::string_view pre_activation,
    double pre_negative_slope, const Tensor& mean_p, const Tensor& std_p, const Tensor& mean,
    const Tensor& std, bool unbiased, c10::string_view activation, double negative_slope) {
  refuse_graph("adain::_prologue_affine_backward", {grad_out, x, mean_p, std_p, mean, std});
  for (const auto* t : {&noise, &noise_weight, &bias}) {
    if (t->has_value()) refuse_graph("adain::_prologue_affine_backward", {**t});
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return prologue_affine_backward_op().call(grad_out, x, noise, noise_weight, bias,
                                            pre_activation, pre_negative_slope, mean_p, std_p,
                                            mean, std, unbiased, activation, negative_slope);
}

std::tuple<Tensor, Tensor> fused_backward_autograd(const Tensor& grad_out, const Tensor& content,
                                                   const Tensor& style, const Tensor& content_mean,
                                                   const Tensor& content_std,
                                                   const Tensor& style_mean,
                                                   const Tensor& style_std, double alpha,
                                                   bool unbiased) {
  refuse_graph("adain::_fused_backward", {grad_out, content, style});
  at::AutoDispatchBelowADInplaceOrView guard;
  return fused_backward_op().call(grad_out, content, style, content_mean, content_std, style_mean,
                                  style_std, alpha, unbiased);
}

}  // namespace

TORCH_LIBRARY_IMPL(adain, Autograd, m) {
  m.impl("mean_std", TORCH_FN(mean_std_autograd));
  m.impl("_affine_forward", TORCH_FN(affine_forward_autograd));
  m.impl("_fused_forward", TORCH_FN(fused_forward_autograd));
  m.impl("_mean_std_backward", TORCH_FN(mean_std_backward_autograd));
  m.impl("_affine_backward", TORCH_FN(affine_backward_autograd));
  m.impl("_fused_backward", TORCH_FN(fused_backward_autograd));
  m.impl("_prologue_affine_forward", TORCH_FN(prologue_affine_forward_autograd));
  m.impl("_prologue_affine_backward", TORCH_FN(prologue_affine_backward_autograd));
}

}  // namespace adain
