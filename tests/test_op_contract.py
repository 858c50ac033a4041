"""The test contract of each op (mean_std, adain_affine, adain / adain::fused), written once and run
for every (backend, device) target of the backend registry, as torchvision's RoIOpTester runs one
set of checks for every device: the C++ kernels on CPU and on CUDA, the Triton kernels on CUDA and
on CPU (through the interpreter, which tests/conftest.py switches on where no GPU is visible).
A target that cannot run here is skipped with the reason (no GPU, extension not built).

Per op: the reference's defaults, float64 gradcheck, torch.library.opcheck of the op and its
internal forward and backward ops, non-finite and empty input, and what is particular to the op
(large-mean statistics, statistics reused through adain_affine, mixed statistic shapes and dtypes,
the module form); then the three ops in one torch.compile graph. Every output and gradient against
the float64 oracle over the shared cases is in test_backends.py; bad input in test_errors.py. What
belongs to one backend stays in its file: launch paths, plans, CUDA graphs, streams, autotuning,
machine code (test_cpu_split.py, test_triton.py, test_cuda.py, test_cuda_sass.py).
"""
from __future__ import annotations

import pytest
import torch
from cases import (
    CASES,
    GRAD_CASES,
    Case,
    Target,
    assert_close,
    assert_compile_matches_eager,
    auto_is,
    check_affine_mixed_statistics,
    make_inputs,
    make_statistics,
    opcheck_samples,
    targets,
)

import adain_ext
from adain_ext import backends, reference

TARGETS = targets()
# The reference backend too where a check says no backend may differ from the others.
TARGETS_AND_REFERENCE = targets(with_reference=True)

def namespace(target: Target):
    """The backend's torch.ops namespace (the registry's op_namespace), or None for a backend that
    registers no ops. Triton registers the internal forward and backward ops only; the C++
    extension also fused, affine and _fused_backward."""
    name = backends.REGISTRY[target.backend].op_namespace
    if name is None:
        return None
    backends.ops(target.backend)  # importing the backend registers its ops
    return getattr(torch.ops, name)


def backend_names(target: Target) -> list[str]:
    """The backend= values that run this target: its own name, and "auto" where that picks it
    (so the checks of the defaults also cover the default backend)."""
    return [target.backend, *(["auto"] if auto_is(target) else [])]


def fast_gradcheck(target: Target, t: torch.Tensor) -> bool:
    """Triton checks a random projection of the Jacobian (fast_mode) beyond 64 inputs: the odd 33x17
    shapes would take minutes in the interpreter; its tiny cases still run the full Jacobian."""
    return target.backend == "triton" and t.numel() > 64


# opcheck compiles (aot_dispatch): a few cases covering every rank, both variances, alpha, other
# style sizes and every layout, in float32 and float64. 16-bit: the statistics the internal ops
# return are float32 whatever x's dtype, which only a 16-bit run tells apart from x's dtype (one
# case each: both layouts, both variances, alpha).
OPCHECK_CASES = [c for c in CASES if c.name in ("tiny", "odd_style_other_size", "alpha_biased",
                                                 "channels_last", "channels_last_alpha", "strided",
                                                 "sequence_channels_last", "volume_channels_last")]
OPCHECK_16BIT = {"alpha_biased": torch.float16, "channels_last": torch.bfloat16}
OPCHECK_PARAMS = [
    pytest.param(case, dtype, id=f"{case.name}-{str(dtype).split('.')[-1]}")
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    for case in OPCHECK_CASES
    if dtype in (torch.float32, torch.float64) or OPCHECK_16BIT.get(case.name) == dtype
]


def _opcheck(target: Target, case: Case, dtype, op_names: tuple[str, ...]):
    """opcheck of the namespace's ops among op_names (those it has), with the inputs of
    cases.opcheck_samples (the backward ops get what a real forward hands them)."""
    ops = namespace(target)
    if ops is None:
        pytest.skip(f"{target.backend} registers no torch.ops namespace (its op_namespace in adain_ext/backends.py)")
    samples = [(op, args) for op, args in opcheck_samples(ops, case, dtype, target.device)
               if op._schema.name.split("::")[1] in op_names]
    assert samples, f"{target}: none of {op_names}"
    for op, args in samples:
        torch.library.opcheck(op, args)


