// Schemas of every op in the `adain` namespace, declared once, plus the two public ops that are
// thin compositions of internal ones (so autograd and torch.compile see a single custom op with a
// registered backward, and the kernels can return the statistics the backward needs).
//
// Kernels live in one file per op per backend:
//   csrc/cpu/{mean_std,affine,fused}_kernel.cpp   TORCH_LIBRARY_IMPL(adain, CPU, m)
//   csrc/cuda/{mean_std,affine,fused}_kernel.cu   TORCH_LIBRARY_IMPL(adain, CUDA, m)
// Autograd (every op, every mode) lives in csrc/autograd.cpp; fake kernels in adain_ext/fakes.py.
#include <Python.h>
#include <torch/library.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "checks.h"
#include "cpu/kernels.h"
#include "cpu/output_cache.h"

namespace adain {

// out = alpha * AdaIN(content, style) + (1 - alpha) * content.
at::Tensor fused(const at::Tensor& content, const at::Tensor& style, double alpha, double eps,
                 bool unbiased) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("adain::_fused_forward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, double, double, bool)>();
  return std::get<0>(op.call(content, style, alpha, eps, unbiased));
}

// out = act(std * (p - mean_p) / std_p + mean), with the target statistics given by the caller;
// p = x, or with a prologue act_pre(x + noise_weight * noise + bias).
at::Tensor affine(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& std, double eps,
                  bool unbiased, c10::string_view activation, double negative_slope,
                  const std::optional<at::Tensor>& noise,
                  const std::optional<at::Tensor>& noise_weight,
                  const std::optional<at::Tensor>& bias, c10::string_view pre_activation,
                  double pre_negative_slope) {
  if (has_prologue(noise, noise_weight, bias, pre_activation)) {
    static auto prologue_op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("adain::_prologue_affine_forward", "")
            .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                const at::Tensor&, const std::optional<at::Tensor>&,
                const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                c10::string_view, double, const at::Tensor&, const at::Tensor&, double, bool,
                c10::string_view, double)>();
    return std::get<0>(prologue_op.call(x, noise, noise_weight, bias, pre_activation,
                                        pre_negative_slope, mean, std, eps, unbiased, activation,
                                        negative_slope));
  }
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("adain::_affine_forward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double,
                           bool, c10::string_view, double)>();
  return std::get<0>(op.call(x, mean, std, 1.0, eps, unbiased, activation, negative_slope));
}

// Backward of _fused_forward for backends without a kernel of their own: the content gradient and
// the style statistics' gradients, then the style gradient from those.
std::tuple<at::Tensor, at::Tensor> fused_backward(const at::Tensor& grad_out,
                                                  const at::Tensor& content, const at::Tensor& style,
                                                  const at::Tensor& content_mean,
                                                  const at::Tensor& content_std,
                                                  const at::Tensor& style_mean,
                                                  const at::Tensor& style_std, double alpha,
                                                  bool unbiased) {
  static auto affine_backward =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("adain::_affine_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              const at::Tensor&, double, bool, const std::optional<at::Tensor>&,
              c10::string_view, double)>();
  static auto mean_std_backward =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("adain::_mean_std_backward", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&, bool)>();
  auto [grad_content, grad_mean, grad_std] = affine_backward.call(
      grad_out, content, content_mean, content_std, style_std, alpha, unbiased, std::nullopt,
      "none", 0.01);
  return {grad_content,
          mean_std_backward.call(grad_mean, grad_std, style, style_mean, style_std, unbiased)};
}

