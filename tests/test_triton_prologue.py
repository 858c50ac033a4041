"""The affine op's prologue in the Triton kernels: adain_affine(x, mean, std, ..., noise=,
noise_weight=, bias=, pre_activation=, pre_negative_slope=) normalises p = pre_activation(x +
noise_weight * noise + bias) (adain_triton::_prologue_affine_forward / _backward).

Outputs and the gradients of x, noise, noise_weight, bias, mean and std against the float64 oracle
(reference.adain_affine with the same prologue, differentiated by autograd), on a compact set of
cases that between them cover: noise (N, 1, *), (N, C, *) and none; noise_weight (C,), (1, C, 1, 1),
(1,) and 0-d; pre_activation none / relu / leaky_relu; the epilogue none / relu / leaky_relu; both
layouts and a 3-D input; whole rows in one program and rows split across programs; fp32, fp16 and
bf16 (the kernels load 16-bit data and compute in fp32: no bf16 arithmetic, which the interpreter
gets wrong). Then opcheck of both ops, float64 gradcheck, the create_graph=True composite, forward
mode AD and vmap. Every row length here is odd, so masked tile entries exist on every path (where
pre is the bias, not data: a mask missing from a sum of the backward shows up in grad_bias).
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from cases import Case, assert_close, assert_grads_close, assert_layout_like, make_tensor

from adain_ext import reference

triton = pytest.importorskip("triton")
T = pytest.importorskip("adain_ext.triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@dataclasses.dataclass(frozen=True)
class Prologue:
    name: str
    shape: tuple
    layout: str = "contiguous"
    noise_channels: int | None = 1  # None: no noise
    weight_shape: tuple | None = "C"  # "C": (C,); "C4": (1, C, 1, ...); (1,), (): one value; None
    bias_shape: str | None = "C"
    pre_activation: str = "leaky_relu"
    pre_negative_slope: float = 0.2
    activation: str = "none"
    negative_slope: float = 0.2
    path: str = "packed"  # "packed" (whole rows) or "split" (rows across programs)
    unbiased: bool = True

    def __str__(self):
        return self.name


CASES = [
    # StyleGAN's: noise broadcast over channels, per-channel weight, bias, LeakyReLU(0.2).
    Prologue("stylegan", (2, 3, 5, 7)),
    Prologue("per_element_noise_channels_last", (2, 4, 5, 3), "channels_last", noise_channels=4,
             weight_shape="C4", bias_shape="C4", pre_activation="relu",
             activation="leaky_relu", unbiased=False),
    Prologue("bias_only", (2, 3, 7, 5), noise_channels=None, weight_shape=None,
             activation="relu"),
    Prologue("noise_without_weight", (2, 3, 9), noise_channels=3, weight_shape=None,
             bias_shape=None, pre_activation="none"),
    Prologue("split", (2, 3, 9, 7), noise_channels=3, weight_shape=(), path="split",
             activation="leaky_relu"),
    Prologue("split_channels_last", (2, 4, 7, 5), "channels_last", noise_channels=1,
             weight_shape=(1,), pre_activation="none", path="split"),
    Prologue("split_no_noise_relu", (1, 3, 45), noise_channels=None, weight_shape=None,
             pre_activation="relu", activation="leaky_relu", path="split"),
]


def _path_limits(path: str, length: int) -> dict:
    """Thresholds that send rows of this length across several programs (as test_triton.py's
    "split" path), or the defaults (whole rows in one program, packed)."""
    if path == "packed":
        return {}
    length_p2 = triton.next_power_of_2(length)
    return {"max_tile": max(1, length_p2 // 2), "stream_tile": max(2, length_p2 // 4),
            "cl_rows": 2, "min_segment": max(1, length_p2 // 8), "programs": 1024}


def _inputs(case: Prologue, dtype=torch.float32, param_dtype=torch.float32, seed=0):
    """(x, mean, std, noise, noise_weight, bias, grad_out), every tensor a leaf needing grad."""
    tag = Case(case.name, case.shape, layout=case.layout)
    N, C = case.shape[:2]
    rest = len(case.shape) - 2
    x = make_tensor(case.shape, tag, dtype, DEVICE, seed, requires_grad=True)
    noise = None
    if case.noise_channels is not None:
        noise = make_tensor((N, case.noise_channels, *case.shape[2:]), tag, dtype, DEVICE,
                            seed + 1, requires_grad=True)
    gen = torch.Generator().manual_seed(seed + 2)

    def channel_param(shape):
        shape = {"C": (C,), "C4": (1, C, *([1] * rest))}.get(shape, shape)
        return (torch.randn(shape, generator=gen, dtype=torch.float64) + 0.5).to(
            DEVICE, param_dtype).requires_grad_()

    weight = channel_param(case.weight_shape) if case.weight_shape is not None else None
    bias = channel_param(case.bias_shape) if case.bias_shape is not None else None
    mean = torch.randn(N, C, generator=gen, dtype=torch.float64).to(DEVICE, dtype)
    std = (torch.rand(N, C, *([1] * rest), generator=gen, dtype=torch.float64) + 0.3).to(
        DEVICE, dtype)
    grad_out = torch.randn(case.shape, generator=gen, dtype=torch.float64).to(DEVICE, dtype)
    return x, mean.requires_grad_(), std.requires_grad_(), noise, weight, bias, grad_out


def _prologue_kwargs(case: Prologue, noise, weight, bias) -> dict:
    return {"noise": noise, "noise_weight": weight, "bias": bias,
            "pre_activation": case.pre_activation,
            "pre_negative_slope": case.pre_negative_slope}


def _run(case: Prologue, x, mean, std, noise, weight, bias, grad_out, fn=None):
    """(out, gradients of the given leaves) through T.adain_affine (or fn), on the case's path."""
    fn = fn or T.adain_affine
    leaves = [t for t in (x, noise, weight, bias, mean, std) if t is not None]
    length = math.prod(case.shape[2:])
    with T.limits(**_path_limits(case.path, length)):
        plan = T._common.plan(case.shape[0] * case.shape[1], length,
                              T._common.canonical_layout(x)[1], x.device, prologue=True)
        assert plan.single_pass == (case.path == "packed"), plan
        assert case.path == "packed" or plan.segments > 1, plan
        out = fn(x, mean, std, 1e-5, case.unbiased, case.activation, case.negative_slope,
                 **_prologue_kwargs(case, noise, weight, bias))
        grads = torch.autograd.grad(out, leaves, grad_out)
    return out, leaves, grads