EMPTY_SHAPES = [(0, 3, 4, 4), (2, 0, 4, 4), (0, 0, 1, 1)]


# ---- mean_std (adain::mean_std, its backward adain::_mean_std_backward).


class TestMeanStd:
    @pytest.mark.parametrize("target", TARGETS)
    def test_defaults_are_the_reference_calc_mean_std(self, target: Target):
        content, _ = make_inputs(Case("reference", (2, 8, 12, 10), style=(2, 8, 6, 9)),
                                 torch.float64, target.device)
        for backend in backend_names(target):
            torch.testing.assert_close(adain_ext.mean_std(content, backend=backend),
                                       reference.calc_mean_std(content), msg=backend)

    @pytest.mark.parametrize("case", GRAD_CASES, ids=str)
    @pytest.mark.parametrize("target", TARGETS)
    def test_gradcheck_float64(self, target: Target, case: Case):
        content, _ = make_inputs(case, torch.float64, target.device, requires_grad=True)
        kw = dict(unbiased=case.unbiased, backend=target.backend)
        assert torch.autograd.gradcheck(lambda x: adain_ext.mean_std(x, **kw), (content,),
                                        fast_mode=fast_gradcheck(target, content))

    @pytest.mark.parametrize("case,dtype", OPCHECK_PARAMS)
    @pytest.mark.parametrize("target", TARGETS)
    def test_opcheck(self, target: Target, case: Case, dtype):
        _opcheck(target, case, dtype, ("mean_std", "_mean_std_backward"))

    @pytest.mark.parametrize("shape", [(2, 3, 128, 128), (2, 3, 48, 40)], ids=str)
    @pytest.mark.parametrize("target", TARGETS)
    def test_large_mean_statistics_are_accurate(self, target: Target, shape):
        """x = 1e4 + N(0, 1) in float32: std within 1e-3 (never the raw sum of squares)."""
        x = 1e4 + torch.randn(shape, generator=torch.Generator().manual_seed(0))
        _, std = adain_ext.mean_std(x.to(target.device), backend=target.backend)
        _, ref_std = reference.mean_std(x.double())
        assert (std.cpu().double() - ref_std).abs().max() < 1e-3

    @pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=str)
    @pytest.mark.parametrize("target", TARGETS_AND_REFERENCE)
    def test_empty_batch_or_channels(self, target: Target, shape):
        """Every backend gives empty results for N = 0 or C = 0 (none raises where another does
        not)."""
        x = torch.randn(shape, device=target.device)
        mean, std = adain_ext.mean_std(x, backend=target.backend)
        assert mean.shape == std.shape == (shape[0], shape[1], 1, 1)
        assert mean.device == x.device


# ---- adain_affine (adain::affine, adain::_affine_forward, adain::_affine_backward).


# adain_affine's target statistics may be (N, C) or (N, C, 1, 1), each in any float dtype; their
# gradients must come back in their own shape and dtype.
MIXED_STATISTICS = [  # x dtype, (mean shape, mean dtype), (std shape, std dtype)
    (torch.float32, ("NC", torch.float16), ("NC11", torch.float64)),
    (torch.bfloat16, ("NC11", torch.float32), ("NC", torch.bfloat16)),
    (torch.float16, ("NC", torch.float32), ("NC11", torch.float32)),
    (torch.float64, ("NC11", torch.float32), ("NC", torch.float64)),
]


def _mixed_id(params):
    x_dtype, (m_shape, m_dtype), (s_shape, s_dtype) = params
    x, m, s = (str(d).split(".")[-1] for d in (x_dtype, m_dtype, s_dtype))
    return f"x_{x}-mean_{m_shape}_{m}-std_{s_shape}_{s}"


