"""The affine op's prologue: adain_affine(x, mean, std, noise=, noise_weight=, bias=,
pre_activation=, pre_negative_slope=) normalises p = pre_activation(x + noise_weight * noise +
bias) in one kernel, forward and backward (StyleGAN's noise injection and LeakyReLU before its
AdaIN), on every backend, layout, rank and dtype, with gradients to every input and exact
derivatives in every autograd mode.

The oracle is adain_ext.reference.adain_affine with the same keyword arguments, in float64.
"""
from __future__ import annotations

import pytest
import torch
from cases import (
    CASES,
    TOLERANCES,
    Case,
    _gradient_floor,
    Target,
    assert_close,
    assert_compile_matches_eager,
    assert_grads_close,
    double_leaves,
    make_inputs,
    make_statistics,
    targets,
)

import adain_ext
from adain_ext import backends, reference

TARGETS = targets()
TARGETS_AND_REFERENCE = targets(with_reference=True)


def _small(case: Case) -> bool:
    """Cases the Triton interpreter runs in reasonable time (a few thousand elements)."""
    n = 1
    for d in case.content:
        n *= d
    return n <= 4096


# name -> (noise channels: None (no noise), 1 or "C"; noise_weight: None, "C" or 1 value;
#          bias: None, "C" or "1C1" ((1, C, 1, ...)); pre_activation, its slope; the epilogue)
CONFIGS = {
    # rosinality's StyleGAN: NoiseInjection ((N, 1, H, W) noise, (1, C, 1, 1) weight), LeakyReLU
    "stylegan": (1, "C", None, "leaky_relu", 0.2, "none"),
    # every input: per-element noise, one weight for all channels, a bias, ReLU, LeakyReLU after
    "all": ("C", 1, "C", "relu", 0.01, "leaky_relu"),
    # stylegan2's fused bias + LeakyReLU before the op, noise added as it is (no weight), ReLU after
    "bias_act": (1, None, "1C1", "leaky_relu", 0.2, "relu"),
    # a negative slope: the sign of p no longer tells the side of pre (the mask must come from
    # the recomputed pre), no noise
    "negative_slope": (None, None, "C", "leaky_relu", -0.3, "none"),
}

# The shared cases: every layout and rank, tiny rows, large means, few long rows (split).
PROLOGUE_CASES = [c for c in CASES if c.name in (
    "tiny", "odd", "channels_last", "strided", "large_mean", "long_rows", "sequence",
    "sequence_channels_last", "volume", "volume_channels_last")]


def _prologue_inputs(case: Case, config: str, dtype, device, requires_grad=True):
    """(x, mean, std) and the prologue's keyword arguments, every tensor a leaf."""
    noise_c, weight, bias, pre_act, pre_slope, act = CONFIGS[config]
    x, _ = make_inputs(case, dtype, device, requires_grad=requires_grad)
    mean, std = make_statistics(case, dtype, device, requires_grad=requires_grad)
    N, C, *rest = case.content
    gen = torch.Generator().manual_seed(11 + sum(map(ord, case.name + config)))

    def leaf(*shape):
        t = torch.randn(shape, generator=gen, dtype=torch.float64).to(device, dtype)
        return t.requires_grad_(requires_grad)

    kwargs = {"pre_activation": pre_act, "pre_negative_slope": pre_slope}
    if noise_c is not None:
        kwargs["noise"] = leaf(N, C if noise_c == "C" else 1, *rest)
        if case.layout == "channels_last" and noise_c == "C":  # noise in x's layout
            kwargs["noise"] = kwargs["noise"].detach().to(memory_format=_memory_format(x))
            kwargs["noise"].requires_grad_(requires_grad)
    if weight is not None:
        kwargs["noise_weight"] = leaf(C) if weight == "C" else leaf(1)
    if bias is not None:
        kwargs["bias"] = leaf(C) if bias == "C" else leaf(1, C, *([1] * len(rest)))
    return (x, mean, std), kwargs, act


def _memory_format(x):
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim(), torch.contiguous_format)


_PROLOGUE_KEYS = ("noise", "noise_weight", "bias")


def _check_against_oracle(target_backend, case, dtype, config, device):
    (x, mean, std), kwargs, act = _prologue_inputs(case, config, dtype, device)
    out = adain_ext.adain_affine(x, mean, std, unbiased=case.unbiased, activation=act,
                                 negative_slope=0.2, backend=target_backend, **kwargs)
    assert out.dtype == x.dtype and out.shape == x.shape
    tensors = [x, mean, std] + [kwargs[k] for k in _PROLOGUE_KEYS if k in kwargs]
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(out)
    grads = torch.autograd.grad(out, tensors, grad_out)
    for g, t in zip(grads, tensors):
        assert g.shape == t.shape and g.dtype == t.dtype

    leaves = double_leaves(*tensors)
    ref_kwargs = dict(kwargs)
    for k, leaf in zip([k for k in _PROLOGUE_KEYS if k in kwargs], leaves[3:]):
        ref_kwargs[k] = leaf
    want = reference.adain_affine(*leaves[:3], 1e-5, case.unbiased, act, 0.2, **ref_kwargs)
    assert_close(out, want, dtype, case=case)
    want_grads = torch.autograd.grad(want, leaves, grad_out.double())
    names = ["x", "mean", "std"] + [k for k in _PROLOGUE_KEYS if k in kwargs]
    for name, g, w in zip(names, grads, want_grads):
        if name in ("bias", "noise_weight"):
            _assert_sum_close(name, g, w, want_grads[0], ref_kwargs.get("noise"), dtype, case)
        else:
            assert_grads_close((g,), (w,), dtype, case, msg=f"grad of {name}")


