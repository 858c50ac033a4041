"""The affine op's output activation (its epilogue): adain_affine(..., activation="relu" or
"leaky_relu", negative_slope=s) is act(AdaIN(x)) in one kernel, forward and backward, on every
backend, in every layout and dtype, with exact derivatives in every autograd mode.

The reference is adain_ext.reference.adain_affine with the same activation (F.relu /
F.leaky_relu after the affine map, as StarGAN v2 and MUNIT write it), in float64.
"""
from __future__ import annotations

import pytest
import torch
from cases import (
    CASES,
    Case,
    Target,
    assert_matches_oracle,
    make_inputs,
    make_statistics,
    targets,
)

import adain_ext
from adain_ext import backends, reference

TARGETS = targets()
TARGETS_AND_REFERENCE = targets(with_reference=True)

# (activation, negative_slope): ReLU (MUNIT, AdaIN-VC), LeakyReLU(0.2) (StarGAN v2, StyleGAN) and
# a negative slope, whose negative side is increasing again (out > 0 on both sides of 0: a mask
# taken from the output instead of the recomputed pre-activation would be wrong there).
ACTIVATIONS = [("relu", 0.01), ("leaky_relu", 0.2), ("leaky_relu", -0.3)]
ACT_IDS = ["relu", "leaky0.2", "leaky-0.3"]

# Every shared case the affine op takes (rank 3-5, every layout, large means, tiny rows) except
# the two largest, in the dtypes each case runs in.
AFFINE_CASES = [c for c in CASES if c.name not in ("long_rows", "many_rows")]


def _small(case: Case) -> bool:
    """Cases the Triton interpreter runs in reasonable time (a few thousand elements)."""
    n = 1
    for d in case.content:
        n *= d
    return n <= 4096


def _namespace(target: Target):
    name = backends.REGISTRY[target.backend].op_namespace
    backends.ops(target.backend)  # importing the backend registers its ops
    return getattr(torch.ops, name)


def _inputs(case: Case, dtype, device, requires_grad=True):
    x, _ = make_inputs(case, dtype, device, requires_grad=requires_grad)
    mean, std = make_statistics(case, dtype, device, requires_grad=requires_grad)
    return x, mean, std


@pytest.mark.parametrize("activation,slope", ACTIVATIONS, ids=ACT_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16],
                         ids=["fp32", "fp64", "bf16"])
@pytest.mark.parametrize("case", AFFINE_CASES, ids=str)
@pytest.mark.parametrize("target", TARGETS)
def test_output_and_gradients_match_the_oracle(target: Target, case: Case, dtype, activation,
                                               slope):
    if case.dtypes and dtype not in case.dtypes:
        pytest.skip(f"{case} does not run in {dtype}")
    if target.backend == "triton" and target.device == "cpu" and not _small(case):
        pytest.skip("the Triton interpreter runs the small cases only")
    x, mean, std = _inputs(case, dtype, target.device)
    out = adain_ext.adain_affine(x, mean, std, unbiased=case.unbiased, activation=activation,
                                 negative_slope=slope, backend=target.backend)
    assert out.dtype == x.dtype and out.shape == x.shape
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(out)
    grads = torch.autograd.grad(out, (x, mean, std), grad_out)
    assert_matches_oracle("adain_affine", (x, mean, std), out, grads, [grad_out], dtype, case,
                          unbiased=case.unbiased, activation=activation, negative_slope=slope)


