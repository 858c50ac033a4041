"""The Triton backend (adain_ext.triton, ops adain_triton::*) beyond the checks every backend gets:
the per-op contract of test_op_contract.py (gradcheck, opcheck, torch.compile, the reference's
defaults, large means, NaN/Inf, empty tensors, on CPU and on CUDA), the float64 oracle over the
shared cases (test_backends.py) and bad input (test_errors.py). Here: agreement with the C++
kernels, forced launch paths (packed rows, two passes, rows split across programs) and their
gradients, launch plans, torch.compile tracing into the kernels, autotuning, the alpha == 1 rule,
float64 divisors at the kernel level, and the affine op's output activation (relu, leaky_relu) on
every launch path, forward and backward.

Without a GPU the kernels run on CPU tensors through the Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports triton). What the interpreter cannot do (bfloat16
arithmetic, which the kernels never do; multi-config autotune; compiled kernels and torch.compile
running them) runs on CUDA only and says so in its skip reason. Without a GPU,
triton_compile_check.py lowers every kernel to a sm_90 cubin and triton_trace_check.py traces
torch.compile through the GPU registration of the ops, each in a subprocess.
"""
from __future__ import annotations

import math

import pytest
import torch
from cases import (
    CASE_DTYPES,
    CASES,
    Case,
    assert_close,
    assert_grads_close,
    assert_matches_oracle,
    double_leaves,
    make_inputs,
    make_statistics,
)

import adain_ext
from adain_ext import reference

triton = pytest.importorskip("triton")
T = pytest.importorskip("adain_ext.triton")

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
ON_INTERPRETER = T.INTERPRET
BF16_SKIP = ("bf16 through compiled kernels needs CUDA (the interpreter runs test_backends.py's bf16 cases: "
             "load, fp32 math, store; it cannot do bf16 arithmetic, which the kernels avoid)")


# bfloat16 included: the kernels only load bf16, convert to fp32 and store the result, which the
# interpreter does right (it is bf16 arithmetic it gets wrong, and the kernels do none).
CASE_DTYPE_PARAMS = CASE_DTYPES


def _inputs(case, dtype=torch.float32, requires_grad=False):
    return make_inputs(case, dtype, DEVICE, requires_grad)


def _stats(case, dtype=torch.float32, requires_grad=False, flat=False):
    return make_statistics(case, dtype, DEVICE, requires_grad, flat)