def _assert_sum_close(name, got, want, grad_x, noise, dtype, case):
    """A per-channel gradient is a sum over N and the row of dL/dpre (times the noise for
    noise_weight): its rounding error is relative to the sum of the terms' magnitudes, not to the
    result, which cancels to ~0 where the normalisation removes the parameter (a bias without a
    pre-activation: the exact gradient is 0, a float32 one ~1e-4 of the terms)."""
    terms = grad_x.abs() * (noise.detach().abs() if name == "noise_weight" else 1.0)
    per_channel = terms.transpose(0, 1).flatten(1).sum(1)
    bound = (per_channel.sum() if got.numel() == 1 else per_channel.max()).item()
    bound = max(bound, _gradient_floor(case, grad_x))  # degenerate rows: a residue of size 1-10
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol,
                               atol=atol * bound, msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16],
                         ids=["fp32", "fp64", "bf16"])
@pytest.mark.parametrize("case", PROLOGUE_CASES, ids=str)
@pytest.mark.parametrize("target", TARGETS)
def test_output_and_gradients_match_the_oracle(target: Target, case: Case, dtype, config):
    if case.dtypes and str(dtype).removeprefix("torch.") not in case.dtypes:
        pytest.skip(f"{case} does not run in {dtype}")
    if target.backend == "triton" and target.device == "cpu" and (
            not _small(case) or dtype != torch.float32):
        pytest.skip("the Triton interpreter runs the small fp32 cases only here "
                    "(its 16-bit arithmetic is tested in test_triton_16bit.py)")
    _check_against_oracle(target.backend, case, dtype, config, target.device)


