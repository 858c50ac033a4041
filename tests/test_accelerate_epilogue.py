"""accelerate() folds the activation that follows an AdaIN into the fused op (its epilogue):
StarGAN v2's AdainResBlk (AdaIN child, then the parent's LeakyReLU(0.2)), MUNIT's Conv2dBlock
(tests/test_accelerate_idioms.py: the batch_norm trick, then ReLU), and an activation in the
same forward as the modulation, in every form models write it. Outputs and gradients equal the
original model's in float64; where the value before the activation is used elsewhere, or hooks
would see it, the activation is left alone and the finding says why.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from model_fixtures import assert_same
from torch import nn

from adain_ext import functional
from adain_ext.rewrite import accelerate, find_fusable


class AdaIN(nn.Module):
    """StarGAN v2's AdaIN: (1 + gamma) * norm(x) + beta, gamma and beta from the style code."""

    def __init__(self, style_dim, num_features):
        super().__init__()
        self.norm = nn.InstanceNorm2d(num_features, affine=False)
        self.fc = nn.Linear(style_dim, num_features * 2)

    def forward(self, x, s):
        h = self.fc(s)
        h = h.view(h.size(0), h.size(1), 1, 1)
        gamma, beta = torch.chunk(h, chunks=2, dim=1)
        return (1 + gamma) * self.norm(x) + beta


class AdainResBlk(nn.Module):
    """StarGAN v2's generator block: norm1, actv, (upsample), conv1, norm2, actv, conv2, with one
    shared actv module, plus the learned shortcut."""

    def __init__(self, dim_in, dim_out, style_dim=6, actv=None, upsample=False):
        super().__init__()
        self.actv = actv if actv is not None else nn.LeakyReLU(0.2)
        self.upsample = upsample
        self.conv1 = nn.Conv2d(dim_in, dim_out, 3, 1, 1)
        self.conv2 = nn.Conv2d(dim_out, dim_out, 3, 1, 1)
        self.norm1 = AdaIN(style_dim, dim_in)
        self.norm2 = AdaIN(style_dim, dim_out)
        self.conv1x1 = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=False)

    def _shortcut(self, x):
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv1x1(x)

    def _residual(self, x, s):
        x = self.norm1(x, s)
        x = self.actv(x)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv1(x)
        x = self.norm2(x, s)
        x = self.actv(x)
        return self.conv2(x)

    def forward(self, x, s):
        return (self._residual(x, s) + self._shortcut(x)) / math.sqrt(2)


def _record_activations(monkeypatch) -> list:
    """The activation each fused call ran with."""
    calls = []
    fused = functional.adain_affine

    def recording(x, *args, **kwargs):
        calls.append((kwargs.get("activation") or "none", kwargs.get("negative_slope")))
        return fused(x, *args, **kwargs)

    monkeypatch.setattr(functional, "adain_affine", recording)
    return calls


def _check(model, make_inputs, monkeypatch, want_activations, before=None):
    """accelerate(model) equals the original (`before`, else a copy of model as given) in
    float64, train and eval, outputs and the gradients of every input and parameter; each
    forward's fused calls ran with want_activations."""
    model.double()
    before = copy.deepcopy(model) if before is None else before.double()
    accelerate(model)
    calls = _record_activations(monkeypatch)
    for training in (True, False):
        model.train(training)
        before.train(training)
        torch.manual_seed(7)
        inputs = [t.double() for t in make_inputs()]
        calls.clear()
        assert_same(model, before, inputs, torch.float64)
        assert want_activations is None or calls == want_activations, calls


def test_stargan_block(monkeypatch):
    torch.manual_seed(0)
    block = AdainResBlk(4, 5, upsample=True)
    findings = find_fusable(block)
    assert [(f.module, f.pattern, f.detail) for f in findings if f.pattern ==
            "activation_epilogue"] == [
        ("", "activation_epilogue",
         f"leaky_relu(AdaIN {name}) -> activation='leaky_relu', negative_slope=0.2")
        for name in ("norm1", "norm2")]
    assert all(f.rewritten for f in findings)
    _check(block, lambda: (torch.randn(2, 4, 5, 6), torch.randn(2, 6)), monkeypatch,
           [("leaky_relu", 0.2)] * 2)


@pytest.mark.parametrize("actv,want", [
    (nn.ReLU(), ("relu", 0.01)),
    (nn.ReLU(inplace=True), ("relu", 0.01)),
    (nn.LeakyReLU(0.1, inplace=True), ("leaky_relu", 0.1)),
    (nn.LeakyReLU(), ("leaky_relu", 0.01)),
], ids=["ReLU", "ReLU_inplace", "LeakyReLU_inplace", "LeakyReLU_default"])
def test_activation_modules_after_a_child(actv, want, monkeypatch):
    torch.manual_seed(1)
    _check(AdainResBlk(3, 3, actv=actv), lambda: (torch.randn(2, 3, 4, 5), torch.randn(2, 6)),
           monkeypatch, [want] * 2)


class SameForward(nn.Module):
    """The modulation and the activation in one forward, the activation written `how`."""

    def __init__(self, how, channels=3, style_dim=4):
        super().__init__()
        self.how = how
        self.norm = nn.InstanceNorm2d(channels)
        self.fc = nn.Linear(style_dim, 2 * channels)

    def forward(self, x, s):
        gamma, beta = self.fc(s)[:, :, None, None].chunk(2, 1)
        y = self.norm(x) * gamma + beta
        return ACTIVATION_FORMS[self.how](y)