def _check_against_oracle(case: Prologue, x, mean, std, noise, weight, bias, grad_out):
    out, leaves, grads = _run(case, x, mean, std, noise, weight, bias, grad_out)
    double = dict(zip(("x", "noise", "weight", "bias", "mean", "std"),
                      (t.detach().double().requires_grad_() if t is not None else None
                       for t in (x, noise, weight, bias, mean, std))))
    ref = reference.adain_affine(double["x"], double["mean"], double["std"], 1e-5, case.unbiased,
                                 case.activation, case.negative_slope,
                                 **_prologue_kwargs(case, double["noise"], double["weight"],
                                                    double["bias"]))
    ref_leaves = [t for t in double.values() if t is not None]
    want = torch.autograd.grad(ref, ref_leaves, grad_out.double())
    assert out.dtype == x.dtype and out.shape == x.shape
    assert_layout_like(out, x)
    assert_close(out, ref, x.dtype)
    names = [n for n, t in double.items() if t is not None]
    for name, g, w, leaf in zip(names, grads, want, leaves, strict=True):
        assert g.shape == leaf.shape and g.dtype == leaf.dtype, name
        # At the tolerance of the less precise of x's dtype and the leaf's own.
        loose = x.dtype if torch.finfo(x.dtype).eps >= torch.finfo(leaf.dtype).eps else leaf.dtype
        assert_grads_close((g.to(loose),), (w,), loose, msg=f"{case.name} grad {name}")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_prologue_matches_the_oracle(case: Prologue):
    x, mean, std, noise, weight, bias, grad_out = _inputs(case)
    if case.pre_activation != "none":  # both sides of the pre-activation's kink in every row
        pre = reference.prologue(*(t.detach().double() if t is not None else None
                                   for t in (x, noise, weight, bias)))
        rows = pre.transpose(0, 1).flatten(1)
        assert ((rows <= 0).any(1) & (rows > 0).any(1)).all()
    _check_against_oracle(case, x, mean, std, noise, weight, bias, grad_out)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", [CASES[0], CASES[4]], ids=str)
def test_prologue_16bit(case: Prologue, dtype):
    """16-bit x and noise (their gradients in 16 bits), float32 weight and bias: the prologue, the
    statistics and the map in float32, the output rounded once."""
    _check_against_oracle(case, *_inputs(case, dtype, torch.float32))