class TestAdainAffine:
    @pytest.mark.parametrize("case", GRAD_CASES, ids=str)
    @pytest.mark.parametrize("target", TARGETS)
    def test_gradcheck_float64(self, target: Target, case: Case):
        """The public op, and the internal forward with the case's alpha blend (alpha * affine +
        (1 - alpha) * x); at alpha = 1 that is the call the public op makes, checked already."""
        x, _ = make_inputs(case, torch.float64, target.device, requires_grad=True)
        mean, std = make_statistics(case, torch.float64, target.device, requires_grad=True)
        u, fast = case.unbiased, fast_gradcheck(target, x)
        assert torch.autograd.gradcheck(
            lambda x, m, s: adain_ext.adain_affine(x, m, s, unbiased=u, backend=target.backend),
            (x, mean, std), fast_mode=fast)
        ops = namespace(target)
        if ops is not None and case.alpha != 1.0:
            assert torch.autograd.gradcheck(
                lambda x, m, s: ops._affine_forward(x, m, s, case.alpha, 1e-5, u)[0],
                (x, mean, std), fast_mode=fast)

    @pytest.mark.parametrize("case,dtype", OPCHECK_PARAMS)
    @pytest.mark.parametrize("target", TARGETS)
    def test_opcheck(self, target: Target, case: Case, dtype):
        _opcheck(target, case, dtype, ("affine", "_affine_forward", "_affine_backward"))

    @pytest.mark.parametrize("target", TARGETS)
    def test_style_statistics_can_be_reused_through_affine(self, target: Target):
        case = Case("reuse", (2, 6, 9, 7), style=(2, 6, 11, 5))
        content, style = make_inputs(case, device=target.device)
        for backend in backend_names(target):
            mean, std = adain_ext.mean_std(style, backend=backend)
            torch.testing.assert_close(adain_ext.adain_affine(content, mean, std, backend=backend),
                                       adain_ext.adain(content, style, backend=backend),
                                       msg=backend)

    @pytest.mark.parametrize("x_dtype,mean_like,std_like", MIXED_STATISTICS,
                             ids=[_mixed_id(p) for p in MIXED_STATISTICS])
    @pytest.mark.parametrize("target", TARGETS)
    def test_mixed_statistic_shapes_and_dtypes(self, target: Target, x_dtype, mean_like,
                                               std_like):
        case = Case("mixed", (2, 3, 9, 11), layout="channels_last")
        x, _ = make_inputs(case, x_dtype, target.device, requires_grad=True)
        N, C = case.content[:2]
        stats = make_statistics(case, torch.float64, target.device)
        mean, std = (t.detach().reshape((N, C) if shape == "NC" else (N, C, 1, 1)).to(dtype)
                     .requires_grad_() for t, (shape, dtype) in zip(stats, (mean_like, std_like)))
        check_affine_mixed_statistics(x, mean, std, target.backend, case)
        if x_dtype in (torch.float32, torch.bfloat16) and namespace(target) is not None:
            torch.library.opcheck(namespace(target)._affine_forward.default,
                                  (x, mean, std, 0.7, 1e-5, True))

    @pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=str)
    @pytest.mark.parametrize("target", TARGETS_AND_REFERENCE)
    def test_empty_batch_or_channels(self, target: Target, shape):
        x = torch.randn(shape, device=target.device)
        mean, std = adain_ext.mean_std(x, backend=target.backend)
        out = adain_ext.adain_affine(x, mean, std, backend=target.backend)
        assert out.shape == shape and out.device == x.device


# ---- adain (adain::fused, adain::_fused_forward, adain::_fused_backward).


