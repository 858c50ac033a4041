"""Runs the CUDA kernels' source (csrc/cuda) on the CPU through a small CUDA emulation, and checks
every op against the CPU kernels (and the float64 reference where the two differ), for every case
of tests/cases.py plus cases that force each kernel path, on three emulated devices; and the
affine op's output activations (relu, leaky_relu) and its prologue (noise, noise_weight, bias,
pre_activation), forward and backward, on every path, against the float64 reference.

    python tools/cuda_emu/run.py            # all devices (a few minutes on 2 cores)
    python tools/cuda_emu/run.py quick      # one small device
    python tools/cuda_emu/run.py prologue   # the prologue cases only (measure: with their errors)
    python tools/cuda_emu/run.py sweep      # launch limits only, over a sweep of shapes

A development aid for machines without a GPU, not a test and not a substitute for
tests/test_cuda.py on a real GPU: it executes the real kernel and host code (indexing, slot
masking, reductions and their order, shared-memory caching, path selection, launch geometry),
but not the GPU memory model, vector-load alignment faults or compiler behaviour.

How: the .cu/.cuh files are copied into a build folder with the launch syntax and the few CUDA
runtime calls rewritten (see generate()), compiled as host C++ with emu_cuda.h, and loaded as a
torch extension that exposes the op functions directly.
"""

from __future__ import annotations

import os
import re
import sys
import time

import torch
import torch.utils.cpp_extension as cpp_extension

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BUILD = os.path.join(ROOT, "build", "cuda_emu")
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from cases import CASES, TOLERANCES, Case, make_inputs, make_statistics  # noqa: E402

from adain_ext import reference  # noqa: E402

# Every file of csrc/cuda is rewritten: a header left out would be included unrewritten from csrc.
CUDA_SRC = os.path.join(ROOT, "csrc", "cuda")
SOURCES = sorted(name for name in os.listdir(CUDA_SRC) if name.endswith((".cu", ".cuh", ".h")))
LAUNCH = re.compile(r"([\w:]+(?:<[^<>;]*>)?)<<<([^,]+),\s*([^,]+),\s*([^,]+),\s*[^>]*>>>\((.*)\);")


