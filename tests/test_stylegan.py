"""StyleGAN-style modulation (adain_ext.stylegan), accelerate(), and the example generator.

Every comparison runs the same weights through the fused path and an unfused formulation and
compares the output and every gradient (input, style vector, and the affine layer's parameters).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from model_fixtures import (
    AffineNormAdaIN,
    FunctionalAffine,
    FunctionalRunningStats,
    RosinalityAdaIN,
    RunningStatsAdaIN,
    SpatialStyleMod,
    Stack,
    assert_same,
    grads_of,
    leaves,
    stylegan_like,
    user_copy_of_adain,
)
from torch import nn

import adain_ext
from adain_ext import functional, reference, stylegan
from adain_ext.rewrite import accelerate, find_fusable, instance_norm_modulate
from adain_ext.stylegan import StyleModulation

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ------------------------------------------------------------------------------------------
# StyleModulation
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("semantics,baseline", [("stylegan", "reference"),
                                                ("stylegan", "instance_norm"),
                                                ("adain", "reference")])
def test_modulation_matches_reference_formulation(semantics, baseline, dtype):
    torch.manual_seed(0)
    fused = StyleModulation(5, 7, semantics=semantics).to(dtype)
    unfused = copy.deepcopy(fused)
    unfused.impl = baseline
    x = torch.randn(3, 5, 6, 7, dtype=dtype) * 3 + 1
    w = torch.randn(3, 7, dtype=dtype)
    grads = assert_same(fused, unfused, (x, w), dtype)
    assert {"input0", "input1", "affine.weight", "affine.bias"} <= grads.keys()


def test_modulation_conventions():
    m = StyleModulation(4, 3)
    assert (m.eps, m.unbiased) == (1e-8, False)
    assert torch.equal(m.affine.bias, torch.zeros(8))  # shift b starts at 0, scale at 1 + s
    paper = StyleModulation(4, 3, semantics="adain")
    assert (paper.eps, paper.unbiased) == (1e-5, True)
    with torch.no_grad():
        m.affine.weight.zero_()  # s = 0, b = 0: plain instance norm
    x, w = torch.randn(2, 4, 5, 5), torch.randn(2, 3)
    torch.testing.assert_close(m(x, w), F.instance_norm(x, eps=1e-8), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="biased variance"):
        StyleModulation(4, 3, semantics="adain", impl="instance_norm")


def test_modulation_impl_names_the_fused_backend(monkeypatch):
    """impl is the one knob: "fused" runs the op with backend "auto", a backend's name runs it
    there; the unfused formulations never call the op."""
    backends = []
    fused_affine = functional.adain_affine
    monkeypatch.setattr(functional, "adain_affine",
                        lambda *a, backend, **k: backends.append(backend) or
                        fused_affine(*a, backend=backend, **k))
    x, w = torch.randn(2, 4, 5, 5), torch.randn(2, 3)
    for impl in ("fused", "reference", "instance_norm"):
        StyleModulation(4, 3, impl=impl)(x, w)
    assert backends == ["auto"]
    assert "cpp" in stylegan.IMPLS and "triton" in stylegan.IMPLS
    with pytest.raises(ValueError, match="impl must be one of"):
        StyleModulation(4, 3, impl="auto")


def test_modulation_channels_last():
    torch.manual_seed(0)
    m = StyleModulation(6, 4)
    x = torch.randn(2, 6, 5, 7).contiguous(memory_format=torch.channels_last)
    w = torch.randn(2, 4)
    out = m(x, w)
    assert out.is_contiguous(memory_format=torch.channels_last)
    ref = copy.deepcopy(m)
    ref.impl = "reference"
    assert_same(m, ref, (x, w))
    torch.testing.assert_close(out, m(x.contiguous(), w), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------
# Mixed precision: the style affine runs in float32; the op runs in x's dtype with float32
# statistics and returns x's dtype.
# ------------------------------------------------------------------------------------------

def _autocast_dtypes(device):
    return [torch.bfloat16] if device == "cpu" else [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_modulation(device):
    for amp_dtype in _autocast_dtypes(device):
        torch.manual_seed(0)
        conv = nn.Conv2d(3, 8, 3, padding=1).to(device)
        m = StyleModulation(8, 5).to(device)
        image = torch.randn(2, 3, 9, 9, device=device)
        w = torch.randn(2, 5, device=device, requires_grad=True)
        with torch.autocast(device, dtype=amp_dtype):
            x = conv(image)
            assert x.dtype == amp_dtype
            scale, shift = m.styles(w)
            assert scale.dtype == shift.dtype == torch.float32
            out = m(x, w)
            out_fp32_input = m(x.float(), w)
        assert out.dtype == amp_dtype and out_fp32_input.dtype == torch.float32
        # Oracle: the same math in float64 on the same (rounded) conv output.
        x64 = x.detach().double()
        oracle = (F.instance_norm(x64, eps=1e-8) * scale.double()[..., None, None]
                  + shift.double()[..., None, None])
        torch.testing.assert_close(out.double(), oracle, atol=6e-2, rtol=2e-2)
        out.float().square().mean().backward()
        assert w.grad is not None and w.grad.dtype == torch.float32
        assert m.affine.weight.grad.dtype == torch.float32 and conv.weight.grad is not None


def test_autocast_large_mean_statistics_in_fp32():
    # bf16 data with a large mean: statistics rounded to bf16 (8 bits) would lose the signal;
    # accumulated in fp32 the normalised output is accurate to bf16 output rounding.
    torch.manual_seed(0)
    x = (torch.randn(2, 3, 16, 16) * 4 + 300).bfloat16()
    m = StyleModulation(3, 4)
    w = torch.randn(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x, w)
    scale, shift = m.styles(w)
    x64 = x.double()
    oracle = (F.instance_norm(x64, eps=1e-8) * scale.double()[..., None, None]
              + shift.double()[..., None, None])
    assert out.dtype == torch.bfloat16
    if adain_ext.HAS_CPP:  # the reference fallback computes its statistics in bf16
        torch.testing.assert_close(out.double(), oracle, atol=6e-2, rtol=2e-2)


# ------------------------------------------------------------------------------------------
# accelerate(): one model per supported pattern, outputs and gradients before == after.
# ------------------------------------------------------------------------------------------

def test_accelerate_every_pattern(monkeypatch):
    torch.manual_seed(0)
    model = Stack()
    before = copy.deepcopy(model)
    keys = list(model.state_dict())
    refs = {user_copy_of_adain: reference.adaptive_instance_normalization}
    plan = find_fusable(model, reference_functions=refs)
    assert accelerate(model, reference_functions=refs) is model
    found = {(r.module, r.pattern) for r in plan if r.rewritten}
    assert found == {
        ("ros", "instance_norm_modulation"), ("fun", "instance_norm_modulation"),
        ("epi", "instance_norm_modulation"), ("epi", "prologue"), ("refs", "reference_call"),
        ("spatial", "instance_norm_modulation"), ("ours", "reference_backend"),
        ("paper", "reference_backend"),
    }, plan
    assert sum(r.module == "refs" for r in plan) == 5
    left_alone = {(r.module, r.reason) for r in plan if not r.rewritten}
    assert left_alone == {
        ("branchy", "its traced code differs between train() and eval() (a branch on "
                    "self.training)"),
        ("", "the shift is 1, not a tensor"),
    }, left_alone
    assert list(model.state_dict()) == keys
    assert isinstance(model.ros, RosinalityAdaIN)
    assert "instance_norm_modulate" in model.ros.adain_fused_code
    assert model.ours.impl == "fused" and model.paper.backend == "auto"
    # a second pass finds nothing more to rewrite
    assert not [r for r in find_fusable(model, reference_functions=refs) if r.rewritten]

    calls = []
    fused_affine = functional.adain_affine
    monkeypatch.setattr(functional, "adain_affine",
                        lambda *a, **k: calls.append(tuple(a[0].shape)) or fused_affine(*a, **k))
    x, w = torch.randn(2, 4, 6, 6), torch.randn(2, 5)
    assert_same(model, before, (x, w))
    # ros, fun, epi and ours; spatial falls back to the unfused expression at run time, and
    # `before` has no fused call at all
    assert len(calls) == 4, calls
    model.eval()
    before.eval()
    assert_same(model, before, (x, w))


# Norms accelerate() must leave alone: they are not a plain instance norm, so fusing them would
# change the output (running statistics in eval, the running-statistics update in train), or the
# modulation is a spatial map the fused op cannot take. An affine norm's own weight and bias fold
# into the modulation instead.

LEFT_ALONE = {
    RunningStatsAdaIN: "InstanceNorm2d(affine=False, track_running_stats=True) uses its running "
                       "statistics in eval mode and updates them in train mode",
    FunctionalRunningStats: "F.instance_norm with running_mean/running_var updates or uses them",
    SpatialStyleMod: None,  # a spatial map is only known at run time: planned, then falls back
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("model_type", LEFT_ALONE, ids=lambda t: t.__name__)
def test_accelerate_leaves_other_norms_alone(model_type, training, monkeypatch):
    torch.manual_seed(0)
    model = model_type(4, 5).train(training)
    before = copy.deepcopy(model)
    if LEFT_ALONE[model_type] is not None:
        assert [f.reason for f in find_fusable(model)] == [LEFT_ALONE[model_type]]
    accelerate(model)
    monkeypatch.setattr(functional, "adain_affine",
                        lambda *a, **k: pytest.fail("the fused op ran on a norm it must leave"))
    x, w = torch.randn(2, 4, 6, 6), torch.randn(2, 5)
    for _ in range(2):  # in train mode the first call updates the running statistics
        out_after, grads_after = grads_of(model, leaves(x, w))
        out_before, grads_before = grads_of(before, leaves(x, w))
        assert torch.equal(out_after, out_before)
        assert grads_after.keys() == grads_before.keys()
        for name in grads_before:
            assert torch.equal(grads_after[name], grads_before[name]), name
    for (name, after), (_, was) in zip(model.named_buffers(), before.named_buffers(), strict=True):
        assert torch.equal(after, was), name


@pytest.mark.parametrize("model_type", [AffineNormAdaIN, FunctionalAffine],
                         ids=lambda t: t.__name__)
def test_accelerate_folds_the_norms_affine(model_type, monkeypatch):
    torch.manual_seed(0)
    model = model_type(4, 5)
    before = copy.deepcopy(model)
    assert [f.pattern for f in find_fusable(model)] == ["instance_norm_modulation"]
    accelerate(model)
    calls = []
    fused_affine = functional.adain_affine
    monkeypatch.setattr(functional, "adain_affine",
                        lambda *a, **k: calls.append(1) or fused_affine(*a, **k))
    x, w = torch.randn(2, 4, 6, 6), torch.randn(2, 5)
    for training in (True, False):
        model.train(training)
        before.train(training)
        grads = assert_same(model, before, (x, w))
        assert {"weight", "bias"} & {name.split(".")[-1] for name in grads}
    assert len(calls) == 2
    with torch.no_grad():  # read at call time, not when accelerate() ran
        for p in model.parameters():
            p.mul_(1.5)
        for p in before.parameters():
            p.mul_(1.5)
    assert_same(model, before, (x, w))


def test_instance_norm_modulate_broadcasts_and_falls_back():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    for scale_shape, shift_shape in [((2, 3, 1, 1), (1, 3, 1, 1)), ((3, 1, 1), (2, 1, 1, 1)),
                                     ((2, 3, 4, 5), (2, 3, 1, 1))]:
        scale = torch.randn(scale_shape, dtype=torch.float64)
        shift = torch.randn(shift_shape, dtype=torch.float64)
        want = F.instance_norm(x, eps=1e-5) * scale + shift
        torch.testing.assert_close(instance_norm_modulate(x, scale, shift, 1e-5), want)
    # dtype promotion as in the original expression: bf16 x with fp32 scale gives fp32
    ones, zeros = torch.ones(2, 3, 1, 1), torch.zeros(2, 3, 1, 1)
    out = instance_norm_modulate(x.bfloat16(), ones, zeros, 1e-5)
    assert out.dtype == torch.float32
    # unbatched (C, H, W) input through an InstanceNorm2d module: the module's own semantics
    norm = nn.InstanceNorm2d(3)
    scale, shift = torch.randn(2, 3, 1, 1, dtype=torch.float64).unbind(0)
    torch.testing.assert_close(instance_norm_modulate(x[0], scale, shift, 1e-5, norm=norm),
                               norm(x[0]) * scale + shift)


def test_accelerate_under_autocast():
    torch.manual_seed(0)
    model = nn.ModuleDict({"conv": nn.Conv2d(3, 4, 3, padding=1), "ada": RosinalityAdaIN(4, 5)})
    accelerated = accelerate(copy.deepcopy(model))
    x, w = torch.randn(2, 3, 8, 8), torch.randn(2, 5)
    outs = []
    for m in (model, accelerated):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs.append(m["ada"](m["conv"](x), w))
    assert outs[0].dtype == outs[1].dtype == torch.bfloat16
    torch.testing.assert_close(outs[1].float(), outs[0].float(), atol=6e-2, rtol=5e-2)


# ------------------------------------------------------------------------------------------
# The example generator
# ------------------------------------------------------------------------------------------

def _tiny_generator(resolution=16, **kw):
    torch.manual_seed(0)
    g = stylegan_like.Generator(resolution, z_dim=8, w_dim=8, mapping_layers=2, channel_base=64,
                                channel_max=8, noise_mode="const", **kw)
    for m in g.modules():  # non-zero noise strengths so their gradients are exercised
        if isinstance(m, stylegan_like.NoiseInjection):
            m.strength.data.fill_(0.1)
    return g


@pytest.mark.parametrize("baseline", ["reference", "instance_norm"])
def test_generator_matches_reference_formulation(baseline):
    # float64: the first AdaIN normalises 1 + 0.1 * noise, whose bias gradient is exactly 0 in
    # exact arithmetic; float32 leaves ~1e-4 of cancellation noise there in either formulation.
    g = _tiny_generator().double()
    ref = copy.deepcopy(g).set_impl(baseline)
    z = torch.randn(2, 8, dtype=torch.float64)
    grads = assert_same(g, ref, (z,), torch.float64)
    assert len(grads) == 1 + sum(1 for _ in g.parameters())  # z and every parameter


def test_generator_adain_semantics_and_channels_last():
    g = _tiny_generator(semantics="adain")
    ref = copy.deepcopy(g).set_impl("reference")
    assert_same(g, ref, (torch.randn(2, 8),))
    cl = copy.deepcopy(g).to(memory_format=torch.channels_last)
    z = torch.randn(2, 8)
    out = cl(z)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, g(z), atol=1e-4, rtol=1e-4)


def test_generator_autocast_bf16():
    g = _tiny_generator()
    z = torch.randn(2, 8)
    want = g(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = g(z)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=0.15, rtol=0.1)
    got.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in g.parameters())


def test_generator_compiles_fullgraph():
    torch._dynamo.reset()
    # float64: see test_generator_matches_reference_formulation
    g = _tiny_generator(resolution=8).double()
    z = torch.randn(2, 8, dtype=torch.float64)
    compiled = torch.compile(g, fullgraph=True)
    eager_out, eager_grads = grads_of(g, [z.clone().requires_grad_()])
    g.zero_grad()
    comp_out, comp_grads = grads_of(compiled, [z.clone().requires_grad_()], params_of=g)
    torch.testing.assert_close(comp_out, eager_out)
    assert comp_grads.keys() == eager_grads.keys()
    for name in eager_grads:
        torch.testing.assert_close(comp_grads[name], eager_grads[name], msg=name)