class TestAdain:
    @pytest.mark.parametrize("target", TARGETS)
    def test_defaults_are_the_reference_adain(self, target: Target):
        content, style = make_inputs(Case("reference", (2, 8, 12, 10), style=(2, 8, 6, 9)),
                                     torch.float64, target.device)
        want = reference.adaptive_instance_normalization(content, style)
        for backend in backend_names(target):
            torch.testing.assert_close(adain_ext.adain(content, style, backend=backend), want,
                                       msg=backend)
        ops = namespace(target)
        if hasattr(ops, "fused"):  # the op itself, with its schema's defaults (None has none)
            torch.testing.assert_close(ops.fused(content, style), want)

    @pytest.mark.parametrize("case", GRAD_CASES, ids=str)
    @pytest.mark.parametrize("target", TARGETS)
    def test_gradcheck_float64(self, target: Target, case: Case):
        content, style = make_inputs(case, torch.float64, target.device, requires_grad=True)
        kw = dict(unbiased=case.unbiased, backend=target.backend)
        assert torch.autograd.gradcheck(lambda c, s: adain_ext.adain(c, s, case.alpha, **kw),
                                        (content, style),
                                        fast_mode=fast_gradcheck(target, content))

    @pytest.mark.parametrize("case,dtype", OPCHECK_PARAMS)
    @pytest.mark.parametrize("target", TARGETS)
    def test_opcheck(self, target: Target, case: Case, dtype):
        _opcheck(target, case, dtype, ("fused", "_fused_forward", "_fused_backward"))

    @pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
    @pytest.mark.parametrize("target", TARGETS)
    def test_nan_and_inf_stay_in_their_row(self, target: Target, layout):
        case = Case("nan", (2, 4, 6, 5), layout=layout)
        content, style = make_inputs(case, device=target.device)
        content[0, 1, 2, 3] = float("nan")
        style[1, 2, 0, 0] = float("inf")
        out = adain_ext.adain(content, style, backend=target.backend)
        bad = torch.zeros(2, 4, dtype=torch.bool, device=target.device)
        bad[0, 1] = bad[1, 2] = True
        assert out[bad].isnan().all()
        assert out[~bad].isfinite().all()
        clean = reference.adain(content.double(), style.double())
        assert_close(out[~bad], clean[~bad], torch.float32)

    @pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=str)
    @pytest.mark.parametrize("target", TARGETS_AND_REFERENCE)
    def test_empty_batch_or_channels(self, target: Target, shape):
        x = torch.randn(shape, device=target.device, requires_grad=True)
        style = torch.randn(shape, device=target.device)
        out = adain_ext.adain(x, style, backend=target.backend)
        assert out.shape == shape and out.device == x.device
        (grad,) = torch.autograd.grad(out.sum(), x)
        assert grad.shape == shape

    @pytest.mark.parametrize("target", TARGETS)
    def test_module_form(self, target: Target):
        case = Case("module", (2, 3, 8, 8))
        content, style = make_inputs(case, device=target.device)
        want = reference.adain(content.double(), style.double(), 0.5)
        for backend in backend_names(target):
            module = adain_ext.nn.AdaIN(alpha=0.5, backend=backend)
            assert "alpha=0.5" in repr(module)
            assert_close(module(content, style), want, torch.float32)
        if auto_is(target):  # the module's own default backend
            assert_close(adain_ext.nn.AdaIN(alpha=0.5)(content, style), want, torch.float32)


# ---- The three ops in one torch.compile graph.


class _AllOps(torch.nn.Module):
    def __init__(self, backend: str):
        super().__init__()
        self.backend = backend

    def forward(self, content, style, mean, std):
        a = adain_ext.adain(content, style, 0.8, backend=self.backend)
        b = adain_ext.adain_affine(content, mean, std, backend=self.backend)
        m, s = adain_ext.mean_std(style, backend=self.backend)
        return a + b + m + s


COMPILE_SHAPES = {  # content, style: every rank the ops take
    "4d": ((2, 4, 8, 8), (2, 4, 5, 7)),
    "3d": ((2, 4, 9), (2, 4, 5)),
    "5d": ((2, 4, 3, 4, 2), (2, 4, 2, 3, 3)),
}


@pytest.mark.parametrize("rank,layout,dtype", [("4d", "contiguous", torch.float32),
                                               ("4d", "channels_last", torch.float32),
                                               ("4d", "contiguous", torch.float16),
                                               ("4d", "channels_last", torch.bfloat16),
                                               ("3d", "contiguous", torch.float32),
                                               ("3d", "channels_last", torch.float32),
                                               ("3d", "channels_last", torch.float16),
                                               ("5d", "contiguous", torch.float32),
                                               ("5d", "channels_last", torch.float32)], ids=str)
@pytest.mark.parametrize("target", TARGETS)
def test_torch_compile_fullgraph(target: Target, rank, layout, dtype):
    """No graph break around the ops; forward and every gradient match eager (aot_eager: under
    the Triton interpreter the ops are opaque; tracing into the Triton kernels is test_triton.py's)."""
    content_shape, style_shape = COMPILE_SHAPES[rank]
    case = Case("compile", content_shape, style=style_shape, layout=layout)
    content, style = make_inputs(case, dtype, target.device, requires_grad=True)
    mean, std = make_statistics(case, dtype, target.device, requires_grad=True)
    assert_compile_matches_eager(_AllOps(target.backend), (content, style, mean, std))


