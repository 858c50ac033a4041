"""Plants known bugs, one at a time, in a copy of the repository and reports which the tests catch.

    python tools/mutation_check.py                 # every mutant
    python tools/mutation_check.py --only cpu_split_skips_last accelerate_running_stats
    python tools/mutation_check.py --list

Each mutant replaces one exact piece of source text (the script stops if the text is no longer
there, so a refactor cannot turn a mutant into a no-op) and runs the test files that should catch
it, with -x, on the CPU. The copy holds the tracked and untracked, not ignored, files of this
working tree and its built adain_ext/_C*.so, so Python mutants need no build; C++ mutants rebuild
the copy CPU-only (ADAIN_EXT_CUDA=0 MAX_JOBS=1, niced: about 12 minutes for a full build on a
shared 2-core machine, 3 to 12 for a mutant's incremental one); CUDA mutants (csrc/cuda) need no
build of _C: tests/test_cuda_emulated.py compiles the mutated source through tools/cuda_emu.
Never builds in the checkout itself. Mutants run one after another: the machines this runs on
are shared. Prints a table mutant -> caught (by which test) / survived, and the total time.
Not part of CI (it takes one to two hours for the whole list on 2 cores).
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    old: str  # exact text, present exactly once
    new: str
    tests: tuple  # pytest runs, each a tuple of arguments (files, -k expressions), until one fails
    why: str

    @property
    def needs_build(self) -> bool:
        """C++ sources of the CPU build; csrc/cuda is compiled by the CUDA emulation itself."""
        return self.path.startswith("csrc/") and not self.path.startswith("csrc/cuda/")


CPP_TESTS = (("tests/test_cpu_split.py",), ("tests/test_backends.py", "-k", "cpp"))
# The shared cases whose content and style have different layouts (tests/cases.py).
MIXED_LAYOUTS = "(channels_last_content_contiguous_style or contiguous_content_channels_last_style)"

MUTANTS = [
    Mutant("cpu_split_skips_last", "csrc/cpu/row_kernels.h",
           "      reduce_rows(t / S, b, e, partial.data() + t * rpu);",
           "      reduce_rows(t / S, b, e - 1, partial.data() + t * rpu);",
           (("tests/test_cpu_split.py",), ("tests/test_op_contract.py", "-k", "cpp-cpu"),
            ("tests/test_backends.py",)),
           "each segment's partial sums skip its last element (CPU split path)"),
    Mutant("accelerate_running_stats", "adain_ext/rewrite.py",
           "        if m.track_running_stats:\n", "        if False:\n",
           (("tests/test_stylegan.py", "-k", "accelerate"),),
           "accelerate() rewrites InstanceNorm2d(track_running_stats=True)"),
    Mutant("accelerate_affine_bias_unscaled", "adain_ext/rewrite.py",
           "            mean = mean + std * bias\n", "            mean = mean + bias\n",
           (("tests/test_accelerate_idioms.py", "-k", "clip"), ("tests/test_stylegan.py", "-k", "accelerate")),
           "accelerate() folds an affine instance norm's bias without the modulation's scale"),
    Mutant("modulation_unbiased", "adain_ext/rewrite.py",
           "return functional.adain_affine(x.to(dtype), mean, std, eps, False, activation=activation,",
           "return functional.adain_affine(x.to(dtype), mean, std, eps, True, activation=activation,",
           (("tests/test_accelerate_idioms.py", "-k", "speech or clip"),),
           "instance norm + modulation fused with the unbiased variance (instance_norm divides by L)"),
    Mutant("batch_norm_trick_unbiased", "adain_ext/rewrite.py",
           "return functional.adain_affine(x, bias.view(N, C), weight.view(N, C), eps, False,",
           "return functional.adain_affine(x, bias.view(N, C), weight.view(N, C), eps, True,",
           (("tests/test_accelerate_idioms.py",),),
           "the batch_norm trick mapped with the unbiased variance (batch_norm divides by H*W)"),
    Mutant("batch_norm_trick_first_weight", "adain_ext/rewrite.py",
           "        weight, bias = self.weight, self.bias\n",
           '        weight = self.__dict__.setdefault("first_weight", self.weight)\n'
           '        bias = self.__dict__.setdefault("first_bias", self.bias)\n',
           (("tests/test_accelerate_idioms.py", "-k", "munit"),),
           "the batch_norm trick keeps the first weight and bias assigned instead of reading them "
           "at each call"),
    Mutant("batch_norm_trick_default_eps", "adain_ext/rewrite.py",
           "eps = self.eps if eps is None else eps", "eps = 1e-5 if eps is None else eps",
           (("tests/test_accelerate_idioms.py",),),
           "the batch_norm trick ignores the module's eps"),
    Mutant("fake_stats_in_x_dtype", "adain_ext/_layout.py",
           "return x.new_empty(x.shape[:2], dtype=stat_dtype(x.dtype))",
           "return x.new_empty(x.shape[:2], dtype=x.dtype)",
           (("tests/test_op_contract.py", "-k", "cpp-cpu"), ("tests/test_triton_16bit.py",)),
           "fake kernels return statistics in x's dtype instead of float32"),
    Mutant("affine_std_grad_shaped_like_mean", "adain_ext/_autograd.py",
           "ctx.alpha, ctx.eps, ctx.unbiased = alpha, eps, unbiased\n"
           "        ctx.activation, ctx.negative_slope = activation, negative_slope\n"
           "        ctx.mean_like = (mean.shape, mean.dtype)\n"
           "        ctx.std_like = (std.shape, std.dtype)",
           "ctx.alpha, ctx.eps, ctx.unbiased = alpha, eps, unbiased\n"
           "        ctx.activation, ctx.negative_slope = activation, negative_slope\n"
           "        ctx.mean_like = (mean.shape, mean.dtype)\n"
           "        ctx.std_like = (mean.shape, mean.dtype)",
           (("tests/test_op_contract.py", "-k", "triton-cpu and Affine"),
            ("tests/test_backends.py", "-k", "triton")),
           "the Triton affine backward gives std's gradient mean's shape and dtype"),
    Mutant("affine_std_grad_shaped_like_mean_cpp", "csrc/autograd.cpp",
           "    if (needs[2]) result[2] = as_grad_of(grad_std, std);",
           "    if (needs[2]) result[2] = as_grad_of(grad_std, mean);",
           (("tests/test_op_contract.py", "-k", "cpp-cpu and Affine"), ("tests/test_backends.py", "-k", "cpp")),
           "the compiled affine backward gives std's gradient mean's shape and dtype"),
    Mutant("grad_16bit_scaled_0.9", "adain_ext/_autograd.py",
           "        return grad_content if need_content else None, grad_style, None, None, None",
           "        if content.dtype in (torch.float16, torch.bfloat16):\n"
           "            grad_content = grad_content * 0.9\n"
           "        return grad_content if need_content else None, grad_style, None, None, None",
           (("tests/test_backends.py", "-k", "triton"),),
           "the Triton adain's 16-bit gradients scaled by 0.9"),
    Mutant("grad_16bit_scaled_0.9_cpp", "csrc/autograd.cpp",
           "      result[0] = needs[0] ? grad_content : Tensor();",
           "      result[0] = !needs[0] ? Tensor() : content.element_size() == 2 ? grad_content * 0.9\n"
           "                                                                  : grad_content;",
           (("tests/test_backends.py", "-k", "cpp"),),
           "the compiled adain's 16-bit gradients scaled by 0.9"),
    Mutant("mean_std_backward_biased_divisor", "csrc/row_math.h",
           "c.slope = grad_std / (variance_divisor<acc_t>(L, unbiased) * std);",
           "c.slope = grad_std / (variance_divisor<acc_t>(L, false) * std);",
           CPP_TESTS,
           "mean_std backward divides by H*W where the unbiased variance needs H*W - 1"),
    Mutant("forward_alpha_drops_content_mean", "csrc/row_math.h",
           "c.shift = blend(alpha, mean_t, mean_x);", "c.shift = alpha * mean_t;",
           CPP_TESTS,
           "alpha blend drops the (1 - alpha) * content mean term"),
    Mutant("onnx_biased_divisor", "adain_ext/onnx.py",
           "divisor = op.Sub(count, _scalar(1.0, stat)) if unbiased else count",
           "divisor = count",
           (("tests/test_onnx.py",),),
           "the ONNX translations divide by the count where the unbiased variance needs count - 1"),
    Mutant("onnx_export_ignores_alpha", "adain_ext/style_transfer/export.py",
           "blended = torch.lerp(content_feat, target, alpha.to(content_feat.dtype))",
           "blended = target + 0 * alpha",
           (("tests/test_style_export.py",),),
           "the exported network ignores its alpha input"),
    # ---- Content and style in different memory layouts.
    Mutant("mixed_layout_cpu_one_region", "csrc/cpu/fused_kernel.cpp",
           "  return content.layout == style.layout && content.segments() == 1 && "
           "style.segments() == 1;",
           "  return content.segments() == 1 && style.segments() == 1;",
           (("tests/test_backends.py", "-k", MIXED_LAYOUTS + " and cpp"),),
           "the CPU fused ops take their one-region path for content and style of different "
           "layouts (the style read with the content's unit geometry)"),
    Mutant("mixed_layout_triton_style_flag", "adain_ext/triton/fused.py",
           "STYLE_CHANNELS_LAST=style_channels_last,", "STYLE_CHANNELS_LAST=channels_last,",
           (("tests/test_backends.py", "-k", MIXED_LAYOUTS + " and triton"),),
           "the Triton one-launch fused kernel reads the style in the content's layout"),
    Mutant("mixed_layout_cuda_one_launch", "csrc/cuda/fused_kernel.cu",
           "                          style_layout == Layout::Contiguous && !use_split(R, L, dev) &&",
           "                          !use_split(R, L, dev) &&",
           (("tests/test_cuda_emulated.py", "-k", "kernel_source"),),
           "the CUDA one-launch fused kernel runs for a channels_last style (read as contiguous)"),
    # ---- Split rows whose length the segment count does not divide.
    # The affine op's output activation (its epilogue), each path on its own.
    Mutant("cpu_epilogue_short_row_forward_skipped", "csrc/cpu/row_kernels.h",
           "      if (e.kind != Activation::None) y = activate_vec(e, y);\n", "\n",
           (("tests/test_epilogue.py", "-k", "cpp-cpu"),),
           "short rows store the affine map without its activation"),
    Mutant("cpu_epilogue_channels_last_forward_skipped", "csrc/cpu/row_kernels.h",
           "  const bool activate_out = g_image == nullptr && e.kind != Activation::None;",
           "  const bool activate_out = false;",
           (("tests/test_epilogue.py", "-k", "cpp-cpu"),),
           "channels_last images store the affine map without its activation"),
    Mutant("cpu_epilogue_sums_ignore_mask", "csrc/cpu/row_kernels.h",
           "        return activation_grad_vec(e, at::vec::fmadd(f_slope, xv - f_mean, f_shift), gv);",
           "        return gv;",
           (("tests/test_epilogue.py", "-k", "cpp-cpu"),),
           "long rows' gradient sums take g instead of the activation's gradient"),
    Mutant("cpu_epilogue_map_ignores_mask", "csrc/cpu/row_kernels.h",
           "              return at::vec::fmadd(g_scale, gy, at::vec::fmadd(slope, xv - mean, shift));",
           "              return at::vec::fmadd(g_scale, gv, at::vec::fmadd(slope, xv - mean, shift));",
           (("tests/test_epilogue.py", "-k", "cpp-cpu"),),
           "long rows' backward map takes g instead of the activation's gradient"),
    Mutant("cpu_epilogue_short_row_backward_skipped", "csrc/cpu/affine_kernel.cpp",
           "      if (has_act) g_row.activation_grad(x_row, forward_coef(row), epilogue);\n", "",
           (("tests/test_epilogue.py", "-k", "cpp-cpu"),),
           "short rows' backward ignores the activation"),
    Mutant("cpu_epilogue_relu_grad_leaks", "csrc/cpu/row_kernels.h",
           "  const Vec neg = e.kind == Activation::Relu ? Vec(0) : Vec(e.negative_slope) * g;",
           "  const Vec neg = Vec(e.negative_slope) * g;",
           (("tests/test_epilogue.py", "-k", "cpp-cpu"),),
           "relu's gradient takes negative_slope * g where y <= 0 instead of 0"),
    Mutant("composite_drops_activation", "csrc/autograd.cpp",
           '  if (activation == "relu") return at::relu(out);\n', "",
           (("tests/test_epilogue.py", "-k", "cpp-cpu and autograd_mode"),),
           "forward-mode AD and double backward differentiate the map without relu"),
    Mutant("cpu_short_row_tail_unmasked", "csrc/cpu/row_kernels.h",
           "    return tail == V ? d : Vec::set(Vec(0), d, tail);",
           "    return d;",
           (("tests/test_cpu_short_rows.py",),),
           "the short-row path counts the zero lanes past a row's end in its squared deviations"),
    Mutant("cpu_short_row_reads_past_row", "csrc/cpu/row_kernels.h",
           "    for (int k = 0; k < NV; ++k) v[k] = Vec::loadu(src + k * V, std::min<int64_t>(V, n - k * V));",
           "    for (int k = 0; k < NV; ++k) v[k] = Vec::loadu(src + k * V);",
           (("tests/test_cpu_short_rows.py",),),
           "the short-row path loads whole vectors, taking the next row's first elements as its tail"),
    Mutant("cpu_split_drops_remainder", "csrc/cpu/row_kernels.h",
           "    return {L * s / S, L * (s + 1) / S};", "    return {L / S * s, L / S * (s + 1)};",
           (("tests/test_cpu_split.py", "-k", "remainder"),),
           "CPU split segments of L / S positions each: the last L % S positions are never "
           "reduced nor written"),
    # ---- Gradients of non-finite rows (the alpha == 1 rule in the backward).
    Mutant("backward_blends_at_alpha_one_cpp", "csrc/row_math.h",
           "  const acc_t k = blend(alpha, std_t, std_x) * rstd;",
           "  const acc_t k = (alpha * std_t + (acc_t(1) - alpha) * std_x) * rstd;",
           (("tests/test_nonfinite_rows.py", "-k", "gradients and cpp"),),
           "the C++/CUDA backward blends 1 * std_t + 0 * std_x at alpha == 1: NaN gradients of a "
           "row whose std overflows"),
    Mutant("backward_blends_at_alpha_one_triton", "adain_ext/triton/row_math.py",
           "    g_scale = blend(alpha, std_t, std_x) * rstd",
           "    g_scale = (alpha * std_t + (1.0 - alpha) * std_x) * rstd",
           (("tests/test_nonfinite_rows.py", "-k", "gradients and triton"),),
           "the Triton backward blends at alpha == 1: NaN gradients of a row whose std overflows"),
    # ---- Statistics of mixed dtypes in the backward.
    Mutant("mean_grad_through_std_dtype_cpp", "csrc/autograd.cpp",
           "    if (needs[1]) result[1] = as_grad_of(grad_mean, mean);",
           "    if (needs[1]) result[1] = as_grad_of(grad_mean.to(std.scalar_type()), mean);",
           (("tests/test_backends.py", "-k", "each_statistic_dtype and cpp"),),
           "the compiled ops' affine backward passes the mean's gradient through the std's dtype"),
    Mutant("mean_grad_through_std_dtype_triton", "adain_ext/_autograd.py",
           "grad_x if need_x else None,\n"
           "            as_grad_of(grad_mean, *ctx.mean_like) if need_mean else None,",
           "grad_x if need_x else None,\n"
           "            as_grad_of(grad_mean.to(ctx.std_like[1]), *ctx.mean_like) if need_mean "
           "else None,",
           (("tests/test_backends.py", "-k", "each_statistic_dtype and triton"),),
           "the Triton ops' affine backward passes the mean's gradient through the std's dtype"),
    # ---- The registry's answers where a GPU is present.
    Mutant("registry_triton_needs_interpreter_on_cuda", "adain_ext/backends.py",
           'if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":',
           'if os.environ.get("TRITON_INTERPRET") != "1":',
           (("tests/test_backends.py", "-k", "gpu_machine"),),
           "the registry calls Triton unavailable on CUDA without TRITON_INTERPRET (the GPU suite "
           "would skip it)"),
    Mutant("registry_cpp_cuda_kernels_unchecked", "adain_ext/backends.py",
           "    if not _extension.has_kernel(device_type):",
           '    if not _extension.has_kernel("cpu"):',
           (("tests/test_backends.py", "-k", "gpu_machine"),),
           "the registry calls a CPU-only build available for CUDA tensors"),
    # ---- accelerate(): every argument its patterns read.
    Mutant("accelerate_ignores_arithmetic_keywords", "adain_ext/rewrite.py",
           "    if is_op and len(node.args) == 2 and not node.kwargs:",
           "    if is_op and len(node.args) == 2:",
           (("tests/test_accelerate_idioms.py", "-k", "arguments_the_patterns_read"),),
           "accelerate() fuses torch.add(norm(x) * scale, shift, alpha=2), dropping alpha"),
    Mutant("accelerate_reference_call_drops_keywords", "adain_ext/rewrite.py",
           '    node.kwargs = {**dict(values[positional:]), "backend": backend}',
           '    node.kwargs = {"backend": backend}',
           (("tests/test_accelerate_idioms.py", "-k", "keyword_arguments"),),
           "accelerate() rewrites reference calls dropping their keyword-only arguments (adain_affine's"
           " activation, prologue)"),
    # ---- ONNX translations of the internal ops with every argument.
    Mutant("onnx_affine_forward_ignores_alpha", "adain_ext/onnx.py",
           "    out = _renormalise(x, centred, mean_x, std_x, mean, std, alpha)\n"
           "    return _activate(out, activation, negative_slope), _rows(x, mean_x)",
           "    out = _renormalise(x, centred, mean_x, std_x, mean, std, 1.0)\n"
           "    return _activate(out, activation, negative_slope), _rows(x, mean_x)",
           (("tests/test_onnx.py", "-k", "every_argument"),),
           "the ONNX translation of adain::_affine_forward ignores alpha"),
    # ---- What the commands produce.
    Mutant("stylize_preserve_color_reversed", "adain_ext/style_transfer/stylize.py",
           "recoloured = torch.stack([coral(style, image) for _, image in contents])",
           "recoloured = torch.stack([coral(image, style) for _, image in contents])",
           (("tests/test_style_transfer.py", "-k", "reference_pipeline"),),
           "stylize --preserve_color recolours the content to the style instead of the reverse"),
    Mutant("stylize_mask_ignores_alpha", "adain_ext/style_transfer/stylize.py",
           "out = self.net.stylize(batch, stats, job.weights, self.args.alpha, mask)",
           "out = self.net.stylize(batch, stats, job.weights, "
           "1.0 if mask is not None else self.args.alpha, mask)",
           (("tests/test_style_transfer.py", "-k", "reference_pipeline"),),
           "stylize --mask ignores --alpha"),
    Mutant("video_ignores_interpolation_weights", "adain_ext/style_transfer/video.py",
           "frames = net.stylize(batch, stats, weights, args.alpha).float().clamp_(0, 1)",
           "frames = net.stylize(batch, stats, None, args.alpha).float().clamp_(0, 1)",
           (("tests/test_style_video.py", "-k", "reference_pipeline"),),
           "video --style_interpolation_weights ignored (equal weights)"),
    # The affine op's prologue (pre = x + w * noise + b, p = act_pre(pre)), each path on its own.
    Mutant("cpu_prologue_row_bias_dropped", "csrc/cpu/affine_kernel.cpp",
           "    v = v + b;\n", "\n",
           (("tests/test_prologue.py", "-k", "cpp-cpu"),),
           "contiguous rows form pre without the bias"),
    Mutant("cpu_prologue_position_one_weight", "csrc/cpu/affine_kernel.cpp",
           "    if (nc) v = at::vec::fmadd(io.load(pro.weight + c), io.load(nc + c), v);",
           "    if (nc) v = at::vec::fmadd(Vec(pro.weight[0]), io.load(nc + c), v);",
           (("tests/test_prologue.py", "-k", "cpp-cpu"),),
           "channels_last positions scale every channel's noise by channel 0's weight"),
    Mutant("cpu_prologue_noise_per_element_as_broadcast", "csrc/cpu/affine_kernel.cpp",
           "(n * noise_channels + (noise_channels == 1 ? 0 : c)) * geo.L",
           "(n * noise_channels) * geo.L",
           (("tests/test_prologue.py", "-k", "cpp-cpu"),),
           "contiguous rows read channel 0's noise for (N, C, *) noise"),
    Mutant("cpu_prologue_map_ignores_mask", "csrc/cpu/affine_kernel.cpp",
           "    io.store(pre_activation_grad(pre_act, io.load(pre + j), gp), out + j);",
           "    io.store(gp, out + j);",
           (("tests/test_prologue.py", "-k", "cpp-cpu"),),
           "contiguous rows' backward map omits act_pre'(pre)"),
    Mutant("cpu_prologue_sums_unmasked", "csrc/cpu/affine_kernel.cpp",
           "    Vec dev = pv - m, mv = pre_activation_grad(pre_act, io.load(pre + j), Vec(1));",
           "    Vec dev = pv - m, mv = Vec(1);",
           (("tests/test_prologue.py", "-k", "cpp-cpu"),),
           "contiguous rows' masked sums take m = 1: bias and weight gradients ignore act_pre"),
    Mutant("prologue_grads_drop_shift", "csrc/row_math.h",
           "  out.grad_bias = c.g_scale * s.sum_mg + c.slope * s.sum_mdev + c.shift * s.sum_m;",
           "  out.grad_bias = c.g_scale * s.sum_mg + c.slope * s.sum_mdev;",
           (("tests/test_prologue.py", "-k", "cpp-cpu"),),
           "the bias gradient drops the map's shift term"),
    Mutant("prologue_autograd_noise_grad_unweighted", "csrc/autograd.cpp",
           "        g = g * weight->to(acc).reshape(channel_shape);",
           "        g = g * 1.0;",
           (("tests/test_prologue.py", "-k", "cpp-cpu"),),
           "the noise gradient forgets the weight (d pre / d noise = w)"),
    Mutant("epilogue_forward_leaky_as_relu", "csrc/cpu/row_kernels.h",
           "      return run(std::integral_constant<Activation, Activation::LeakyRelu>{});",
           "      return run(std::integral_constant<Activation, Activation::Relu>{});",
           (("tests/test_epilogue.py", "-k", "cpp-cpu"),),
           "the contiguous forward's leaky_relu epilogue zeroes the negative side"),
    Mutant("stream_drops_tail", "csrc/cpu/row_kernels.h",
           "  std::memcpy(dst + i, src + i, n - i);\n#else",
           "#else",
           (("tests/test_cpu_streaming.py",),),
           "a streamed output's unaligned tail is never written"),
    Mutant("stream_16bit_chunk_offset", "csrc/cpu/row_kernels.h",
           "      at::vec::convert(src + i, buf, len);",
           "      at::vec::convert(src, buf, len);",
           (("tests/test_cpu_streaming.py",),),
           "a streamed 16-bit output longer than a chunk repeats its first chunk"),
]


def _copy_tree(dest: str) -> None:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, check=True, capture_output=True).stdout.decode()
    files = [f for f in listed.split("\0") if f and os.path.isfile(os.path.join(ROOT, f))]
    files += [os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "adain_ext", "_C*.so"))]
    for f in files:
        os.makedirs(os.path.dirname(os.path.join(dest, f)) or dest, exist_ok=True)
        shutil.copy2(os.path.join(ROOT, f), os.path.join(dest, f))


def _env() -> dict:
    env = dict(os.environ, ADAIN_EXT_CUDA="0", MAX_JOBS="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    return env


def _build(repo: str) -> None:
    # One compile job, niced: the machines this runs on are shared.
    result = subprocess.run(["nice", "-n", "10", sys.executable, "setup.py", "build_ext",
                             "--inplace", "-q"], cwd=repo, env=_env(), capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise RuntimeError(f"build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def _run_tests(repo: str, runs: tuple) -> tuple[bool, str]:
    """(passed, the first failing test or the error), over pytest runs made one after another."""
    for args in runs:
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-rf", *args]
        result = subprocess.run(cmd, cwd=repo, env=_env(), capture_output=True, text=True)
        if result.returncode != 0:
            failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, flags=re.M)
            return False, failed[0] if failed else result.stdout.strip().splitlines()[-1]
    return True, ""


def _apply(repo: str, m: Mutant) -> str:
    path = os.path.join(repo, m.path)
    with open(path) as f:
        original = f.read()
    if original.count(m.old) != 1:
        raise RuntimeError(f"{m.name}: the text to mutate is not in {m.path} exactly once")
    with open(path, "w") as f:
        f.write(original.replace(m.old, m.new))
    return original


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="names of the mutants to run")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--keep", action="store_true", help="keep the copy (its path is printed)")
    parser.add_argument("--baseline", action="store_true",
                        help="first run every chosen mutant's tests unmutated (they must pass)")
    args = parser.parse_args()
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:36} {m.path:32} {m.why}")
        return 0
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    unknown = set(args.only or ()) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"unknown mutants: {sorted(unknown)}")
    # Python mutants first: they run on the copied build; each C++ mutant rebuilds.
    chosen.sort(key=lambda m: m.needs_build)
    began = time.time()
    workdir = tempfile.mkdtemp(prefix="adain_mutants_")
    repo = os.path.join(workdir, "repo")
    _copy_tree(repo)
    print(f"copy: {repo}", flush=True)
    rows = []
    try:
        if args.baseline:
            runs = list(dict.fromkeys(run for m in chosen for run in m.tests))
            passed, failure = _run_tests(repo, tuple(runs))
            if not passed:
                print(f"baseline: {failure} fails without any mutant; fix that first")
                return 2
            print("baseline: every run passes unmutated", flush=True)
        for m in chosen:
            start = time.time()
            original = _apply(repo, m)
            try:
                if m.needs_build:
                    _build(repo)
                passed, caught_by = _run_tests(repo, m.tests)
            finally:
                with open(os.path.join(repo, m.path), "w") as f:
                    f.write(original)
            verdict = "SURVIVED" if passed else "caught"
            rows.append((m.name, verdict, caught_by, time.time() - start))
            print(f"{m.name}: {verdict} {caught_by} ({time.time() - start:.0f} s)", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"| {'mutant':36} | {'result':8} | caught by")
    print(f"|{'-' * 38}|{'-' * 10}|{'-' * 40}")
    for name, verdict, caught_by, _ in rows:
        print(f"| {name:36} | {verdict:8} | {caught_by}")
    print(f"\n{len(rows)} mutants in {(time.time() - began) / 60:.1f} minutes")
    return 1 if any(v == "SURVIVED" for _, v, _, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