@pytest.mark.parametrize("activation,slope", ACTIVATIONS, ids=ACT_IDS)
@pytest.mark.parametrize("target", TARGETS)
def test_internal_ops_blend_then_activate(target: Target, activation, slope):
    """_affine_forward with alpha applies the activation to the blend alpha * affine + (1 - alpha)
    * x, and its backward (given the target mean) is that function's exact gradient."""
    case = Case("alpha", (2, 4, 5, 7), alpha=0.3)
    ops = _namespace(target)
    x, mean, std = _inputs(case, torch.float64, target.device)
    out, mean_x, std_x = ops._affine_forward(x, mean, std, case.alpha, 1e-5, True, activation,
                                             slope)
    leaves = [t.detach().requires_grad_() for t in (x, mean, std)]
    pre = reference.adain_affine(*leaves)
    want = reference.activate(case.alpha * pre + (1 - case.alpha) * leaves[0], activation, slope)
    torch.testing.assert_close(out, want)
    g = torch.randn_like(out)
    got = ops._affine_backward(g, x.detach(), mean_x, std_x, std.detach(), case.alpha, True,
                               mean.detach(), activation, slope)
    want_grads = torch.autograd.grad(want, leaves, g)
    for name, a, b in zip(("x", "mean", "std"), got, want_grads):
        torch.testing.assert_close(a.reshape(b.shape).to(b.dtype), b, msg=name)


@pytest.mark.parametrize("activation,slope", ACTIVATIONS, ids=ACT_IDS)
@pytest.mark.parametrize("case", [Case("odd", (2, 3, 5, 3)),
                                  Case("channels_last", (2, 5, 3, 4), layout="channels_last"),
                                  Case("alpha_seq", (2, 3, 7), unbiased=False)], ids=str)
@pytest.mark.parametrize("target", TARGETS)
def test_every_autograd_mode_is_exact(target: Target, case: Case, activation, slope):
    """gradcheck (first backward), gradgradcheck (double backward: gradient penalties) and
    forward-mode AD (jvp), all in float64 with respect to x, mean and std."""
    if target == Target("triton", "cpu") and (activation, slope) != ("leaky_relu", -0.3):
        # 10-30 s each in the interpreter (CI time); the negative slope is the one where a mask
        # from the output would be wrong, and the three layouts still run with it
        pytest.skip("the Triton interpreter runs the negative slope only here")
    x, mean, std = _inputs(case, torch.float64, target.device)

    def f(x, m, s):
        return adain_ext.adain_affine(x, m, s, unbiased=case.unbiased, activation=activation,
                                      negative_slope=slope, backend=target.backend)

    assert torch.autograd.gradcheck(f, (x, mean, std), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(f, (x, mean, std))


@pytest.mark.parametrize("activation,slope", ACTIVATIONS[:2], ids=ACT_IDS[:2])
@pytest.mark.parametrize("target", TARGETS)
def test_opcheck(target: Target, activation, slope):
    """The schemas' activation arguments through torch.library.opcheck (fake kernels, autograd
    registration, schema), the internal backward given the target mean."""
    ops = _namespace(target)
    case = Case("opcheck", (2, 3, 4, 5), layout="channels_last")
    x, mean, std = _inputs(case, torch.float32, target.device)
    torch.library.opcheck(ops._affine_forward.default,
                          (x, mean, std, 0.7, 1e-5, True, activation, slope))
    with torch.no_grad():
        _, mean_x, std_x = ops._affine_forward(x, mean, std, 0.7, 1e-5, True, activation, slope)
    torch.library.opcheck(ops._affine_backward.default,
                          (torch.randn_like(x), x.detach(), mean_x, std_x, std.detach(), 0.7, True,
                           mean.detach(), activation, slope))
    if hasattr(ops, "affine"):
        torch.library.opcheck(ops.affine.default, (x, mean, std),
                              {"activation": activation, "negative_slope": slope})


@pytest.mark.parametrize("target", TARGETS)
def test_compiled_fullgraph_matches_eager(target: Target):
    torch._dynamo.reset()
    case = Case("compile", (2, 4, 6, 6))
    x, mean, std = _inputs(case, torch.float32, target.device)

    def block(x, m, s):
        return adain_ext.adain_affine(x, m, s, activation="leaky_relu", negative_slope=0.2,
                                      backend=target.backend) * 2

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    want = block(x, mean, std)
    got = compiled(x, mean, std)
    torch.testing.assert_close(got, want)
    g = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(got, (x, mean, std), g),
                               torch.autograd.grad(want, (x, mean, std), g))


