"""accelerate() folds the noise injection and activation StyleGAN writes before its AdaIN into
the fused op's prologue: rosinality's StyledConvBlock (a NoiseInjection child `image + weight *
noise`, a LeakyReLU(0.2) module, then the AdaptiveInstanceNorm child) and the same in one forward,
in the forms models write it. Outputs and gradients (every input and parameter) equal the
original model's in float64; the fused call really gets the noise; where a value in between is
used elsewhere, or hooks would see it, the noise injection is left alone and the finding says why;
shapes the op's prologue does not take run as written.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from model_fixtures import RosinalityAdaIN, assert_same
from torch import nn

from adain_ext import functional
from adain_ext.rewrite import accelerate, find_fusable

DT = torch.float64


class NoiseInjection(nn.Module):
    """rosinality's NoiseInjection: image + weight * noise, weight (1, C, 1, 1)."""

    def __init__(self, channels):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, channels, 1, 1) * 0.5)

    def forward(self, image, noise):
        return image + self.weight * noise


class StyledConvTail(nn.Module):
    """rosinality's StyledConvBlock after its conv: noise1, lrelu1, adain1 (children)."""

    def __init__(self, channels=4, style_dim=3, activation=None):
        super().__init__()
        self.noise1 = NoiseInjection(channels)
        self.adain1 = RosinalityAdaIN(channels, style_dim)
        self.lrelu1 = activation if activation is not None else nn.LeakyReLU(0.2)

    def forward(self, out, style, noise):
        out = self.noise1(out, noise)
        out = self.lrelu1(out)
        return self.adain1(out, style)


class InlineBlock(nn.Module):
    """The same in one forward, with an nn.InstanceNorm2d child; `form` picks how the noise
    and activation are written."""

    def __init__(self, channels=4, form="module"):
        super().__init__()
        self.form = form
        self.noise_weight = nn.Parameter(torch.randn(1, channels, 1, 1) * 0.5)
        self.lrelu = nn.LeakyReLU(0.2)
        self.norm = nn.InstanceNorm2d(channels)

    def forward(self, x, noise, gamma, beta):
        if self.form == "module":
            out = self.lrelu(x + self.noise_weight * noise)
        elif self.form == "functional_inplace":
            out = F.leaky_relu(torch.add(x, noise * self.noise_weight), 0.2, inplace=True)
        elif self.form == "relu_method":
            out = (self.noise_weight * noise + x).relu()
        else:  # "no_activation"
            out = x + self.noise_weight * noise
        return gamma * self.norm(out) + beta


def _tail_inputs(noise_channels=1, N=2, C=4):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(N, C, 5, 6, generator=g, dtype=DT), torch.randn(N, 3, generator=g, dtype=DT),
            torch.randn(N, noise_channels, 5, 6, generator=g, dtype=DT))


def _inline_inputs(N=2, C=4):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(N, C, 5, 6, generator=g, dtype=DT), torch.randn(N, 1, 5, 6, generator=g, dtype=DT),
            torch.rand(N, C, 1, 1, generator=g, dtype=DT) + 0.5,
            torch.randn(N, C, 1, 1, generator=g, dtype=DT))


@pytest.fixture
def fused_calls(monkeypatch):
    """The keyword arguments of every adain_affine call the rewritten models make."""
    calls = []
    original = functional.adain_affine

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(functional, "adain_affine", recording)
    return calls


def _prologue_findings(model):
    return [f for f in find_fusable(model) if f.pattern == "prologue"]


@pytest.mark.parametrize("activation,expected", [
    (None, ("leaky_relu", 0.2)), (nn.ReLU(), ("relu", 0.01)),
    (nn.LeakyReLU(0.1, inplace=True), ("leaky_relu", 0.1))])
def test_rosinality_block_children(activation, expected, fused_calls):
    torch.manual_seed(0)
    model = StyledConvTail(activation=activation).double()
    findings = _prologue_findings(copy.deepcopy(model))
    assert len(findings) == 1 and findings[0].module == "" and "adain1" in findings[0].detail
    accelerated = accelerate(copy.deepcopy(model))
    assert_same(model, accelerated, _tail_inputs(), DT)
    assert fused_calls and fused_calls[-1]["noise"] is not None
    assert (fused_calls[-1]["pre_activation"], fused_calls[-1]["pre_negative_slope"]) == expected