@pytest.mark.parametrize("target", TARGETS)
def test_torch_compile_inductor_matches_eager(target: Target):
    case = Case("inductor", (2, 4, 8, 8), style=(2, 4, 6, 6))
    content, style = make_inputs(case, device=target.device)
    torch._dynamo.reset()

    def fn(c, s):
        return adain_ext.adain(c, s, backend=target.backend) * 2 + 1

    compiled = torch.compile(fn, fullgraph=True)
    torch.testing.assert_close(compiled(content, style), fn(content, style))


# ---- Every autograd mode: double backward, forward-mode AD, vmap (every op, every target).
# Each derivative is exact or an error: never the silent zero of an op whose backward kernels carry
# no graph, or whose autograd registration never sees a tangent.

MODE_CASES = [  # small: gradgradcheck takes the numerical Jacobian of the gradient
    Case("modes", (2, 3, 4, 5), style=(2, 3, 3, 4), alpha=0.6),
    Case("modes_channels_last_biased", (2, 2, 3, 4), style=(2, 2, 5, 2), unbiased=False,
         layout="channels_last"),
    Case("modes_sequence", (1, 3, 7), style=(1, 3, 4)),
]
MODE_OPS = ("mean_std", "adain", "adain_affine")


def op_and_inputs(op: str, case: Case, target: Target, dtype=torch.float64, backend=None):
    """(function of the op's tensor inputs, those inputs requiring grad) for one op and case."""
    backend = backend or target.backend
    content, style = make_inputs(case, dtype, target.device, requires_grad=True)
    kw = dict(unbiased=case.unbiased, backend=backend)
    if op == "mean_std":
        return (lambda x: adain_ext.mean_std(x, **kw)), (content,)
    if op == "adain":
        return (lambda c, s: adain_ext.adain(c, s, case.alpha, **kw)), (content, style)
    mean, std = make_statistics(case, dtype, target.device, requires_grad=True)
    return (lambda x, m, s: adain_ext.adain_affine(x, m, s, **kw)), (content, mean, std)


def _outputs(out):
    return out if isinstance(out, tuple) else (out,)


def _random_like(tensors, seed=1):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device) for t in tensors)