@pytest.mark.parametrize("config", ["stylegan", "all"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_split_rows_on_cpu(config, layout):
    """Few long rows on several threads: every reduction and map of the CPU kernels splits each
    unit into segments, whose masked prologue sums must merge like the affine op's."""
    if not backends.REGISTRY["cpp"].why_unavailable("cpu") is None:
        pytest.skip("the C++ extension is not built")
    case = Case(f"split_{layout}", (1, 3, 256, 256), layout=layout)
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    torch.ops.adain._cpu_segment_log(True)
    try:
        _check_against_oracle("cpp", case, torch.float64, config, "cpu")
        segments = torch.ops.adain._cpu_segment_log(False)
    finally:
        torch.set_num_threads(threads)
    assert segments and min(segments) > 1, f"no split: {segments}"


def _tiny(device, dtype=torch.float64):
    case = Case("tiny_prologue", (2, 3, 4, 5))
    return _prologue_inputs(case, "all", dtype, device)


@pytest.mark.parametrize("config", ["all", "stylegan", "negative_slope"])
@pytest.mark.parametrize("target", TARGETS_AND_REFERENCE)
def test_gradcheck_gradgradcheck_and_forward_ad(target: Target, config):
    """float64 first and second derivatives to every input, and forward-mode AD (jvp), against
    finite differences and the oracle: exact, never silently zero."""
    if target == Target("triton", "cpu"):  # 20-36 s each in the interpreter (CI time)
        pytest.skip("tests/test_triton_prologue.py runs gradcheck and jvp of the Triton kernels")
    (x, mean, std), kwargs, act = _prologue_inputs(Case("tiny_prologue", (2, 3, 4, 5)), config,
                                                   torch.float64, target.device)
    keys = [k for k in _PROLOGUE_KEYS if k in kwargs]
    fixed = {k: v for k, v in kwargs.items() if k not in keys}

    def fn(x, mean, std, *rest, backend=target.backend):
        return adain_ext.adain_affine(x, mean, std, activation=act, negative_slope=0.2,
                                      backend=backend, **dict(zip(keys, rest)), **fixed)

    inputs = (x, mean, std, *[kwargs[k] for k in keys])
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)
    tangents = tuple(torch.randn_like(t) for t in inputs)
    plain = tuple(t.detach() for t in inputs)
    _, jvp = torch.func.jvp(fn, plain, tangents)
    _, want = torch.func.jvp(lambda *a: fn(*a, backend="reference"), plain, tangents)
    assert jvp.abs().sum() > 0
    torch.testing.assert_close(jvp, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("target", TARGETS)
def test_opcheck(target: Target):
    """The prologue ops' schemas, fakes, autograd registration and symbolic-shape tracing."""
    namespace = getattr(torch.ops, backends.REGISTRY[target.backend].op_namespace)
    backends.ops(target.backend)
    (x, mean, std), kw, act = _tiny(target.device)
    args = (x, kw["noise"], kw["noise_weight"], kw["bias"], kw["pre_activation"],
            kw["pre_negative_slope"], mean, std, 1e-5, True, act, 0.2)
    torch.library.opcheck(namespace._prologue_affine_forward.default, args)
    with torch.no_grad():
        _, mean_p, std_p = namespace._prologue_affine_forward(*args)
    plain = [t.detach() if isinstance(t, torch.Tensor) else t for t in args]
    torch.library.opcheck(
        namespace._prologue_affine_backward.default,
        (torch.randn_like(x.detach()), plain[0], *plain[1:6], mean_p, std_p, plain[6], plain[7],
         True, act, 0.2))


@pytest.mark.parametrize("target", TARGETS)
def test_compiles_without_graph_break(target: Target):
    (x, mean, std), kw, act = _tiny(target.device)

    def model(x, mean, std, noise, weight, bias):
        return adain_ext.adain_affine(x, mean, std, activation=act, noise=noise,
                                      noise_weight=weight, bias=bias, pre_activation="leaky_relu",
                                      pre_negative_slope=0.2, backend=target.backend)

    assert_compile_matches_eager(model, (x, mean, std, kw["noise"], kw["noise_weight"],
                                         kw["bias"]))


def test_vmap_folds_x_and_noise_and_refuses_batched_bias():
    (x, mean, std), kw, _ = _tiny("cpu")
    x, mean, std = x.detach(), mean.detach(), std.detach()
    noise, weight, bias = (kw[k].detach() for k in _PROLOGUE_KEYS)
    xs = torch.stack([x, 2 * x + 1, -x])
    got = torch.vmap(lambda x: adain_ext.adain_affine(x, mean, std, noise=noise,
                                                      noise_weight=weight, bias=bias))(xs)
    for i in range(3):
        torch.testing.assert_close(got[i], reference.adain_affine(
            xs[i], mean, std, noise=noise, noise_weight=weight, bias=bias))
    with pytest.raises(NotImplementedError, match="noise_weight or bias"):
        torch.vmap(lambda b: adain_ext.adain_affine(x, mean, std, bias=b))(
            torch.stack([bias, bias]))


# (keyword arguments, the error) for every prologue argument a user can get wrong.
BAD_PROLOGUES = [
    (lambda x: {"noise": torch.randn(2, 2, 4, 5, dtype=x.dtype)}, ValueError,
     "noise must have shape (N, 1, *) or (N, C, *)"),
    (lambda x: {"noise": torch.randn(2, 1, 5, 4, dtype=x.dtype)}, ValueError,
     "noise must have shape"),
    (lambda x: {"noise": torch.randn(2, 1, 4, 5, dtype=torch.float64)}, TypeError,
     "noise dtype"), 
    (lambda x: {"noise_weight": torch.ones(3)}, ValueError, "noise_weight was given without noise"),
    (lambda x: {"noise": torch.randn(2, 1, 4, 5), "noise_weight": torch.ones(2)}, ValueError,
     "noise_weight must have one value per channel, (3,) or (1, 3, 1, ...), or a single value"),
    (lambda x: {"bias": torch.ones(1)}, ValueError, "bias must have one value per channel"),
    (lambda x: {"bias": torch.ones(3, 1)}, ValueError, "bias must have one value per channel"),
    (lambda x: {"bias": torch.ones(3, dtype=torch.int64)}, TypeError,
     "bias must be float16, bfloat16, float32 or float64"),
    (lambda x: {"pre_activation": "gelu"}, ValueError,
     "pre_activation must be 'none', 'relu' or 'leaky_relu', got 'gelu'"),
    (lambda x: {"pre_activation": "leaky_relu", "pre_negative_slope": float("nan")}, ValueError,
     "pre_negative_slope must be a finite number"),
]


@pytest.mark.parametrize("bad", range(len(BAD_PROLOGUES)))
@pytest.mark.parametrize("target", TARGETS_AND_REFERENCE)
def test_bad_prologue_arguments_are_named_in_one_line(target: Target, bad):
    make_kwargs, error, message = BAD_PROLOGUES[bad]
    x = torch.randn(2, 3, 4, 5, device=target.device)
    mean, std = torch.zeros(2, 3, device=target.device), torch.ones(2, 3, device=target.device)
    kwargs = {k: v.to(target.device) if isinstance(v, torch.Tensor) else v
              for k, v in make_kwargs(x).items()}
    with pytest.raises(error) as info:
        adain_ext.adain_affine(x, mean, std, backend=target.backend, **kwargs)
    first_line = str(info.value).splitlines()[0]
    assert first_line.startswith("adain: ") and message in first_line, first_line


def test_no_prologue_is_the_plain_op():
    """A prologue of zeros (bias 0, no noise) gives the numbers of no prologue (up to rounding:
    the prologue kernels do not take the short-row path)."""
    x = torch.randn(2, 3, 6, 6)
    mean, std = torch.randn(2, 3), torch.rand(2, 3) + 0.5
    plain = adain_ext.adain_affine(x, mean, std)
    with_zero_bias = adain_ext.adain_affine(x, mean, std, bias=torch.zeros(3))
    torch.testing.assert_close(with_zero_bias, plain)