@pytest.mark.parametrize("form", ["module", "functional_inplace", "relu_method", "no_activation"])
def test_inline_block(form, fused_calls):
    torch.manual_seed(0)
    model = InlineBlock(form=form).double()
    assert len(_prologue_findings(copy.deepcopy(model))) == 1
    accelerated = accelerate(copy.deepcopy(model))
    assert_same(model, accelerated, _inline_inputs(), DT)
    want = {"module": "leaky_relu", "functional_inplace": "leaky_relu", "relu_method": "relu",
            "no_activation": "none"}[form]
    assert fused_calls[-1]["pre_activation"] == want and fused_calls[-1]["noise"] is not None


def test_per_element_noise_and_broadcast_batch():
    """(N, C, H, W) noise, and a (1, 1, H, W) noise buffer shared by the batch (expanded)."""
    torch.manual_seed(0)
    model = StyledConvTail().double()
    accelerated = accelerate(copy.deepcopy(model))
    assert_same(model, accelerated, _tail_inputs(noise_channels=4), DT)
    x, style, _ = _tail_inputs()
    shared = torch.randn(1, 1, 5, 6, dtype=DT)
    assert_same(model, accelerated, (x, style, shared), DT)


def test_shapes_the_prologue_does_not_take_run_as_written(fused_calls):
    """A spatial weight (1, 1, H, W) is not per channel: x + weight * noise is computed as the
    model wrote it, then the fused norm without a prologue."""
    torch.manual_seed(0)
    model = StyledConvTail().double()
    model.noise1.weight = nn.Parameter(torch.randn(1, 1, 5, 6, dtype=DT))
    accelerated = accelerate(copy.deepcopy(model))
    assert_same(model, accelerated, _tail_inputs(), DT)
    assert fused_calls and "noise" not in fused_calls[-1]


class ReturnsPreActivation(InlineBlock):
    def forward(self, x, noise, gamma, beta):
        pre = x + self.noise_weight * noise
        out = self.lrelu(pre)
        return gamma * self.norm(out) + beta, pre


class ReusesActivated(InlineBlock):
    def forward(self, x, noise, gamma, beta):
        out = self.lrelu(x + self.noise_weight * noise)
        return gamma * self.norm(out) + beta + out


@pytest.mark.parametrize("model_cls,why", [
    (ReturnsPreActivation, "the value x + noise_weight * noise has 2 uses, not one"),
])
def test_values_used_elsewhere_are_left_alone(model_cls, why):
    torch.manual_seed(0)
    model = model_cls().double()
    findings = find_fusable(copy.deepcopy(model))
    assert not [f for f in findings if f.pattern == "prologue"]
    assert any(f.pattern == "left_alone" and f.reason == why for f in findings), findings
    accelerated = accelerate(copy.deepcopy(model))
    inputs = _inline_inputs()
    for got, want in zip(accelerated(*inputs), model(*inputs)):
        torch.testing.assert_close(got, want)


def test_activation_used_elsewhere_keeps_the_norm_unfused_with_it():
    """The activated value is also added to the output: the norm is not even fusable alone
    there (its input would be needed twice anyway), and the outputs stay equal."""
    torch.manual_seed(0)
    model = ReusesActivated().double()
    assert not _prologue_findings(copy.deepcopy(model))
    accelerated = accelerate(copy.deepcopy(model))
    inputs = _inline_inputs()
    torch.testing.assert_close(accelerated(*inputs), model(*inputs))


def test_child_with_forward_pre_hooks_is_left_alone():
    torch.manual_seed(0)
    model = StyledConvTail().double()
    model.adain1.register_forward_pre_hook(lambda module, args: None)
    findings = find_fusable(copy.deepcopy(model))
    assert any(f.pattern == "left_alone" and "forward pre-hooks" in f.reason for f in findings)
    assert not [f for f in findings if f.pattern == "prologue"]
    accelerated = accelerate(copy.deepcopy(model))
    assert_same(model, accelerated, _tail_inputs(), DT)


def test_fold_activations_false_keeps_the_prologue_separate(fused_calls):
    torch.manual_seed(0)
    model = StyledConvTail().double()
    accelerated = accelerate(copy.deepcopy(model), fold_activations=False)
    assert_same(model, accelerated, _tail_inputs(), DT)
    assert fused_calls and "noise" not in fused_calls[-1]