@pytest.mark.parametrize("target", TARGETS_AND_REFERENCE)
def test_bad_activation_is_named(target: Target):
    x, mean, std = _inputs(Case("bad", (1, 2, 3, 3)), torch.float32, target.device, False)
    with pytest.raises(ValueError, match="adain: activation must be 'none', 'relu' or "
                                         "'leaky_relu', got 'gelu'"):
        adain_ext.adain_affine(x, mean, std, activation="gelu", backend=target.backend)
    with pytest.raises(ValueError, match="adain: negative_slope must be a finite number, got nan"):
        adain_ext.adain_affine(x, mean, std, activation="leaky_relu",
                               negative_slope=float("nan"), backend=target.backend)


@pytest.mark.parametrize("target", TARGETS)
def test_backward_with_an_activation_needs_the_target_mean(target: Target):
    ops = _namespace(target)
    x, mean, std = _inputs(Case("m", (1, 2, 3, 3)), torch.float32, target.device, False)
    _, mean_x, std_x = ops._affine_forward(x, mean, std, 1.0, 1e-5, True, "relu", 0.0)
    with pytest.raises(ValueError, match="needs the target mean"):
        ops._affine_backward(torch.ones_like(x), x, mean_x, std_x, std, 1.0, True, None, "relu",
                             0.0)


@pytest.mark.parametrize("target", TARGETS)
def test_relu_of_minus_inf_is_zero_and_nan_passes(target: Target):
    """F.relu's values at the edges: relu(-inf) = 0 (not 0 * -inf), NaN stays NaN."""
    x = torch.tensor([[[1.0, 2.0, 4.0]], [[1.0, 2.0, 4.0]]], device=target.device)
    std = torch.tensor([[float("inf")], [1.0]], device=target.device)
    mean = torch.tensor([[0.0], [float("nan")]], device=target.device)
    out = adain_ext.adain_affine(x, mean, std, activation="relu", backend=target.backend)
    want = reference.adain_affine(x, mean, std, activation="relu")
    torch.testing.assert_close(out, want, equal_nan=True)
    assert out[0, 0, 0] == 0 and out[0, 0, 2] == float("inf") and out[1].isnan().all()


@pytest.mark.skipif(not adain_ext.HAS_CPP, reason="the compiled extension is not built")
def test_compiled_cpu_training_keeps_the_kernel_with_an_activation():
    """A compiled CPU training graph traces backend="auto" as the ATen composite when the op has
    no activation (Inductor fuses it with its neighbours, tests/test_op_contract.py), but keeps
    the kernel when the activation is its epilogue: there is no neighbour left to fuse, and the
    composite's activation would save Inductor's slow bool mask."""
    from test_op_contract import _compiled_graph_ops

    x, mean, std = _inputs(Case("compiled", (2, 4, 6, 5)), torch.float32, "cpu")

    def block(x, m, s, activation):
        return adain_ext.adain_affine(x, m, s, activation=activation, negative_slope=0.2) * 2

    assert "adain" in _compiled_graph_ops(lambda *t: block(*t, "leaky_relu"), x, mean, std)
    assert "adain" not in _compiled_graph_ops(lambda *t: block(*t, None), x, mean, std)


@pytest.mark.parametrize("target", TARGETS)
def test_vmap_matches_a_loop(target: Target):
    """The batching rule folds the vmapped dim into N, activation arguments passed through; and
    vmap of grad (per-sample gradients) through the activated op."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 2, 4, 5, 5, generator=gen).to(target.device)
    mean = torch.randn(3, 2, 4, generator=gen).to(target.device)
    std = (torch.rand(3, 2, 4, generator=gen) + 0.5).to(target.device)

    def f(x, m, s):
        return adain_ext.adain_affine(x, m, s, activation="leaky_relu", negative_slope=0.2,
                                      backend=target.backend)

    want = torch.stack([f(*args) for args in zip(x, mean, std)])
    torch.testing.assert_close(torch.vmap(f)(x, mean, std), want)
    grad = torch.vmap(torch.func.grad(lambda x, m, s: f(x, m, s).square().sum()))(x, mean, std)
    loop = torch.stack([torch.func.grad(lambda x: f(x, m, s).square().sum())(xi)
                        for xi, m, s in zip(x, mean, std)])
    torch.testing.assert_close(grad, loop)