def generate() -> str:
    out = os.path.join(BUILD, "src", "cuda")
    os.makedirs(out, exist_ok=True)
    for name in SOURCES:
        with open(os.path.join(CUDA_SRC, name)) as f:
            s = f.read()
        s = s.replace("extern __shared__", "extern")
        s = LAUNCH.sub(r"emu_launch(\1, \2, \3, \4, \5);", s)
        s = s.replace("at::cuda::getCurrentDeviceProperties()", "emu_props()")
        s = s.replace("c10::cuda::current_device()", "emu_device_index")
        s = s.replace("C10_CUDA_CHECK(", "EMU_CUDA_CHECK(")
        s = s.replace("cudaFuncSetAttribute(", "emu_cudaFuncSetAttribute(")
        s = s.replace("cudaFuncGetAttributes(", "emu_cudaFuncGetAttributes(")
        s = s.replace("c10::cuda::CUDAStreamCaptureModeGuard", "EmuCaptureModeGuard")
        s = s.replace("C10_CUDA_KERNEL_LAUNCH_CHECK();", "")
        s = re.sub(r"const c10::cuda::CUDAGuard guard\([^;]*\);", "", s)
        s = re.sub(r"TORCH_LIBRARY_(IMPL|FRAGMENT)\(adain, (CUDA, )?m\) \{.*?\n\}\n", "", s,
                   flags=re.S)
        for header in (
            "ATen/cuda/CUDAContext.h",
            "c10/cuda/CUDAGuard.h",
            "c10/cuda/CUDAFunctions.h",
            "c10/cuda/CUDAGraphsC10Utils.h",
        ):
            s = s.replace(f"#include <{header}>", "")
        with open(os.path.join(out, name), "w") as f:
            f.write(s)
    main = os.path.join(BUILD, "emu_ext.cpp")
    with open(main, "w") as f:
        f.write("""#include <torch/extension.h>
#include "emu_cuda.h"
#include "checks.h"
#include "cuda/mean_std_kernel.cu"
#include "cuda/affine_kernel.cu"
#include "cuda/fused_kernel.cu"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("set_device", &emu_set_device);
  m.def("set_dry_run", &emu_set_dry_run);
  m.def("launches", [] { return emu_launches; });
  m.def("last_launch", &adain::cuda::last_launch);
  m.def("mean_std", &adain::cuda::mean_std_cuda);
  m.def("mean_std_backward", &adain::cuda::mean_std_backward_cuda);
  // The affine ops with their schema's defaults (activation "none"; the backward's target mean
  // only with an activation).
  m.def("affine_forward",
        [](const at::Tensor& x, const at::Tensor& mean, const at::Tensor& std, double alpha,
           double eps, bool unbiased, const std::string& activation, double negative_slope) {
          return adain::cuda::affine_forward(x, mean, std, alpha, eps, unbiased, activation,
                                             negative_slope);
        },
        py::arg("x"), py::arg("mean"), py::arg("std"), py::arg("alpha"), py::arg("eps"),
        py::arg("unbiased"), py::arg("activation") = "none", py::arg("negative_slope") = 0.01);
  m.def("affine_backward",
        [](const at::Tensor& g, const at::Tensor& x, const at::Tensor& mean_x,
           const at::Tensor& std_x, const at::Tensor& std, double alpha, bool unbiased,
           const std::optional<at::Tensor>& mean, const std::string& activation,
           double negative_slope) {
          return adain::cuda::affine_backward_cuda(g, x, mean_x, std_x, std, alpha, unbiased,
                                                   mean, activation, negative_slope);
        },
        py::arg("grad_out"), py::arg("x"), py::arg("mean_x"), py::arg("std_x"), py::arg("std"),
        py::arg("alpha"), py::arg("unbiased"), py::arg("mean") = py::none(),
        py::arg("activation") = "none", py::arg("negative_slope") = 0.01);
  m.def("fused_forward", &adain::cuda::fused_forward_cuda);
  m.def("prologue_affine_forward",
        [](const at::Tensor& x, const std::optional<at::Tensor>& noise,
           const std::optional<at::Tensor>& noise_weight, const std::optional<at::Tensor>& bias,
           const std::string& pre_activation, double pre_negative_slope, const at::Tensor& mean,
           const at::Tensor& std, double eps, bool unbiased, const std::string& activation,
           double negative_slope) {
          return adain::cuda::prologue_affine_forward(x, noise, noise_weight, bias, pre_activation,
                                                      pre_negative_slope, mean, std, eps, unbiased,
                                                      activation, negative_slope);
        });
  m.def("prologue_affine_backward",
        [](const at::Tensor& g, const at::Tensor& x, const std::optional<at::Tensor>& noise,
           const std::optional<at::Tensor>& noise_weight, const std::optional<at::Tensor>& bias,
           const std::string& pre_activation, double pre_negative_slope, const at::Tensor& mean_p,
           const at::Tensor& std_p, const at::Tensor& mean, const at::Tensor& std, bool unbiased,
           const std::string& activation, double negative_slope) {
          return adain::cuda::prologue_affine_backward(g, x, noise, noise_weight, bias,
                                                       pre_activation, pre_negative_slope, mean_p,
                                                       std_p, mean, std, unbiased, activation,
                                                       negative_slope);
        });
}
""")
    return main


def build():
    main = generate()
    cuda_include = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "include")
    return cpp_extension.load(
        "adain_cuda_emu",
        [main],
        build_directory=BUILD,
        extra_include_paths=[
            os.path.join(BUILD, "src"),
            HERE,
            os.path.join(ROOT, "csrc"),
            cuda_include,
        ],
        extra_cflags=["-O1", "-std=c++20", "-pthread", "-w"],
    )


