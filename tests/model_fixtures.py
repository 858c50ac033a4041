"""Models and comparison helpers shared by the accelerate() and StyleGAN tests.

The models are written the way public StyleGAN ports and AdaIN codebases write the layer (no code is
copied): each is a pattern accelerate() must fuse, fold, or leave alone. `assert_same` compares a
model with an unchanged copy: the output and the gradient of every input and parameter.
"""
from __future__ import annotations

import importlib.util
import os

import torch
import torch.nn.functional as F
from torch import nn

import adain_ext
from adain_ext import reference
from adain_ext.stylegan import StyleModulation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "stylegan_like", os.path.join(ROOT, "examples", "stylegan_like.py"))
stylegan_like = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stylegan_like)

TOL = {torch.float64: (1e-9, 1e-9), torch.float32: (1e-4, 1e-4), torch.bfloat16: (6e-2, 6e-2)}


def grads_of(module: nn.Module, inputs, params_of: nn.Module | None = None) -> dict:
    """Gradients of a fixed random projection of the output, by name (inputs and parameters)."""
    out = module(*inputs)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (out.double() * weight.to(out.device)).sum().backward()
    grads = {f"input{i}": t.grad for i, t in enumerate(inputs) if t.grad is not None}
    params = (params_of or module).named_parameters()
    grads.update({name: p.grad for name, p in params if p.grad is not None})
    return out, grads


def leaves(*tensors):
    return [t.detach().clone().requires_grad_(t.is_floating_point()) for t in tensors]


def assert_same(module_a, module_b, inputs, dtype=torch.float32):
    atol, rtol = TOL[dtype]
    out_a, grads_a = grads_of(module_a, leaves(*inputs))
    out_b, grads_b = grads_of(module_b, leaves(*inputs))
    assert out_a.dtype == out_b.dtype and out_a.shape == out_b.shape
    torch.testing.assert_close(out_a, out_b, atol=atol, rtol=rtol)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=atol, rtol=rtol,
                                   msg=lambda m, name=name: f"{name}: {m}")
    return grads_a


# accelerate() fixtures: one model per pattern it fuses, folds or leaves alone.

class RosinalityAdaIN(nn.Module):
    """rosinality/style-based-gan-pytorch's AdaptiveInstanceNorm: an InstanceNorm2d child."""

    def __init__(self, channels, style_dim):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels)
        self.style = nn.Linear(style_dim, channels * 2)
        self.style.bias.data[:channels] = 1
        self.style.bias.data[channels:] = 0

    def forward(self, input, style):
        style = self.style(style).unsqueeze(2).unsqueeze(3)
        gamma, beta = style.chunk(2, 1)
        out = self.norm(input)
        out = gamma * out + beta
        return out


class StyleMod(nn.Module):
    """The official StyleGAN ports' style_mod: `x * (style[:, 0] + 1) + style[:, 1]`."""

    def __init__(self, channels, style_dim):
        super().__init__()
        self.lin = nn.Linear(style_dim, channels * 2)
        self.channels = channels

    def forward(self, x, latent):
        style = self.lin(latent).view(-1, 2, self.channels, 1, 1)
        return x * (style[:, 0] + 1.0) + style[:, 1]


class FunctionalStyleMod(StyleMod):
    """F.instance_norm in forward, then NVlabs' style_mod written with torch.add and Tensor.mul."""

    def forward(self, x, latent):
        style = self.lin(latent).view(-1, 2, self.channels, 1, 1)
        x = F.instance_norm(x, eps=1e-8)
        return torch.add(x.mul(style[:, 0] + 1.0), style[:, 1])


class Noise(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), 0.1))
        self.register_buffer("noise", torch.randn(1, 1, 6, 6))

    def forward(self, x):
        return x + self.weight.view(1, -1, 1, 1) * self.noise


class LayerEpilogue(nn.Module):
    """The official StyleGAN PyTorch ports: the norm ends an nn.Sequential, a sibling modulates."""

    def __init__(self, channels, style_dim):
        super().__init__()
        self.top_epi = nn.Sequential(Noise(channels), nn.LeakyReLU(0.2),
                                     nn.InstanceNorm2d(channels, eps=1e-8))
        self.style_mod = StyleMod(channels, style_dim)

    def forward(self, x, dlatents_in_slice=None):
        x = self.top_epi(x)
        return self.style_mod(x, dlatents_in_slice)