TORCH_LIBRARY(adain, m) {
  // Public ops. Statistics are per (n, c) over H*W; std = sqrt(var + eps); unbiased divides by
  // H*W - 1 like the reference's calc_mean_std, unbiased=False by H*W like instance_norm.
  m.def("mean_std(Tensor x, float eps=1e-5, bool unbiased=True) -> (Tensor, Tensor)");
  m.def("fused(Tensor content, Tensor style, float alpha=1.0, float eps=1e-5, bool unbiased=True) -> Tensor");
  // activation: "none", "relu" or "leaky_relu" (with negative_slope) applied to the output.
  // The prologue: the statistics and the map are taken over
  // p = pre_activation(x + noise_weight * noise + bias) instead of x (csrc/row_math.h). Not
  // keyword-only in the schema (torch.library.register_vmap refuses keyword-only tensors); the
  // Python API takes them by keyword.
  m.def("affine(Tensor x, Tensor mean, Tensor std, float eps=1e-5, bool unbiased=True, "
        "str activation=\"none\", float negative_slope=0.01, Tensor? noise=None, "
        "Tensor? noise_weight=None, Tensor? bias=None, str pre_activation=\"none\", "
        "float pre_negative_slope=0.01) -> Tensor");

  // Internal ops. Statistics they return are (N, C), contiguous, in the accumulation dtype
  // (float32, or float64 for float64 input): `mean` and `std` of the tensor they normalised.
  // Target statistics passed in may be (N, C) or (N, C, 1, 1) of any floating dtype.
  // With an activation, _affine_backward needs the target `mean` too: it recomputes the
  // pre-activation output from x and the forward's coefficients instead of saving it.
  m.def("_affine_forward(Tensor x, Tensor mean, Tensor std, float alpha, float eps, bool unbiased, "
        "str activation=\"none\", float negative_slope=0.01) "
        "-> (Tensor out, Tensor mean_x, Tensor std_x)");
  m.def("_affine_backward(Tensor grad_out, Tensor x, Tensor mean_x, Tensor std_x, Tensor std, "
        "float alpha, bool unbiased, Tensor? mean=None, str activation=\"none\", "
        "float negative_slope=0.01) -> (Tensor grad_x, Tensor grad_mean, Tensor grad_std)");
  // affine with a prologue (no alpha): mean_p and std_p are p's statistics; the backward
  // recomputes pre and p from x and returns, besides grad_x (dL/dx), the per-(n, c) row sums of
  // the gradients of bias and noise_weight, (N, C) in the accumulation dtype, for the caller to
  // sum over N (and over C for a single noise_weight). grad_noise is noise_weight * grad_x (summed
  // over C for (N, 1, *) noise), left to the caller.
  m.def("_prologue_affine_forward(Tensor x, Tensor? noise, Tensor? noise_weight, Tensor? bias, "
        "str pre_activation, float pre_negative_slope, Tensor mean, Tensor std, float eps, "
        "bool unbiased, str activation, float negative_slope) "
        "-> (Tensor out, Tensor mean_p, Tensor std_p)");
  m.def("_prologue_affine_backward(Tensor grad_out, Tensor x, Tensor? noise, "
        "Tensor? noise_weight, Tensor? bias, str pre_activation, float pre_negative_slope, "
        "Tensor mean_p, Tensor std_p, Tensor mean, Tensor std, bool unbiased, str activation, "
        "float negative_slope) -> (Tensor grad_x, Tensor grad_mean, Tensor grad_std, "
        "Tensor grad_bias, Tensor grad_noise_weight)");
  m.def("_fused_forward(Tensor content, Tensor style, float alpha, float eps, bool unbiased) "
        "-> (Tensor out, Tensor content_mean, Tensor content_std, Tensor style_mean, Tensor style_std)");
  m.def("_mean_std_backward(Tensor grad_mean, Tensor grad_std, Tensor x, Tensor mean, Tensor std, "
        "bool unbiased) -> Tensor");
  m.def("_fused_backward(Tensor grad_out, Tensor content, Tensor style, Tensor content_mean, "
        "Tensor content_std, Tensor style_mean, Tensor style_std, float alpha, bool unbiased) "
        "-> (Tensor grad_content, Tensor grad_style)");

  // Test hook: the number of segments each CPU reduction and map split its units into since the
  // previous call (1: whole rows); `record` turns logging on or off from now on.
  m.def("_cpu_segment_log(bool record) -> int[]", TORCH_FN(cpu::take_segment_log));
  // Test hook: the bytes of freed output blocks the CPU kernels hold for reuse (output_cache.h).
  m.def("_cpu_output_cache_bytes() -> int", TORCH_FN(cpu::output_cache_bytes));
  // Test hook: outputs of at least `bytes` are written with non-temporal stores from now on
  // (bytes >= 0; -1 changes nothing); returns the threshold before the call (row_kernels.h).
  m.def("_cpu_stream_bytes(int bytes) -> int", TORCH_FN(cpu::stream_bytes_hook));

  m.impl("fused", c10::DispatchKey::CompositeImplicitAutograd, TORCH_FN(fused));
  m.impl("affine", c10::DispatchKey::CompositeImplicitAutograd, TORCH_FN(affine));
  // CPU has a one-pass kernel (csrc/cpu/fused_kernel.cpp); other devices compose the two others.
  m.impl("_fused_backward", c10::DispatchKey::CompositeExplicitAutograd, TORCH_FN(fused_backward));
}

}  // namespace adain

// Importing adain_ext._C runs the static registrations above; the module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