def close(actual, expected, dtype):
    atol, rtol = TOLERANCES[dtype]
    scale = max(1.0, expected.double().abs().max().item()) if expected.numel() else 1.0
    try:
        torch.testing.assert_close(
            actual.double(), expected.double(), atol=atol * scale, rtol=rtol, equal_nan=True
        )
    except AssertionError as error:
        return str(error).splitlines()[2:4]
    return None


def run_case(emu, case, dtype):
    """Problems found (empty: all fine)."""
    ops = torch.ops.adain
    problems = []

    def compare(what, got, want, ref=None):
        for a, b, name in zip(got, want, what):
            if a.stride() != b.stride() or a.dtype != b.dtype or a.shape != b.shape:
                problems.append(
                    f"{name}: layout {a.shape}/{a.stride()}/{a.dtype} vs "
                    f"{b.shape}/{b.stride()}/{b.dtype}"
                )
            elif (err := close(a, b, dtype)) and (ref is None or close(a, ref, dtype)):
                problems.append(f"{name}: {err}")
            ref = None  # only the first output has a float64 reference here

    content, style = make_inputs(case, dtype)
    mean, std = make_statistics(case, dtype)
    eps, unbiased, alpha = 1e-5, case.unbiased, case.alpha
    compare(
        ["mean", "std"], emu.mean_std(content, eps, unbiased), ops.mean_std(content, eps, unbiased)
    )
    want = ops._affine_forward(content, mean, std, alpha, eps, unbiased)
    xd = content.double()
    empty = content.numel() == 0  # the reference cannot reshape empty tensors
    ref = (
        None
        if empty
        else alpha * reference.adain_affine(xd, mean.double(), std.double(), eps, unbiased)
        + (1 - alpha) * xd
    )
    compare(
        ["affine out", "mean_x", "std_x"],
        emu.affine_forward(content, mean, std, alpha, eps, unbiased),
        want,
        ref,
    )
    g = torch.randn(content.shape, generator=torch.Generator().manual_seed(5)).to(dtype)
    args = (g, content, want[1], want[2], std, alpha, unbiased)
    compare(
        ["grad x", "grad mean", "grad std"], emu.affine_backward(*args), ops._affine_backward(*args)
    )
    ref = None if empty else reference.adain(xd, style.double(), alpha, eps, unbiased)
    compare(
        ["fused out", "content mean", "content std", "style mean", "style std"],
        emu.fused_forward(content, style, alpha, eps, unbiased),
        ops._fused_forward(content, style, alpha, eps, unbiased),
        ref,
    )
    m, s = ops.mean_std(style, eps, unbiased)
    gm, gs = torch.randn_like(m), torch.randn_like(s)
    compare(
        ["grad style"],
        [emu.mean_std_backward(gm, gs, style, m, s, unbiased)],
        [ops._mean_std_backward(gm, gs, style, m, s, unbiased)],
    )
    return problems


# The affine op's output activation, in every launch path of the 4-SM device: packed rows, a
# block per row, split rows (L off the slot grid) and channels_last with several segments per
# row and C off the vector width. Each runs relu and leaky_relu, forward and backward, and
# checks the path it took (launch.cuh's LaunchPath; the same on every emulated device).
ACTIVATION_CASES = [
    Case("act_packed", (2, 24, 5, 7), alpha=0.7),
    Case("act_rows", (2, 4, 40, 40), unbiased=False),
    Case("act_split", (1, 1, 129, 131), alpha=0.6),
    Case("act_cl_split", (1, 5, 33, 34), alpha=0.8, layout="channels_last"),
]
ACTIVATION_PATH = {"act_packed": 1, "act_rows": 2, "act_split": 4, "act_cl_split": 5}
ACTIVATIONS = [("relu", 0.01), ("leaky_relu", 0.2)]