ACTIVATION_FORMS = {
    "F.relu": (lambda y: F.relu(y), ("relu", 0.01)),
    "F.relu_inplace": (lambda y: F.relu(y, inplace=True), ("relu", 0.01)),
    "torch.relu": (lambda y: torch.relu(y), ("relu", 0.01)),
    "torch.relu_": (lambda y: torch.relu_(y), ("relu", 0.01)),
    "Tensor.relu": (lambda y: y.relu(), ("relu", 0.01)),
    "F.leaky_relu": (lambda y: F.leaky_relu(y, 0.3), ("leaky_relu", 0.3)),
    "F.leaky_relu_kw_inplace": (lambda y: F.leaky_relu(y, negative_slope=0.2, inplace=True),
                                ("leaky_relu", 0.2)),
    "F.leaky_relu_default": (lambda y: F.leaky_relu(y), ("leaky_relu", 0.01)),
}
WANTED = {name: want for name, (_, want) in ACTIVATION_FORMS.items()}
ACTIVATION_FORMS = {name: fn for name, (fn, _) in ACTIVATION_FORMS.items()}


@pytest.mark.parametrize("how", list(ACTIVATION_FORMS))
def test_activation_forms_in_the_same_forward(how, monkeypatch):
    torch.manual_seed(2)
    model = SameForward(how)
    assert [f.pattern for f in find_fusable(model)] == ["instance_norm_modulation",
                                                        "activation_epilogue"]
    _check(model, lambda: (torch.randn(2, 3, 4, 5), torch.randn(2, 4)), monkeypatch,
           [WANTED[how]])


class AlsoReturnsTheModulation(SameForward):
    def forward(self, x, s):
        gamma, beta = self.fc(s)[:, :, None, None].chunk(2, 1)
        y = self.norm(x) * gamma + beta
        return F.leaky_relu(y, 0.2) + 0.5 * y  # the value before the activation reused


def test_value_used_elsewhere_is_left_alone(monkeypatch):
    model = AlsoReturnsTheModulation("F.relu")
    findings = find_fusable(model)
    assert [(f.pattern, f.detail, f.reason) for f in findings] == [
        ("instance_norm_modulation", "InstanceNorm2d norm(x) * getitem_1 + getitem_2", None),
        ("left_alone", "leaky_relu(instance_norm_modulate(...))",
         "the value before the leaky_relu has 2 uses, not one")]
    _check(model, lambda: (torch.randn(2, 3, 4, 5), torch.randn(2, 4)), monkeypatch,
           [("none", 0.01)])


def test_child_with_hooks_keeps_its_activation_outside(monkeypatch):
    block = AdainResBlk(3, 3)
    seen = []
    block.norm1.register_forward_hook(lambda module, args, out: seen.append(out.min().item()))
    findings = find_fusable(block)
    left = [(f.module, f.reason) for f in findings if not f.rewritten]
    assert left == [("", "it has forward hooks, which would not see the output before the "
                         "activation")]
    _check(block, lambda: (torch.randn(2, 3, 4, 5), torch.randn(2, 6)), monkeypatch,
           [("none", 0.01), ("leaky_relu", 0.2)])
    assert seen and min(seen) < 0  # the hook saw the AdaIN output, before the LeakyReLU


def test_other_activations_stay_separate(monkeypatch):
    torch.manual_seed(3)
    block = AdainResBlk(3, 3, actv=nn.Tanh())
    assert not [f for f in find_fusable(block) if f.pattern == "activation_epilogue"]
    _check(block, lambda: (torch.randn(2, 3, 4, 5), torch.randn(2, 6)), monkeypatch,
           [("none", 0.01)] * 2)


def test_accelerate_twice_keeps_one_epilogue(monkeypatch):
    torch.manual_seed(4)
    block = AdainResBlk(3, 3)
    original = copy.deepcopy(block)
    accelerate(block)
    code = block.adain_fused_code
    accelerate(block)
    assert block.adain_fused_code == code
    _check(block, lambda: (torch.randn(2, 3, 4, 5), torch.randn(2, 6)), monkeypatch,
           [("leaky_relu", 0.2)] * 2, before=original)


def test_compiled_accelerated_block_matches_eager():
    torch.manual_seed(5)
    block = accelerate(AdainResBlk(3, 4))
    x, s = torch.randn(2, 3, 6, 6, requires_grad=True), torch.randn(2, 6)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    want, got = block(x, s), compiled(x, s)
    torch.testing.assert_close(got, want)
    g = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(got, x, g), torch.autograd.grad(want, x, g))


class ReferenceCallsWithKeywords(nn.Module):
    """Calls of the reference with an argument by keyword after a skipped one, and with the
    activation given positionally: every argument must reach the fused call."""

    def forward(self, x, mean, std):
        from adain_ext import reference

        a = reference.adain_affine(x, mean, std, unbiased=False)
        b = reference.adain_affine(x, mean, std, 1e-3, True, "leaky_relu", 0.3)
        c = reference.mean_std(x, unbiased=False)[1]
        return a + b + c


def test_reference_calls_keep_every_argument(monkeypatch):
    model = ReferenceCallsWithKeywords()
    assert [f.pattern for f in find_fusable(model)] == ["reference_call"] * 3
    # The rewritten graph holds the fused functions themselves (no call to record): the outputs
    # and gradients, which each of unbiased=False, eps=1e-3 and the slope changes, tell.
    _check(model, lambda: (torch.randn(2, 3, 4, 5), torch.randn(2, 3), torch.rand(2, 3) + 0.5),
           monkeypatch, None)