class TestEveryAutogradMode:
    @pytest.mark.parametrize("case", MODE_CASES, ids=str)
    @pytest.mark.parametrize("op", MODE_OPS)
    @pytest.mark.parametrize("target", TARGETS_AND_REFERENCE)
    def test_gradgradcheck_float64(self, target: Target, op, case: Case):
        fn, inputs = op_and_inputs(op, case, target)
        assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=fast_gradcheck(target, inputs[0]))

    @pytest.mark.parametrize("case", MODE_CASES, ids=str)
    @pytest.mark.parametrize("target", TARGETS)
    def test_gradgradcheck_internal_affine_with_alpha(self, target: Target, case: Case):
        """The alpha blend of the internal forward (the fused op's), differentiated twice."""
        ops = namespace(target)
        x, _ = make_inputs(case, torch.float64, target.device, requires_grad=True)
        mean, std = make_statistics(case, torch.float64, target.device, requires_grad=True)
        assert torch.autograd.gradgradcheck(
            lambda x, m, s: ops._affine_forward(x, m, s, case.alpha, 1e-5, case.unbiased)[0],
            (x, mean, std), fast_mode=fast_gradcheck(target, x))

    @pytest.mark.parametrize("op", MODE_OPS)
    @pytest.mark.parametrize("target", TARGETS)
    def test_double_backward_matches_the_reference(self, target: Target, op):
        """A gradient penalty: grad(loss, inputs, create_graph=True), then the gradient of its
        squared norm, against the reference's (the same float64 inputs)."""
        case = MODE_CASES[0]

        def penalty_grads(backend):
            fn, inputs = op_and_inputs(op, case, target, backend=backend)
            weights = _random_like(_outputs(fn(*inputs)), seed=2)
            loss = sum((o * w).sum() for o, w in zip(_outputs(fn(*inputs)), weights))
            grads = torch.autograd.grad(loss, inputs, create_graph=True)
            # allow_unused: adain_affine's gradient to mean does not depend on mean
            return torch.autograd.grad(sum(g.square().sum() for g in grads), inputs,
                                       allow_unused=True, materialize_grads=True)

        with warnings_as_errors():
            got = penalty_grads(target.backend)
        want = penalty_grads("reference")
        assert sum(w.abs().sum() for w in want) > 0
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)

    @pytest.mark.parametrize("case", MODE_CASES, ids=str)
    @pytest.mark.parametrize("op", MODE_OPS)
    @pytest.mark.parametrize("target", TARGETS_AND_REFERENCE)
    def test_forward_ad_gradcheck_float64(self, target: Target, op, case: Case):
        fn, inputs = op_and_inputs(op, case, target)
        assert torch.autograd.gradcheck(fn, inputs, check_forward_ad=True,
                                        check_backward_ad=False, check_undefined_grad=False,
                                        check_batched_grad=False,
                                        fast_mode=fast_gradcheck(target, inputs[0]))

    @pytest.mark.parametrize("op", MODE_OPS)
    @pytest.mark.parametrize("target", TARGETS)
    def test_jvp_and_jacfwd_match_the_reference(self, target: Target, op):
        case = MODE_CASES[1]
        fn, inputs = op_and_inputs(op, case, target)
        ref, _ = op_and_inputs(op, case, target, backend="reference")
        primals = tuple(t.detach() for t in inputs)
        tangents = _random_like(primals)
        out, tangent = torch.func.jvp(fn, primals, tangents)
        want_out, want_tangent = torch.func.jvp(ref, primals, tangents)
        for got, want in zip(_outputs(tangent), _outputs(want_tangent)):
            assert want.abs().sum() > 0
            torch.testing.assert_close(got, want)
        torch.testing.assert_close(out, want_out)
        argnums = tuple(range(len(primals)))
        torch.testing.assert_close(torch.func.jacfwd(fn, argnums)(*primals),
                                   torch.func.jacrev(ref, argnums)(*primals))

    @pytest.mark.parametrize("op", MODE_OPS)
    @pytest.mark.parametrize("target", TARGETS_AND_REFERENCE)
    def test_vmap_matches_a_loop(self, target: Target, op):
        """vmap over a batch of 3 calls (every input batched, then only the first), and per-call
        gradients (vmap of grad), against a Python loop."""
        case = MODE_CASES[0]
        calls = [op_and_inputs(op, case, target, torch.float32) for _ in range(3)]
        fn = calls[0][0]
        batched = [torch.stack([inputs[i].detach() * (k + 1) for k, (_, inputs) in
                                enumerate(calls)]) for i in range(len(calls[0][1]))]
        for in_dims in ((0,) * len(batched), (0, *([None] * (len(batched) - 1)))):
            args = [b if d is not None else b[0] for b, d in zip(batched, in_dims)]
            with warnings_as_errors():
                got = torch.vmap(fn, in_dims=in_dims)(*args)
            loop = [fn(*[a[k] if d is not None else a for a, d in zip(args, in_dims)])
                    for k in range(3)]
            for j, got_j in enumerate(_outputs(got)):
                torch.testing.assert_close(got_j, torch.stack([_outputs(o)[j] for o in loop]))

        def loss(*inputs):
            return sum((o * o).sum() for o in _outputs(fn(*inputs)))

        argnums = tuple(range(len(batched)))
        got = torch.vmap(torch.func.grad(loss, argnums))(*batched)
        for k in range(3):
            want = torch.func.grad(loss, argnums)(*[b[k] for b in batched])
            for g, w in zip(got, want):
                torch.testing.assert_close(g[k], w, rtol=1e-4, atol=1e-5)

    @pytest.mark.parametrize("target", [t for t in TARGETS if t.values[0].backend == "cpp"])
    def test_backward_ops_refuse_a_graph(self, target: Target):
        """The backward kernels' results carry no graph: building one through them is an error
        that names the op (not a silent zero), while the forward ops differentiate twice."""
        case = MODE_CASES[0]
        x, _ = make_inputs(case, torch.float64, target.device, requires_grad=True)
        mean, std = make_statistics(case, torch.float64, target.device)
        out, mean_x, std_x = torch.ops.adain._affine_forward(x, mean, std, 1.0, 1e-5, True)
        with pytest.raises(RuntimeError, match="adain::_affine_backward is not differentiable"):
            torch.ops.adain._affine_backward(torch.ones_like(out), x, mean_x, std_x, std, 1.0,
                                             True)
        with pytest.raises(RuntimeError, match="adain::_mean_std_backward is not differentiable"):
            torch.ops.adain._mean_std_backward(mean_x, std_x, x, mean_x, std_x, True)