def forward_y(x, mean_x, std_x, mean, std, alpha):
    """The affine output before its activation, as the kernels compute it in the accumulation
    dtype, op by op (affine_forward_coef, then apply_coef), from the forward's statistics: the
    y whose sign picks each element's activation gradient."""
    acc = mean_x.dtype
    shape = (*mean_x.shape, *([1] * (x.dim() - 2)))
    mx, sx = mean_x.view(shape), std_x.view(shape)
    mt, st = mean.reshape(shape).to(acc), std.reshape(shape).to(acc)
    a = torch.tensor(alpha, dtype=acc)

    def blend(target, own):
        return target if alpha == 1 else a * target + (1 - a) * own

    return blend(st, sx) / sx * (x.to(acc) - mx) + blend(mt, mx)


def run_activation_case(emu, case, dtype):
    """The affine op with each activation, forward and backward, against the float64 reference:
    the forward is reference.activate of the blended reference output; the backward is the
    reference's gradient of that output times each element's activation slope at the kernels'
    own y (forward_y), so that an element with y within rounding of 0 cannot flip the
    comparison. relu is also held bitwise to the kernels without an epilogue: relu of their
    output, and their gradients for g zeroed where y <= 0 (g_y in every sum and in the map).
    Problems found (empty: all fine)."""
    problems = []
    x, _ = make_inputs(case, dtype)
    mean, std = make_statistics(case, dtype)
    eps, unbiased, alpha = 1e-5, case.unbiased, case.alpha
    N, C = x.shape[:2]
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(5)).to(dtype)
    g = g.contiguous(memory_format=torch.channels_last) if case.layout == "channels_last" else g
    layout = torch.empty_like(x).stride()
    xr, mr, sr = (t.detach().double().requires_grad_(True) for t in (x, mean, std))
    blended = alpha * reference.adain_affine(xr, mr, sr, eps, unbiased) + (1 - alpha) * xr
    ref_mean, ref_std = (t.flatten(1) for t in reference.mean_std(xr.detach(), eps, unbiased))
    acc = torch.float64 if dtype == torch.float64 else torch.float32

    def check_path(name):
        path, *_, segments = emu.last_launch()
        want = ACTIVATION_PATH[case.name]
        if path != want or (want >= 4 and segments < 2):
            problems.append(f"{name}: path {path} with {segments} segments, expected {want}")

    def check(name, got, want, stride=None, want_dtype=None):
        if stride is not None and got.stride() != stride:
            problems.append(f"{name}: strides {got.stride()}, expected {stride}")
        elif got.dtype != want_dtype or got.shape != want.shape:
            problems.append(f"{name}: {got.shape}/{got.dtype}, expected {want.shape}/{want_dtype}")
        elif err := close(got, want, dtype):
            problems.append(f"{name}: {err}")

    for activation, slope in ACTIVATIONS:
        out, mean_x, std_x = emu.affine_forward(x, mean, std, alpha, eps, unbiased, activation,
                                                slope)
        check_path(f"{activation} forward")
        want = reference.activate(blended.detach(), activation, slope)
        check(f"{activation} out", out, want, layout, dtype)
        check(f"{activation} mean_x", mean_x, ref_mean, None, acc)
        check(f"{activation} std_x", std_x, ref_std, None, acc)
        y = forward_y(x, mean_x, std_x, mean, std, alpha)
        below = torch.tensor(0.0 if activation == "relu" else slope, dtype=torch.float64)
        factor = torch.where(y <= 0, below, torch.tensor(1.0, dtype=torch.float64))
        rgx, rgm, rgs = torch.autograd.grad(blended * factor, (xr, mr, sr), g.double(),
                                            retain_graph=True)
        gx, gm, gs = emu.affine_backward(g, x, mean_x, std_x, std, alpha, unbiased, mean,
                                         activation, slope)
        check_path(f"{activation} backward")
        check(f"{activation} grad x", gx, rgx, layout, dtype)
        check(f"{activation} grad mean", gm, rgm.reshape(N, C), None, acc)
        check(f"{activation} grad std", gs, rgs.reshape(N, C), None, acc)
        if activation == "relu":
            plain = emu.affine_forward(x, mean, std, alpha, eps, unbiased)[0]
            g_y = torch.where(y <= 0, torch.zeros_like(g), g)
            plain_grads = emu.affine_backward(g_y, x, mean_x, std_x, std, alpha, unbiased)
            for name, got, want in [("out", out, torch.relu(plain)),
                                    *zip(("grad x", "grad mean", "grad std"), (gx, gm, gs),
                                         plain_grads)]:
                if not torch.equal(got, want):
                    problems.append(f"relu {name}: not bitwise the kernels' without an epilogue")
    return problems