def user_copy_of_adain(content_feat, style_feat):
    """A user's own copy of the reference's adaptive_instance_normalization (accelerate() is told
    it is one through reference_functions)."""
    return reference.adaptive_instance_normalization(content_feat.clone(), style_feat.clone())


class ReferenceCalls(nn.Module):
    def forward(self, x, y):
        a = reference.adaptive_instance_normalization(x, y)
        b = reference.adain(x, y, 0.5)
        mean, std = reference.calc_mean_std(y)
        c = reference.adain_affine(x, mean * 0.5, std + 1)
        return a + b + c + user_copy_of_adain(x, y)


class SpatialModulation(nn.Module):
    """SPADE-like: scale and shift are spatial maps; must keep running the unfused expression."""

    def __init__(self, channels):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels)
        self.conv = nn.Conv2d(channels, 2 * channels, 1)

    def forward(self, x):
        gamma, beta = self.conv(x).chunk(2, 1)
        return self.norm(x) * (1 + gamma) + beta


class TrainingBranch(RosinalityAdaIN):
    def forward(self, input, style):
        if self.training:
            input = input * 2
        return super().forward(input, style)


class Stack(nn.Module):
    def __init__(self, c=4, d=5):
        super().__init__()
        self.ros = RosinalityAdaIN(c, d)
        self.fun = FunctionalStyleMod(c, d)
        self.epi = LayerEpilogue(c, d)
        self.refs = ReferenceCalls()
        self.spatial = SpatialModulation(c)
        self.ours = StyleModulation(c, d, impl="reference")
        self.paper = adain_ext.nn.AdaIN(backend="reference")
        self.branchy = TrainingBranch(c, d)
        self.affine_norm = nn.InstanceNorm2d(c, affine=True)

    def forward(self, x, w):
        x = self.ros(x, w)
        x = self.fun(x, w)
        x = self.epi(x, w)
        x = self.refs(x, x.flip(0))
        x = self.spatial(x)
        x = self.ours(x, w)
        x = self.paper(x, x.flip(2))
        x = self.branchy(x, w)
        return self.affine_norm(x) * w[:, :4, None, None] + 1


class RunningStatsAdaIN(RosinalityAdaIN):
    def __init__(self, channels, style_dim):
        super().__init__(channels, style_dim)
        self.norm = nn.InstanceNorm2d(channels, track_running_stats=True, momentum=0.5)


class AffineNormAdaIN(RosinalityAdaIN):
    def __init__(self, channels, style_dim):
        super().__init__(channels, style_dim)
        self.norm = nn.InstanceNorm2d(channels, affine=True)
        nn.init.normal_(self.norm.weight)
        nn.init.normal_(self.norm.bias)


class FunctionalRunningStats(FunctionalStyleMod):
    def __init__(self, channels, style_dim):
        super().__init__(channels, style_dim)
        self.register_buffer("running_mean", torch.randn(channels))
        self.register_buffer("running_var", torch.rand(channels) + 0.5)

    def forward(self, x, latent):
        style = self.lin(latent).view(-1, 2, self.channels, 1, 1)
        x = F.instance_norm(x, self.running_mean, self.running_var, use_input_stats=False)
        return x * (style[:, 0] + 1.0) + style[:, 1]


class FunctionalAffine(FunctionalStyleMod):
    def __init__(self, channels, style_dim):
        super().__init__(channels, style_dim)
        self.weight = nn.Parameter(torch.randn(channels))
        self.bias = nn.Parameter(torch.randn(channels))

    def forward(self, x, latent):
        style = self.lin(latent).view(-1, 2, self.channels, 1, 1)
        x = F.instance_norm(x, weight=self.weight, bias=self.bias, eps=1e-8)
        return x * (style[:, 0] + 1.0) + style[:, 1]


class SpatialStyleMod(nn.Module):
    """SPADE with a style vector: the modulation maps are (N, C, H, W)."""

    def __init__(self, channels, style_dim):
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 3, padding=1)

    def forward(self, x, latent):
        gamma, beta = self.conv(x).chunk(2, 1)
        return F.instance_norm(x, eps=1e-5) * gamma + beta