class warnings_as_errors:
    """A derivative that may be wrong or slow fails: the warning "an autograd kernel was not
    registered" (torch's fallback, which gives zeros) is an error, and so is vmap's per-sample
    fallback (no batching rule). Other libraries' deprecation warnings (the Triton interpreter's,
    on some numpy) pass."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.filterwarnings("error", message=".*autograd kernel was not registered")
        # vmap's per-sample fallback warns only when asked; switched off, a missing rule raises.
        self._fallback = torch._C._functorch._is_vmap_fallback_enabled()
        torch._C._functorch._set_vmap_fallback_enabled(False)

    def __exit__(self, *exc):
        torch._C._functorch._set_vmap_fallback_enabled(self._fallback)
        return self._catch.__exit__(*exc)


@pytest.mark.parametrize("target", TARGETS_AND_REFERENCE)
def test_first_call_inside_torch_compile_is_one_graph(target: Target):
    """The function API resolves its backend on a call's first use (adain_ext.functional's cache):
    that first use may be inside torch.compile(fullgraph=True), which must trace it."""
    from adain_ext import functional

    case = Case("first_call", (2, 4, 6, 5), style=(2, 4, 3, 4))
    content, style = make_inputs(case, device=target.device)
    mean, std = make_statistics(case, device=target.device)
    saved = dict(functional._SERVED)
    functional._SERVED.clear()
    torch._dynamo.reset()
    try:
        model = _AllOps(target.backend)
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(content, style, mean, std),
                                   model(content, style, mean, std))
    finally:
        functional._SERVED.update(saved)


def _compiled_graph_ops(fn, *inputs, no_grad=False) -> set:
    """The namespaces of the ops in the graph torch.compile traces of fn (no Inductor: the graph
    as dynamo records it), and fn's compiled output against its eager output."""
    namespaces = set()

    def recording(gm, example_inputs):
        for node in gm.graph.nodes:
            if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverloadPacket | torch._ops.OpOverload):
                namespaces.add(node.target.namespace)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=recording, fullgraph=True)
    with torch.no_grad() if no_grad else torch.enable_grad():
        torch.testing.assert_close(compiled(*inputs), fn(*inputs))
    return namespaces


@pytest.mark.skipif(not adain_ext.HAS_CPP, reason="the compiled extension is not built")
def test_compiled_cpu_training_traces_the_composite(monkeypatch):
    """backend="auto" in a compiled CPU training graph is the ATen composite, which Inductor fuses
    with the neighbours (beside the opaque op it stores an activation's bool mask slowly); an
    inference graph, an explicit backend and the switch turned off keep the compiled kernels."""
    from adain_ext import functional

    case = Case("compiled_training", (2, 4, 6, 5), style=(2, 4, 3, 4))
    content, style = make_inputs(case, requires_grad=True)
    mean, std = make_statistics(case, requires_grad=True)

    def block(c, s, m, sd, backend="auto"):
        a = torch.nn.functional.leaky_relu(adain_ext.adain(c, s, 0.8, backend=backend), 0.2)
        b = adain_ext.adain_affine(c, m, sd, backend=backend)
        return a + b + sum(adain_ext.mean_std(s, backend=backend))

    inputs = (content, style, mean, std)
    assert "adain" not in _compiled_graph_ops(block, *inputs)
    assert "adain" in _compiled_graph_ops(block, *inputs, no_grad=True)
    assert "adain" in _compiled_graph_ops(lambda *t: block(*t, backend="cpp"), *inputs)
    frozen = tuple(t.detach() for t in inputs)  # nothing requires grad: an inference graph
    assert "adain" in _compiled_graph_ops(block, *frozen)
    monkeypatch.setattr(functional, "COMPOSITE_IN_COMPILED_CPU_TRAINING", False)
    assert "adain" in _compiled_graph_ops(block, *inputs)