# The affine op's prologue (pre = x + noise_weight * noise + bias, p = pre_activation(pre)) on
# every launch path: packed rows off the slot grid (so (N, 1, *) noise rows start off it too), a
# block per row (3-D), split rows, channels_last split (5-D, C off the vector width). Each runs
# the PROLOGUE_VARIANTS it names (the long rows fewer: emulation is slow): (noise (N, C, *) /
# (N, 1, *) / none, noise_weight (C,) / one value / none, bias, pre_activation, the epilogue
# activation), forward and backward.
PROLOGUE_CASES = [
    (Case("pro_packed", (2, 24, 5, 7)), 1, (0, 1, 2, 3)),
    (Case("pro_rows", (2, 2, 1200), unbiased=False), 2, (1, 2)),
    (Case("pro_split", (1, 1, 129, 131)), 4, (0, 1)),
    (Case("pro_cl_split", (2, 5, 3, 11, 34), layout="channels_last"), 5, (0, 1, 2, 3)),
]
PROLOGUE_VARIANTS = [
    ("C", "C", True, ("leaky_relu", 0.2), ("none", 0.01)),
    ("1", "C", True, ("relu", 0.01), ("leaky_relu", 0.2)),
    (None, None, True, ("leaky_relu", 0.2), ("relu", 0.01)),
    ("C", "1", False, ("none", 0.01), ("none", 0.01)),
]


def prologue_inputs(case, dtype, variant):
    """x, noise, noise_weight, bias, the target statistics and g of a prologue case."""
    x, _ = make_inputs(case, dtype)
    mean, std = make_statistics(case, dtype)
    N, C, *rest = x.shape
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    gen = torch.Generator().manual_seed(11 + sum(map(ord, case.name)))
    noise_kind, weight_kind, with_bias, _, _ = variant
    noise = weight = bias = None
    if noise_kind is not None:
        noise = torch.randn(N, C if noise_kind == "C" else 1, *rest, generator=gen).to(dtype)
        if noise_kind == "C" and case.layout == "channels_last":
            noise = torch.empty_like(x).copy_(noise)  # x's strides
    if weight_kind is not None:
        weight = (torch.randn(C if weight_kind == "C" else 1, generator=gen) * 0.8).to(acc)
    if with_bias:
        bias = (torch.randn(C, generator=gen) * 0.8).to(acc)
    g = torch.empty_like(x).copy_(torch.randn(x.shape, generator=gen)).to(dtype)
    return x, noise, weight, bias, mean, std, g