def _grad_out(shape, dtype, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


# ---- Against the C++ kernels (same device), outputs and gradients.


def _cpp_available():
    return adain_ext.HAS_CPP and adain_ext._extension.has_kernel(torch.device(DEVICE).type)


@pytest.mark.skipif(not _cpp_available(),
                    reason=f"the C++ extension is not built with {DEVICE} kernels "
                           "(ADAIN_EXT_CUDA=0 python setup.py build_ext --inplace builds it): "
                           "the Triton backend was compared with the float64 reference only")
@pytest.mark.parametrize("case,dtype", CASE_DTYPE_PARAMS)
def test_matches_cpp_kernels(case: Case, dtype):
    content, style = _inputs(case, dtype, requires_grad=True)
    mean, std = _stats(case, dtype, requires_grad=True)
    grad_out = _grad_out(content.shape, dtype, 7)
    u = case.unbiased

    def run(backend):
        out_a = adain_ext.adain(content, style, case.alpha, unbiased=u, backend=backend)
        out_f = adain_ext.adain_affine(content, mean, std, unbiased=u, backend=backend)
        m, s = adain_ext.mean_std(style, unbiased=u, backend=backend)
        grads = torch.autograd.grad((out_a, out_f, m, s), (content, style, mean, std),
                                    (grad_out, grad_out, torch.ones_like(m), torch.ones_like(s)))
        return (out_a, out_f, m, s, *grads)

    for got, want in zip(run("triton"), run("cpp")):
        assert_grads_close((got,), (want,), dtype, case)


# ---- Every launch path on tiny shapes: thresholds shrunk so packed rows, two-pass rows and rows
# split across programs (partials merged with Chan's formula) all run in the interpreter.

def _path_limits(path: str, length: int) -> dict:
    """Thresholds that send rows of this length down `path` with a handful of tiles per row (the
    interpreter runs programs one after another, so tiles are sized to the row, not to a GPU)."""
    if path == "packed":
        return {}  # the defaults: every case here fits one program, short rows packed
    length_p2 = triton.next_power_of_2(length)
    limits = {"max_tile": max(1, length_p2 // 2), "stream_tile": max(2, length_p2 // 4),
              "cl_rows": 2, "min_segment": max(1, length_p2 // 8), "programs": 1}
    if path == "split":
        limits["programs"] = 1024  # as many segments as min_segment allows: about 8 per row
    elif path == "split_uneven":  # pieces of 3 tiles of 1/8 row: the last piece is shorter
        limits.update(programs=1024, stream_tile=max(2, length_p2 // 8),
                      min_segment=max(1, 3 * length_p2 // 16))
    return limits


PATHS = ["packed", "two_pass", "split", "split_uneven"]
PATH_CASES = [c for c in CASES if c.name in ("odd_style_other_size", "alpha_biased",
                                             "channels_last", "strided", "large_mean",
                                             "long_rows", "many_rows", "sequence",
                                             "volume_channels_last")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", PATH_CASES, ids=str)
@pytest.mark.parametrize("path", PATHS)
def test_every_launch_path(path, case: Case, dtype):
    if case.name == "many_rows" and path != "packed":
        pytest.skip("256 rows of 16 in tiles of 4 would be thousands of interpreted programs; "
                    "many_rows exists to test packing")
    content, style = _inputs(case, dtype, requires_grad=True)
    mean, std = _stats(case, dtype, requires_grad=True)
    u = case.unbiased
    limits = _path_limits(path, math.prod(content.shape[2:]))
    with T.limits(**limits):
        plan = T._common.plan(content.shape[0] * content.shape[1],
                              math.prod(content.shape[2:]),
                              T._common.canonical_layout(content)[1], content.device)
        assert plan.single_pass == (path == "packed"), plan
        if path.startswith("split") and math.prod(content.shape[2:]) >= 16:
            assert plan.segments > 1, plan
        out_a = T.adain(content, style, case.alpha, unbiased=u)
        out_f = T.adain_affine(content, mean, std, unbiased=u)
        m, s = T.mean_std(content, unbiased=u)
        grad_out = _grad_out(content.shape, dtype, 8)
        got = torch.autograd.grad((out_a, out_f, m, s), (content, style, mean, std),
                                  (grad_out, grad_out, torch.ones_like(m), torch.ones_like(s)))
    c64, s64, m64, sd64 = double_leaves(content, style, mean, std)
    ref_a = reference.adain(c64, s64, case.alpha, unbiased=u)
    ref_f = reference.adain_affine(c64, m64, sd64, unbiased=u)
    rm, rs = reference.mean_std(c64, unbiased=u)
    for got_out, want in ((out_a, ref_a), (out_f, ref_f), (m, rm), (s, rs)):
        assert_close(got_out, want, dtype, case=case)
    want = torch.autograd.grad((ref_a, ref_f, rm, rs), (c64, s64, m64, sd64),
                               (grad_out.double(), grad_out.double(), torch.ones_like(rm),
                                torch.ones_like(rs)))
    assert_grads_close(got, want, dtype, case)


@pytest.mark.parametrize("style_path", ["fused_one_launch", "split"])
def test_style_much_longer_than_content(style_path):
    """Short content rows with long style rows: one launch streams the style through the content
    program's tiles, or (when the style needs splitting) style statistics come first."""
    case = Case("long_style", (2, 3, 4, 5), style=(2, 3, 24, 30), alpha=0.4, unbiased=False)
    content, style = _inputs(case, torch.float64, requires_grad=True)
    limits = {} if style_path == "fused_one_launch" else _path_limits("split", 720)
    limits["pack_tile"] = 64
    with T.limits(**limits):
        assert T._common.plan(6, 20, False, content.device).single_pass
        out = T.adain(content, style, case.alpha, unbiased=False)
        got = torch.autograd.grad(out, (content, style), torch.ones_like(out))
    c64, s64 = double_leaves(content, style)
    ref = reference.adain(c64, s64, case.alpha, unbiased=False)
    assert_close(out, ref, torch.float64)
    assert_grads_close(got, torch.autograd.grad(ref, (c64, s64), torch.ones_like(ref)), torch.float64)


def test_plans():
    """The thresholds the GPU runs with, as documented in docs/kernels.md's Triton section."""
    plan, cpu = T._common.plan, torch.device("cpu")
    with T.limits(programs=264):  # an H100: 132 SMs, 2 programs each
        p = plan(16 * 512, 64, False, cpu)  # many 8x8 rows: packed, 16 per program (512 programs)
        assert p.single_pass and p.block_r == 16 and p.block_l == 64 and p.segments == 1
        p = plan(512, 4096, False, cpu)  # 64x64 rows: one row per program, one pass
        assert p.single_pass and p.block_r == 1 and p.block_l == 4096
        p = plan(512, 1024, True, cpu)  # channels_last 32x32: 8 adjacent channels per tile
        assert p.single_pass and p.block_r == 8 and p.block_l == 1024
        p = plan(64, 512 * 512, False, cpu)  # few long rows: split, pieces >= 16384
        assert not p.single_pass and p.segments == 5 and p.segment_len >= 16384
        p = plan(2, 512 * 512, False, cpu)
        assert p.segments == 16 and p.segment_len == 16384


# ---- float64 gradcheck of rows split across programs (the plain plans: test_op_contract.py).


@pytest.mark.parametrize("path", ["two_pass", "split"])
def test_gradcheck_float64_split_rows(path):
    case = Case("gradcheck_split", (1, 2, 5, 9), style=(1, 2, 7, 6), alpha=0.6)
    content, style = _inputs(case, torch.float64, requires_grad=True)
    mean, std = _stats(case, torch.float64, requires_grad=True)
    with T.limits(**_path_limits(path, 45)):
        assert torch.autograd.gradcheck(lambda c, s: T.adain(c, s, case.alpha), (content, style),
                                        fast_mode=True)
        assert torch.autograd.gradcheck(lambda x, m, s: T.adain_affine(x, m, s),
                                        (content, mean, std), fast_mode=True)


# ---- torch.compile tracing into the kernels (no graph break, matching eager: test_op_contract.py).


@pytest.mark.skipif(not CUDA, reason="Inductor running the traced kernels needs CUDA: under "
                    "the interpreter wrap_triton hands back the InterpretedFunction, which cannot "
                    "run on fake tensors, so the ops are registered opaque there (the tracing "
                    "itself is checked on CPU by "
                    "test_torch_compile_would_trace_into_the_kernels_on_a_gpu)")
def test_torch_compile_inductor_traces_into_the_kernels():
    from torch._inductor.utils import run_and_get_code

    case = Case("inductor", (2, 4, 8, 8), style=(2, 4, 6, 6), alpha=0.7)
    content, style = _inputs(case)
    torch._dynamo.reset()
    fn = torch.compile(lambda c, s: T.adain(c, s, 0.7) * 2 + 1, fullgraph=True)
    out, code = run_and_get_code(fn, content, style)
    assert "_fused_row_kernel" in "\n".join(code)
    torch.testing.assert_close(out, T.adain(content, style, 0.7) * 2 + 1)


@pytest.mark.skipif(not CUDA, reason="recompilation is a property of compiled Triton kernels; the "
                    "interpreter compiles nothing")
def test_new_resolution_in_the_same_bucket_does_not_recompile():
    """H*W is a runtime argument: a new resolution compiles nothing when its row length is in a
    known power-of-two bucket (and has the same divisibility by 16, which triton specialises on)."""
    from triton.runtime.jit import JITFunction

    from adain_ext.triton.affine import _affine_row_kernel

    jit = _affine_row_kernel  # the JITFunction, under autotune or not
    jit = jit if isinstance(jit, JITFunction) else jit.fn

    def compiled_variants():
        return sum(len(caches[0]) for caches in jit.device_caches.values())

    def run(h, w):
        x = torch.randn(2, 3, h, w, device="cuda")
        T.adain_affine(x, torch.zeros(2, 3, device="cuda"), torch.ones(2, 3, device="cuda"))

    run(37, 47)  # H*W = 1739: the 2048 bucket, not a multiple of 16
    before = compiled_variants()
    run(43, 47)  # H*W = 2021: same bucket, not a multiple of 16
    run(41, 49)  # H*W = 2009
    assert compiled_variants() == before


def _run_check_script(name: str, *args: str):
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), name)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                          env=env, timeout=300, check=False)


@pytest.mark.skipif(CUDA, reason="on a GPU, test_torch_compile_inductor_traces_into_the_kernels "
                    "compiles and runs the traced kernels")
def test_torch_compile_would_trace_into_the_kernels_on_a_gpu():
    """The GPU registration (triton_op) traced by torch.compile on CPU fake tensors: forward and
    backward graphs of every op call the Triton kernels, none stays opaque. No kernel runs."""
    result = _run_check_script("triton_trace_check.py")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    assert result.stdout.count("ok   ") == 40  # 5 functions x 2 layouts x static/dynamic x fw/bw


@pytest.mark.skipif(CUDA, reason="on a GPU the other tests compile and run every kernel")
def test_kernels_compile_for_a_gpu_without_one():
    """The interpreter never lowers the kernels: compile each one (every dtype, both layouts) to
    a sm_90 cubin with triton's own ptxas, in a process without TRITON_INTERPRET, once as for an
    odd shape and once specialised as for a typical one, where the streaming kernels must load
    (and the output kernels store) 16 bytes per access and nothing may spill."""
    result = _run_check_script("triton_compile_check.py", "90")
    if "ptxas" in result.stdout + result.stderr and "No such file" in result.stdout:
        pytest.skip("this triton has no bundled ptxas: cannot lower to a cubin here")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    # 72 variants, and 40 of the affine kernels with an activation, x (odd shape, typical shape,
    # largest tile); and the 48 with the prologue (noise per element): 36 (fp32, bf16, fp64) at a
    # typical shape and 24 (fp32, bf16) at the largest tile; 12 with noise per position (fp32,
    # typical shape)
    assert result.stdout.count("ok   sm_90") == 336 + 36 + 24 + 12


# ---- CUDA-only dtypes and tuning.


@pytest.mark.skipif(not CUDA, reason=BF16_SKIP)
def test_bfloat16_on_cuda():
    for case in CASES:
        if case.dtypes and "bfloat16" not in case.dtypes:
            continue  # large_mean: bf16 cannot hold 1e4 + N(0, 1)
        content, style = _inputs(case, torch.bfloat16, requires_grad=True)
        out = T.adain(content, style, case.alpha, unbiased=case.unbiased)
        c64, s64 = double_leaves(content, style)
        ref = reference.adain(c64, s64, case.alpha, unbiased=case.unbiased)
        assert_close(out, ref, torch.bfloat16, case=case)
        grad_out = _grad_out(out.shape, torch.bfloat16, 9)
        got = torch.autograd.grad(out, (content, style), grad_out)
        want = torch.autograd.grad(ref, (c64, s64), grad_out.double())
        assert_grads_close(got, want, torch.bfloat16, case)


# Run in its own process with autotuning on, whatever the suite runs with (GPU test runs set
# ADAIN_EXT_TRITON_AUTOTUNE=0: tuning every key the suite reaches takes minutes).
_AUTOTUNE_CHECK = """
import torch
from adain_ext import reference
from adain_ext.triton import _common, adain
from adain_ext.triton.fused import _fused_row_kernel

assert _common.AUTOTUNE and len(_fused_row_kernel.configs) == len(_common.AUTOTUNE_WARPS)
for shape, layout, tile in (((4, 64, 32, 32), torch.contiguous_format, 1024),
                            ((1, 2, 128, 128), torch.contiguous_format, 16384),
                            ((1, 16, 32, 64), torch.channels_last, 8 * 2048)):
    content, style = (torch.randn(shape, device="cuda").contiguous(memory_format=layout)
                      for _ in range(2))
    content.requires_grad_()
    out = adain(content, style)
    tuned = sorted(c.num_warps for c in _fused_row_kernel.configs_timings)
    fits = [w for w in _common.AUTOTUNE_WARPS if w >= _common.min_warps(tile)]
    assert tuned == fits, (shape, tuned, fits)
    out.backward(torch.ones_like(out))
    want = reference.adain(content.detach().double(), style.double())
    torch.testing.assert_close(out.double(), want, atol=2e-4, rtol=2e-4)
    print("ok", shape, "benchmarked num_warps", tuned, "chose", _fused_row_kernel.best_config)
"""


@pytest.mark.skipif(not CUDA, reason="autotuning benchmarks configs on a GPU: CUDA only (the "
                    "interpreter runs each kernel with the single num_warps of its plan)")
def test_autotune_on_cuda():
    """Real autotuning: the configs that would spill a tile are never benchmarked, the tuned
    kernels give the reference's results, forward and backward."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env[T._common.AUTOTUNE_ENV] = "1"
    result = subprocess.run([sys.executable, "-c", _AUTOTUNE_CHECK], capture_output=True,
                            text=True, env=env, timeout=300, check=False,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("ok ") == 3, result.stdout


@pytest.mark.skipif(torch.cuda.device_count() < 2,
                    reason="needs two GPUs (a tensor on cuda:1 while cuda:0 is current); "
                    "test_triton_launch_limits.py checks without one that every launch makes "
                    "its tensors' device current")
def test_tensors_on_a_gpu_other_than_the_current_one():
    with torch.cuda.device(0):
        content = torch.randn(2, 3, 9, 11, device="cuda:1", requires_grad=True)
        style = torch.randn(2, 3, 7, 5, device="cuda:1")
        out = T.adain(content, style, 0.7)
        (grad,) = torch.autograd.grad(out, content, torch.ones_like(out))
    c64, s64 = double_leaves(content, style)
    ref = reference.adain(c64, s64, 0.7)
    assert_close(out, ref, torch.float32)
    want = torch.autograd.grad(ref, c64, torch.ones_like(ref))
    assert_grads_close((grad,), want, torch.float32)


# ---- Numerics and edge cases.


@pytest.mark.parametrize("path", ["split"])  # packed, the default plan: test_op_contract.py
def test_large_mean_statistics_are_accurate(path):
    x = 1e4 + torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    with T.limits(**_path_limits(path, 48 * 40)):
        _, std = T.mean_std(x.to(DEVICE))
    _, ref_std = reference.mean_std(x.double())
    assert (std.cpu().double() - ref_std).abs().max() < 1e-3


@pytest.mark.parametrize("unbiased", [True, False])
def test_float64_divisors_of_rows_longer_than_2_to_the_24(unbiased):
    """L and L - 1 must be formed in the statistics dtype: as fp32 (what `L - 1.0` gives in a
    kernel) 2**24 + 3 rounds to 2**24 + 4. Each kernel that divides by them runs one program on
    tiny buffers standing in for such a row (partial sums given, one tile of x), in float64."""
    from adain_ext.triton import _common
    from adain_ext.triton.affine import _affine_backward_apply_kernel
    from adain_ext.triton.mean_std import _mean_std_backward_kernel, _merge_stats_kernel

    L = 2**24 + 3
    D = L - 1 if unbiased else L
    f64 = {"dtype": torch.float64, "device": DEVICE}

    def vec(*values):
        return torch.tensor(values, **f64)

    flags = {"UNBIASED": unbiased, "CHANNELS_LAST": False, "BLOCK_R": 1, "BLOCK_L": 4}
    x, g = vec(0.25, -1.5, 2.0, 3.0), vec(1.0, -2.0, 0.5, 0.75)
    mean, std, m2 = vec(0.125), vec(1.75), vec(3.0e7)

    got = torch.empty(1, **f64)
    _common.launch(_merge_stats_kernel, (1,), vec(0.5), m2, torch.empty(1, **f64), got, 1, L, L,
                   1, 0.0, 0.0, 0, **flags)
    torch.testing.assert_close(got, (m2 / D).sqrt(), rtol=1e-15, atol=0)

    gm, gs = vec(3.0), vec(-2.0)
    got = torch.empty(4, **f64)
    _common.launch(_mean_std_backward_kernel, (1,), gm, gs, x, mean, std, got, 1, 1, L, 0,
                   **flags)
    torch.testing.assert_close(got, gs * (x - mean) / (D * std) + gm / L, rtol=1e-15, atol=0)

    alpha, std_t, sum_g, sum_g_dev = 0.5, vec(0.75), vec(5.0), vec(-7.0)
    got, grads = torch.empty(4, **f64), torch.empty(2, **f64)
    _common.launch(_affine_backward_apply_kernel, (1,), g, x, mean, std, None, std_t, sum_g,
                   sum_g_dev, got, grads[:1], grads[1:], 1, 1, L, 1, alpha, 0.0, 0.0, 0.0, 0,
                   ACTIVATION=0, **flags)
    g_scale = (alpha * std_t + (1 - alpha) * std) / std
    own_stats_scale = (1 - alpha) - g_scale
    want = g_scale * g + own_stats_scale * (sum_g_dev / std / D * (x - mean) / std + sum_g / L)
    torch.testing.assert_close(got, want, rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_alpha_one_takes_the_target_statistics_as_they_are(layout, dtype):
    """At alpha == 1 the target statistics are used as they are (the rule of every backend; the
    reference does no blend at all), never blended as 1 * target + 0 * own: an Inf or NaN own
    statistic would turn that into NaN. Rows with an Inf, a NaN, and a variance that overflows
    (std = Inf, finite mean: the reference gives the target mean there) match the reference,
    NaN for NaN, and leave the other rows alone; gradients match the C++ kernels."""
    case = Case("alpha_one", (2, 4, 6, 5), style=(2, 4, 3, 7), layout=layout)
    content, style = _inputs(case, dtype)
    mean, std = _stats(case, dtype)
    huge = 1e30 if dtype == torch.float32 else 1e200  # its square overflows
    content[0, 1, 2, 3] = float("inf")
    content[0, 2, 4, 1] = float("nan")
    content[1, 3] = huge * torch.tensor([1.0, -1.0], dtype=dtype).repeat(15).reshape(6, 5)
    content.requires_grad_()
    ref = {"adain": reference.adain(content.detach(), style),
           "adain_affine": reference.adain_affine(content.detach(), mean, std)}
    assert ref["adain"][1, 3].isfinite().all()  # the overflowing row is the one that tells
    got = {"adain": T.adain(content, style), "adain_affine": T.adain_affine(content, mean, std)}
    for name, out in got.items():
        assert torch.equal(out.isnan(), ref[name].isnan()), name
        finite = ref[name].isfinite()
        assert_close(out[finite], ref[name][finite], dtype)
    if _cpp_available():
        grad_out = _grad_out(content.shape, dtype, 10)
        for name, out in got.items():
            (want,) = torch.autograd.grad(getattr(adain_ext, name)(
                content, *((style,) if name == "adain" else (mean, std)), backend="cpp"),
                content, grad_out)
            (grad,) = torch.autograd.grad(out, content, grad_out)
            assert torch.equal(grad.isnan(), want.isnan()), name
            assert_close(grad[want.isfinite()], want[want.isfinite()], dtype)


# ---- The affine op's output activation (act(y), y the affine map's result): every launch path,
# forward and backward, against the float64 reference composite differentiated by autograd.

ACTIVATIONS = [pytest.param("relu", 0.01, id="relu"),
               pytest.param("leaky_relu", 0.2, id="leaky_relu_0.2"),
               pytest.param("leaky_relu", -0.3, id="leaky_relu_-0.3")]
ACTIVATION_CASES = [Case("activation", (2, 3, 5, 7)),
                    Case("activation_channels_last", (2, 4, 5, 6), layout="channels_last",
                         unbiased=False)]


def _activation_inputs(case: Case, dtype):
    x, _ = _inputs(case, dtype, requires_grad=True)
    mean, std = _stats(case, dtype, requires_grad=True)
    return x, mean, std, _grad_out(x.shape, dtype, 11)


def _check_activation(x, mean, std, grad_out, case: Case, activation, negative_slope):
    out = T.adain_affine(x, mean, std, 1e-5, case.unbiased, activation, negative_slope)
    grads = torch.autograd.grad(out, (x, mean, std), grad_out)
    assert_matches_oracle("adain_affine", (x, mean, std), out, grads, (grad_out,), x.dtype, case,
                          eps=1e-5, unbiased=case.unbiased, activation=activation,
                          negative_slope=negative_slope)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=str)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("activation,negative_slope", ACTIVATIONS)
def test_activation_every_launch_path(activation, negative_slope, path, case: Case, dtype):
    x, mean, std, grad_out = _activation_inputs(case, dtype)
    y = reference.adain_affine(*double_leaves(x, mean, std), 1e-5, case.unbiased)
    # Every row has outputs on both sides of 0: the activation and its mask both matter here.
    rows = y.transpose(0, 1).flatten(1)
    assert ((rows <= 0).any(1) & (rows > 0).any(1)).all()
    length = math.prod(x.shape[2:])
    with T.limits(**_path_limits(path, length)):
        plan = T._common.plan(x.shape[0] * x.shape[1], length,
                              T._common.canonical_layout(x)[1], x.device)
        assert plan.single_pass == (path == "packed"), plan
        assert path in ("packed", "two_pass") or plan.segments > 1, plan
        _check_activation(x, mean, std, grad_out, case, activation, negative_slope)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=str)
def test_activation_16bit(case: Case, dtype):
    """Statistics, the map and the activation in float32, the result rounded once (the reference
    rounds y, then activates in 16 bits: within the 16-bit tolerances of cases.TOLERANCES)."""
    x, mean, std, grad_out = _activation_inputs(case, dtype)
    for activation, negative_slope in (("relu", 0.01), ("leaky_relu", -0.3)):
        _check_activation(x, mean, std, grad_out, case, activation, negative_slope)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("path", ["packed", "split"])
def test_activation_of_rows_wholly_below_or_above_zero(path, dtype):
    """Rows whose outputs are all <= 0 (target mean far below the row's spread), all > 0, and
    mixed. relu gives a row below 0 exactly 0 and exactly zero gradients (x, mean and std), and a
    row above 0 exactly what no activation gives; leaky_relu scales a row below 0, its output and
    its gradients, by negative_slope. A NaN in a row makes that row NaN (relu(NaN) is NaN) and
    leaves the others alone."""
    case = Case("masked_rows", (1, 3, 6, 7))
    x, _, _, grad_out = _activation_inputs(case, dtype)
    mean = torch.tensor([[-50.0, 50.0, 0.3]], dtype=dtype, device=DEVICE, requires_grad=True)
    std = torch.ones(1, 3, dtype=dtype, device=DEVICE, requires_grad=True)

    def run(activation, negative_slope=0.01):
        out = T.adain_affine(x, mean, std, 1e-5, True, activation, negative_slope)
        return (out, *torch.autograd.grad(out, (x, mean, std), grad_out))

    with T.limits(**_path_limits(path, 42)):
        plain, relu, leaky = run("none"), run("relu"), run("leaky_relu", -0.3)
        x_nan = x.detach().clone()
        x_nan[0, 2, 3, 4] = float("nan")
        relu_nan = T.adain_affine(x_nan, mean, std, 1e-5, True, "relu")
    for name, p, r, lk in zip(("out", "grad_x", "grad_mean", "grad_std"), plain, relu, leaky):
        assert torch.count_nonzero(r[0, 0]) == 0, name
        assert torch.equal(r[0, 1], p[0, 1]), name
        assert_close(lk[0, 0], -0.3 * p[0, 0].double(), dtype, msg=name)
        assert torch.equal(lk[0, 1], p[0, 1]), name
    assert relu_nan[0, 2].isnan().all() and torch.equal(relu_nan[0, :2], relu[0][0, :2])


@pytest.mark.parametrize("path", ["packed", "split"])
@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_activation_with_alpha_and_create_graph(alpha, path):
    """The internal op with alpha != 1 activates the blended map, act(alpha * y + (1 - alpha) *
    x). Its first gradients from the kernels and from the create_graph=True composite both match
    the float64 oracle, and gradgradcheck passes through that composite."""
    case = Case("activation_alpha", (1, 2, 5, 9))
    x, mean, std, grad_out = _activation_inputs(case, torch.float64)
    op = torch.ops.adain_triton._affine_forward

    def affine(x, mean, std):
        return op(x, mean, std, alpha, 1e-5, True, "leaky_relu", -0.3)[0]

    leaves = double_leaves(x, mean, std)
    y = alpha * reference.adain_affine(*leaves) + (1.0 - alpha) * leaves[0]
    ref = reference.activate(y, "leaky_relu", -0.3)
    want = torch.autograd.grad(ref, leaves, grad_out)
    with T.limits(**_path_limits(path, 45)):
        out = affine(x, mean, std)
        assert_close(out, ref, torch.float64)
        from_kernels = torch.autograd.grad(out, (x, mean, std), grad_out, retain_graph=True)
        from_composite = torch.autograd.grad(out, (x, mean, std), grad_out, create_graph=True)
        assert all(g.requires_grad for g in from_composite)
        assert_grads_close(from_kernels, want, torch.float64, msg="kernels")
        assert_grads_close(from_composite, want, torch.float64, msg="create_graph composite")
        assert torch.autograd.gradgradcheck(affine, (x, mean, std), fast_mode=True)


def test_activation_under_forward_mode_ad():
    """torch.func.jvp takes the reference route, which must get the activation too."""
    case = Case("activation_jvp", (1, 2, 5, 6))
    x, mean, std, _ = _activation_inputs(case, torch.float64)
    x, mean, std = x.detach(), mean.detach(), std.detach()
    tangent = _grad_out(x.shape, torch.float64, 12)
    for activation, negative_slope in (("relu", 0.01), ("leaky_relu", -0.3)):
        got = torch.func.jvp(lambda x: T.adain_affine(x, mean, std, 1e-5, True, activation,
                                                      negative_slope), (x,), (tangent,))
        want = torch.func.jvp(lambda x: reference.adain_affine(x, mean, std, 1e-5, True,
                                                               activation, negative_slope),
                              (x,), (tangent,))
        for g, w in zip(got, want):
            assert_close(g, w, torch.float64)


@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=str)
def test_opcheck_with_activation(case: Case):
    """opcheck (schema, fake kernel, autograd registration, aot dispatch) of the forward and
    backward ops given an activation; the backward with what a real forward hands it."""
    ops = torch.ops.adain_triton
    x, mean, std, grad_out = _activation_inputs(case, torch.float32)
    u = case.unbiased
    for activation, negative_slope in (("relu", 0.01), ("leaky_relu", -0.3)):
        torch.library.opcheck(ops._affine_forward.default,
                              (x, mean, std, 0.6, 1e-5, u, activation, negative_slope))
        with torch.no_grad():
            _out, mean_x, std_x = ops._affine_forward(x, mean, std, 0.6, 1e-5, u, activation,
                                                      negative_slope)
        torch.library.opcheck(ops._affine_backward.default,
                              (grad_out, x.detach(), mean_x, std_x, std.detach(), 0.6, u,
                               mean.detach(), activation, negative_slope))


def test_activation_errors():
    """The op's checks, with the messages of every backend (adain_ext/_validation.py)."""
    case = Case("activation_errors", (1, 2, 3, 4))
    x, mean, std, grad_out = _activation_inputs(case, torch.float32)
    with pytest.raises(ValueError, match="activation must be 'none', 'relu' or 'leaky_relu', "
                                         "got 'gelu'"):
        T.adain_affine(x, mean, std, 1e-5, True, "gelu")
    with pytest.raises(ValueError, match="negative_slope must be a finite number, got nan"):
        T.adain_affine(x, mean, std, 1e-5, True, "leaky_relu", float("nan"))
    _out, mean_x, std_x = torch.ops.adain_triton._affine_forward(x.detach(), mean.detach(),
                                                                 std.detach(), 1.0, 1e-5, True)
    with pytest.raises(ValueError, match="needs the target mean"):
        torch.ops.adain_triton._affine_backward(grad_out, x.detach(), mean_x, std_x,
                                                std.detach(), 1.0, True, None, "relu")