@pytest.mark.skipif(not adain_ext.HAS_CPP, reason="the compiled extension is not built")
def test_compiled_cpu_training_traces_the_prologue_as_composite(monkeypatch):
    """With the prologue (StyleGAN's noise, bias, LeakyReLU) compiled CPU training traces the
    composite, prologue and all, for x below PROLOGUE_KERNEL_BYTES; from there up, or with an
    epilogue activation too, it keeps the kernel (the composite's activation would store
    Inductor's slow mask)."""
    from adain_ext import functional

    case = Case("compiled_prologue", (2, 4, 6, 5))
    x, _ = make_inputs(case, requires_grad=True)
    mean, std = make_statistics(case, requires_grad=True)
    noise = torch.randn(2, 1, 6, 5)
    weight = torch.randn(4, requires_grad=True)

    def layer(x, mean, std, weight, activation=None):
        return adain_ext.adain_affine(x, mean, std, noise=noise, noise_weight=weight,
                                      pre_activation="leaky_relu", pre_negative_slope=0.2,
                                      activation=activation)

    inputs = (x, mean, std, weight)
    assert "adain" not in _compiled_graph_ops(layer, *inputs)
    assert "adain" in _compiled_graph_ops(lambda *t: layer(*t, activation="relu"), *inputs)
    assert "adain" in _compiled_graph_ops(layer, *inputs, no_grad=True)
    monkeypatch.setattr(functional, "PROLOGUE_KERNEL_BYTES", x.nbytes + 1)
    assert "adain" not in _compiled_graph_ops(layer, *inputs)
    monkeypatch.setattr(functional, "PROLOGUE_KERNEL_BYTES", x.nbytes)  # x is this large: kernel
    assert "adain" in _compiled_graph_ops(layer, *inputs)


@pytest.mark.parametrize("case", GRAD_CASES, ids=str)
def test_compiled_training_composite_is_the_reference(case: Case):
    """The composite compiled CPU training traces (var_mean and rsqrt, for Inductor) gives the
    reference's values and gradients: float64, every shared case, every op, with an activation
    for adain_affine; and the reference's errors."""
    from adain_ext.backends import CompiledTrainingComposite as composite

    content, style = make_inputs(case, torch.float64, requires_grad=True)
    mean, std = make_statistics(case, torch.float64, requires_grad=True)
    u = case.unbiased
    prologue = {"bias": mean[0].reshape(-1), "pre_activation": "leaky_relu",
                "pre_negative_slope": 0.2}
    if style.shape == content.shape:
        prologue.update(noise=style, noise_weight=std[0].reshape(-1))
    pairs = [
        (composite.mean_std(style, 1e-5, u), reference.mean_std(style, 1e-5, u)),
        (composite.adain(content, style, case.alpha, 1e-5, u),
         reference.adain(content, style, case.alpha, 1e-5, u)),
        (composite.adain_affine(content, mean, std, 1e-5, u, "leaky_relu", 0.2),
         reference.adain_affine(content, mean, std, 1e-5, u, "leaky_relu", 0.2)),
        # the prologue, with style standing in for per-element noise where the shapes agree
        (composite.adain_affine(content, mean, std, 1e-5, u, **prologue),
         reference.adain_affine(content, mean, std, 1e-5, u, **prologue)),
    ]
    for got, want in pairs:
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)
            leaves = (content, style, mean, std)
            grad_out = torch.randn_like(w)
            for a, b in zip(torch.autograd.grad(g, leaves, grad_out, retain_graph=True,
                                                allow_unused=True),
                            torch.autograd.grad(w, leaves, grad_out, retain_graph=True,
                                                allow_unused=True)):
                assert (a is None) == (b is None)
                if a is not None:
                    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="adain: eps must be >= 0"):
        composite.adain_affine(content, mean, std, -1.0, u)