def run_prologue_case(emu, case, dtype, want_path, variants, errors=None):
    """_prologue_affine_forward and _backward against the float64 reference: the forward against
    reference.adain_affine with the prologue arguments; the backward against autograd through the
    same graph, with pre written out so that per-(n, c) zero tensors added to it (z, and zw times
    the noise) give the rows' bias and noise_weight gradients. `errors`: a dict to record each
    output's largest error in units of its tolerance (run.py measure). Problems found."""
    problems = []
    eps, unbiased = 1e-5, case.unbiased
    acc = torch.float64 if dtype == torch.float64 else torch.float32

    def check(name, what, got, want, stride=None, want_dtype=acc):
        if stride is not None and [s for s, n in zip(got.stride(), got.shape) if n > 1] != [
                s for s, n in zip(stride, got.shape) if n > 1]:  # a size-1 dim's is moot
            problems.append(f"{name} {what}: strides {got.stride()}, expected {stride}")
        elif got.dtype != want_dtype or got.shape != want.shape:
            problems.append(f"{name} {what}: {got.shape}/{got.dtype}, expected "
                            f"{want.shape}/{want_dtype}")
        else:
            if errors is not None:
                atol, rtol = TOLERANCES[dtype]
                scale = max(1.0, want.abs().max().item())
                err = ((got.double() - want).abs() / (atol * scale + rtol * want.abs())).max()
                errors[what] = max(errors.get(what, 0.0), err.item())
            if err := close(got, want, dtype):
                problems.append(f"{name} {what}: {err}")

    def check_path(name, what):
        path, *_, segments = emu.last_launch()
        if path != want_path or (want_path >= 4 and segments < 2):
            problems.append(f"{name} {what}: path {path} with {segments} segments, "
                            f"expected {want_path}")

    for variant in (PROLOGUE_VARIANTS[i] for i in variants):
        x, noise, weight, bias, mean, std, g = prologue_inputs(case, dtype, variant)
        pre_act, pre_slope = variant[3]
        act, slope = variant[4]
        name = f"noise={variant[0]} w={variant[1]} bias={variant[2]} pre={pre_act} act={act}"
        N, C = x.shape[:2]
        row = (N, C) + (1,) * (x.dim() - 2)
        per_c = (1, C) + (1,) * (x.dim() - 2)
        xd = x.detach().double().requires_grad_(True)
        md, sd = (t.detach().double().requires_grad_(True) for t in (mean, std))
        z = torch.zeros(row, dtype=torch.float64, requires_grad=True)
        zw = torch.zeros(row, dtype=torch.float64, requires_grad=True)
        nd = None if noise is None else noise.double()
        wd = None if weight is None else weight.double()
        bd = None if bias is None else bias.double()
        pre = xd + z
        if nd is not None:
            w = 1.0 if wd is None else (wd.view(per_c) if wd.numel() == C else wd)
            pre = pre + w * nd + zw * nd
        if bd is not None:
            pre = pre + bd.view(per_c)
        p = reference.activate(pre, pre_act, pre_slope)
        out_ref = reference.adain_affine(p, md, sd, eps, unbiased, act, slope)
        oracle = reference.adain_affine(x.double(), mean.double(), std.double(), eps, unbiased,
                                        act, slope, noise=nd, noise_weight=wd, bias=bd,
                                        pre_activation=pre_act, pre_negative_slope=pre_slope)
        assert torch.allclose(out_ref, oracle, atol=1e-12), "the test's graph is not the oracle's"
        ref_mean, ref_std = (t.detach().flatten(1) for t in reference.mean_std(p, eps, unbiased))
        grads = torch.autograd.grad(out_ref, (xd, md, sd, z, zw), g.double(), allow_unused=True)
        grads = [torch.zeros(row, dtype=torch.float64) if t is None else t for t in grads]

        out, mean_p, std_p = emu.prologue_affine_forward(
            x, noise, weight, bias, pre_act, pre_slope, mean, std, eps, unbiased, act, slope)
        check_path(name, "forward")
        check(name, "out", out, oracle, x.stride(), dtype)
        check(name, "mean_p", mean_p, ref_mean)
        check(name, "std_p", std_p, ref_std)
        gx, gm, gs, gb, gw = emu.prologue_affine_backward(
            g, x, noise, weight, bias, pre_act, pre_slope, mean_p, std_p, mean, std, unbiased, act,
            slope)
        check_path(name, "backward")
        check(name, "grad x", gx, grads[0], x.stride(), dtype)
        for what, got, want in zip(("grad mean", "grad std", "grad bias", "grad noise_weight"),
                                   (gm, gs, gb, gw), grads[1:]):
            check(name, what, got, want.reshape(N, C))
    return problems