def test_prologue_without_any_tensor_is_the_plain_op_with_a_pre_activation():
    """pre_activation alone is a prologue (p = act_pre(x)); no prologue argument at all takes the
    plain affine op, bit for bit what it gave before."""
    case = Prologue("pre_activation_only", (2, 3, 5, 7), noise_channels=None, weight_shape=None,
                    bias_shape=None, pre_activation="leaky_relu", activation="relu")
    x, mean, std, _, _, _, grad_out = _inputs(case)
    _check_against_oracle(case, x, mean, std, None, None, None, grad_out)
    plain = T.adain_affine(x, mean, std, 1e-5, True, "relu")
    assert torch.equal(plain, T.affine_forward_op(x, mean, std, 1.0, 1e-5, True, "relu")[0])


def test_opcheck_prologue_ops():
    """opcheck (schema, fake kernels, autograd registration, aot dispatch) of the forward op with
    and without noise, and of the backward op with what a real forward hands it."""
    ops = torch.ops.adain_triton
    case = CASES[1]
    x, mean, std, noise, weight, bias, grad_out = _inputs(case)
    u = case.unbiased
    args = (x, noise, weight, bias, case.pre_activation, case.pre_negative_slope, mean, std,
            1e-5, u, case.activation, case.negative_slope)
    torch.library.opcheck(ops._prologue_affine_forward.default, args)
    torch.library.opcheck(ops._prologue_affine_forward.default,
                          (x, None, None, bias, "relu", 0.01, mean, std, 1e-5, u, "none", 0.01))
    with torch.no_grad():
        _out, mean_p, std_p = ops._prologue_affine_forward(*args)
    detached = [t.detach() for t in (x, noise, weight, bias)]
    torch.library.opcheck(ops._prologue_affine_backward.default,
                          (grad_out, *detached, case.pre_activation, case.pre_negative_slope,
                           mean_p, std_p, mean.detach(), std.detach(), u, case.activation,
                           case.negative_slope))


@pytest.mark.parametrize("path", ["packed", "split"])
def test_prologue_gradcheck_float64(path):
    """float64 gradcheck of every input, and the create_graph=True gradients (the reference
    composite, differentiable) against the kernels' first gradients."""
    case = Prologue("gradcheck", (1, 2, 3, 5), noise_channels=2, weight_shape=(),
                    activation="leaky_relu", path=path)
    x, mean, std, noise, weight, bias, grad_out = _inputs(case, torch.float64, torch.float64)
    kw = {"pre_activation": case.pre_activation, "pre_negative_slope": case.pre_negative_slope}

    def fn(x, noise, weight, bias, mean, std):
        return T.adain_affine(x, mean, std, 1e-5, True, "leaky_relu", 0.2, noise=noise,
                              noise_weight=weight, bias=bias, **kw)

    leaves = (x, noise, weight, bias, mean, std)
    with T.limits(**_path_limits(path, 15)):
        assert torch.autograd.gradcheck(fn, leaves, fast_mode=True)
        out = fn(*leaves)
        from_kernels = torch.autograd.grad(out, leaves, grad_out, retain_graph=True)
        from_composite = torch.autograd.grad(out, leaves, grad_out, create_graph=True)
    assert all(g.requires_grad for g in from_composite)
    assert_grads_close(from_composite, from_kernels, torch.float64)


def test_prologue_forward_mode_and_vmap():
    """torch.func.jvp takes the reference route with the prologue; torch.vmap folds the batch
    into N, weight and bias shared (vmap over them is refused, as for the compiled ops)."""
    case = CASES[0]
    x, mean, std, noise, weight, bias, _ = _inputs(case, torch.float64, torch.float64)
    x, mean, std, noise, weight, bias = (t.detach() for t in (x, mean, std, noise, weight, bias))
    kw = _prologue_kwargs(case, noise, weight, bias)
    tangent = torch.randn_like(x)
    got = torch.func.jvp(lambda x: T.adain_affine(x, mean, std, **kw), (x,), (tangent,))
    want = torch.func.jvp(lambda x: reference.adain_affine(x, mean, std, **kw), (x,), (tangent,))
    for g, w in zip(got, want):
        assert_close(g, w, torch.float64)

    xs, noises = torch.stack([x, x.flip(0)]), torch.stack([noise, noise.flip(0)])
    biases = torch.stack([bias, -bias])

    def one(x, noise, bias):
        return T.adain_affine(x, mean, std, noise=noise, noise_weight=weight, bias=bias,
                              pre_activation="leaky_relu", pre_negative_slope=0.2)

    got = torch.vmap(one, in_dims=(0, 0, None))(xs, noises, bias)
    assert_close(got, torch.stack([one(xs[i], noises[i], bias) for i in range(2)]),
                 torch.float64)
    with pytest.raises(NotImplementedError, match="vmap over noise_weight or bias"):
        torch.vmap(one)(xs, noises, biases)