def check_activation_errors(emu) -> int:
    """The activation's input errors come from the CUDA entry points too. Returns failures."""
    x = torch.randn(1, 2, 3, 3)
    stat = torch.ones(1, 2)
    failures = 0
    for what, call, message in (
        ("backward without the target mean",
         lambda: emu.affine_backward(x, x, stat, stat, stat, 1.0, True, None, "relu", 0.01),
         "needs the target mean"),
        ("unknown activation",
         lambda: emu.affine_forward(x, stat, stat, 1.0, 1e-5, True, "gelu", 0.01),
         "activation must be"),
        ("non-finite negative_slope",
         lambda: emu.affine_forward(x, stat, stat, 1.0, 1e-5, True, "leaky_relu", float("nan")),
         "negative_slope must be"),
    ):
        try:
            call()
            error = "no error"
        except Exception as raised:  # noqa: BLE001 (pybind11 maps c10 errors to several types)
            error = str(raised)
        if message not in error:
            failures += 1
            print(f"BAD activation error, {what}: {error.splitlines()[0] if error else error}")
    return failures


# Smaller than tests/test_cuda.py's PATH_CASES (emulation is slow); the small emulated device
# (4 SMs) sends the long rows here to the split path.
PATH_CASES = [
    Case("packed_4x4", (4, 64, 4, 4)),
    Case("packed_odd_rows", (3, 20, 7, 9), alpha=0.4),
    Case("packed_style_bigger", (2, 40, 8, 8), style=(2, 40, 16, 16)),
    Case("one_launch_rows", (2, 10, 32, 32)),
    Case("split_long_rows", (1, 2, 160, 160)),
    Case("split_unaligned", (1, 3, 129, 131), alpha=0.6),
    Case("split_style_only", (2, 4, 6, 6), style=(2, 4, 130, 130)),
    Case("fused_style_longer", (2, 8, 4, 4), style=(2, 8, 32, 32)),
    Case("cl_wide", (2, 64, 8, 8), layout="channels_last"),
    Case("cl_odd_channels", (2, 5, 33, 65), unbiased=False, layout="channels_last"),
    Case("cl_split", (1, 16, 64, 64), alpha=0.8, layout="channels_last"),
    Case("large_mean_split", (1, 2, 130, 130), mean_offset=1e4),
    Case("large_mean_cl", (2, 8, 40, 40), mean_offset=1e4, layout="channels_last"),
    Case("empty_n", (0, 3, 4, 4)),
]
# (SMs, shared memory per SM, per-block opt-in): a tiny device, H100, A100.
DEVICES = [(4, 233472, 232448), (132, 233472, 232448), (108, 167936, 166912)]


def sweep_launch_limits(emu) -> int:
    """Every op on row lengths across every launch-geometry threshold (packed rows, block rows,
    the 48 KiB shared-memory opt-in of each dtype and cached-tensor count, the opt-in ceiling,
    split rows) and both layouts, on each emulated device, with launches checked against the
    hardware limits (grid, block, static + dynamic shared memory, opt-in) but not executed.
    Returns the number of failing calls."""
    emu.set_dry_run(True)
    failures = calls = 0
    lengths = sorted(set(range(2, 70000, 61)) | {16383, 16384, 24576, 65536})
    try:
        for device in DEVICES:
            emu.set_device(*device)
            for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
                acc = torch.float64 if dtype == torch.float64 else torch.float32
                for layout, rows_list, lens in (
                    ("contiguous", (1, 7, 300), lengths),
                    ("channels_last", (8, 300), lengths[::16]),
                ):
                    for rows in rows_list:
                        for L in lens:
                            n, c = (rows, 1) if layout == "contiguous" else (rows // 8 or 1, 8)
                            x = torch.empty(n, c, 1, L, dtype=dtype)
                            if layout == "channels_last":
                                x = x.contiguous(memory_format=torch.channels_last)
                            stat = torch.empty(n, c, dtype=acc)
                            target = torch.ones(n, c, 1, 1, dtype=dtype)
                            style_long = torch.empty(n, c, 1, 2 * L + 1, dtype=dtype)
                            noise = torch.empty_like(x)
                            bias = torch.zeros(c, dtype=acc)
                            calls_here = [
                                ("mean_std", emu.mean_std, (x, 1e-5, True)),
                                ("affine_forward", emu.affine_forward,
                                 (x, target, target, 0.5, 1e-5, True)),
                                ("affine_backward", emu.affine_backward,
                                 (x, x, stat, stat, target, 0.5, True)),
                                ("affine_forward leaky_relu", emu.affine_forward,
                                 (x, target, target, 0.5, 1e-5, True, "leaky_relu", 0.2)),
                                ("affine_backward relu", emu.affine_backward,
                                 (x, x, stat, stat, target, 0.5, True, target, "relu", 0.01)),
                                # The prologue's most shared memory (x, g and noise cached)
                                # with its 512-thread groups; its forward caches two of them.
                                ("prologue_affine_backward", emu.prologue_affine_backward,
                                 (x, x, noise, None, bias, "relu", 0.01, stat, stat, target,
                                  target, True, "leaky_relu", 0.2)),
                                ("fused_forward", emu.fused_forward, (x, x, 0.5, 1e-5, True)),
                                ("fused_forward long style", emu.fused_forward,
                                 (x, style_long, 0.5, 1e-5, True)),
                                ("mean_std_backward", emu.mean_std_backward,
                                 (stat, stat, x, stat, stat, True)),
                            ]
                            for name, op, args in calls_here:
                                calls += 1
                                try:
                                    op(*args)
                                except RuntimeError as error:
                                    failures += 1
                                    if failures <= 30:
                                        message = str(error).splitlines()[0]
                                        print(f"BAD sms={device[0]} {name} {dtype} {layout} "
                                              f"rows={rows} L={L}: {message}", flush=True)
    finally:
        emu.set_dry_run(False)
    print(f"cuda_emu sweep: {failures} of {calls} calls broke a launch limit, "
          f"{emu.launches()} launches checked")
    return failures


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "all"
    emu = build()
    if mode == "sweep":
        return 1 if sweep_launch_limits(emu) else 0
    if mode in ("prologue", "measure"):  # the prologue cases only (measure: and their errors)
        failures, errors = 0, {}
        emu.set_device(*DEVICES[0])
        for case, path, variants in PROLOGUE_CASES:
            for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
                start = time.time()
                here = {} if mode == "measure" else None
                problems = run_prologue_case(emu, case, dtype, path, variants, here)
                failures += bool(problems)
                print(f"{'BAD' if problems else 'ok '} {case.name} {dtype} "
                      f"{time.time() - start:.1f}s", flush=True)
                for p in problems:
                    print("   ", p)
                if here is not None:
                    print("    errors / tolerance:",
                          ", ".join(f"{k} {v:.3f}" for k, v in here.items()))
        print(f"cuda_emu prologue: {failures} failing case/dtype combinations")
        return 1 if failures else 0
    quick = mode == "quick"
    failures = check_activation_errors(emu)
    for device in DEVICES[:1] if quick else DEVICES:
        emu.set_device(*device)
        for case, run in [(c, run_case) for c in CASES + PATH_CASES] + [
            (c, run_activation_case) for c in ACTIVATION_CASES
        ] + [
            (c, lambda emu, c, dtype, path=path, variants=variants:
             run_prologue_case(emu, c, dtype, path, variants))
            for c, path, variants in PROLOGUE_CASES
        ]:
            for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
                start = time.time()
                problems = run(emu, case, dtype)
                failures += bool(problems)
                print(
                    f"{'BAD' if problems else 'ok '} sms={device[0]} {case.name} {dtype} "
                    f"{time.time() - start:.1f}s",
                    flush=True,
                )
                for p in problems:
                    print("   ", p)
    print(
        f"cuda_emu: {failures} failing case/dtype/device combinations, "
        f"{emu.launches()} kernel launches emulated"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
