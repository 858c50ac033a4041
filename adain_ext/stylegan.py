"""StyleGAN-style AdaIN on the fused `affine` op (adain_ext.rewrite.accelerate puts the fused ops
into existing models).

StyleGAN's AdaIN (Karras et al. 2019, NVlabs/stylegan `style_mod` + `instance_norm`):

    [s, b] = A(w)                              # learned affine map of the style vector w
    out    = (1 + s) * (x - mean_x) / sqrt(var_x + eps) + b

with the biased variance (divide by H*W) and eps = 1e-8 added to the variance, which is exactly
`adain_affine(x, mean=b, std=1 + s, eps, unbiased=False)`: one read and one write of x instead of
the half-dozen elementwise passes of the written-out formula.

Mixed precision: the style affine map always runs in float32 (autocast disabled for it; it is an
N x w_dim x 2C matmul, negligible), so `1 + s` keeps float32 precision. The op then runs in the
dtype of x, i.e. whatever the preceding conv produced (bfloat16/float16 under autocast), with the
statistics accumulated in float32 by the kernels, and returns x's dtype, as F.instance_norm
does under autocast (no autocast kernel is registered for the op: it is not on any cast list).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from adain_ext import backends, functional, reference

# (eps, unbiased) of each semantics. StyleGAN: instance norm with the biased variance and 1e-8
# inside the rsqrt (NVlabs/stylegan networks_stylegan.py `instance_norm(x, epsilon=1e-8)`). AdaIN
# paper: the reference's calc_mean_std (unbiased, 1e-5).
SEMANTICS = {"stylegan": (1e-8, False), "adain": (1e-5, True)}

# The implementations StyleModulation(impl=...) takes. The fused op: "fused" (backend "auto") or a
# backend with kernels by name ("cpp", "triton"); FUSED maps each to the op's backend argument.
# "reference": adain_ext.reference.adain_affine (the project's oracle, the same math written out in
# PyTorch). "instance_norm": F.instance_norm(x) * scale + shift, the way StyleGAN ports write it
# (StyleGAN semantics only: instance_norm has no unbiased variance).
FUSED = {"fused": "auto", **{name: name for name in backends.NAMES if name != "reference"}}
IMPLS = (*FUSED, "reference", "instance_norm")


class EqualizedLinear(nn.Module):
    """StyleGAN's dense layer with the equalized learning rate (`use_wscale`): weights are stored
    N(0, 1) / lr_multiplier and scaled by lr_multiplier / sqrt(in_features) at run time."""

    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0,
                 lr_multiplier: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_multiplier))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, (self.weight * self.weight_gain).to(x.dtype),
                        (self.bias * self.bias_gain).to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}"


class StyleModulation(nn.Module):
    """StyleGAN's AdaIN: (1 + s) * instance_norm(x) + b, with [s, b] = affine(w).

    channels:   C of x (N, C, H, W).
    style_dim:  length of the style vector w (N, style_dim).
    semantics:  "stylegan" (biased variance, eps 1e-8) or "adain" (the AdaIN paper's unbiased
                variance, eps 1e-5); `eps` overrides the eps.
    impl:       "fused" (default: the fused op, backend "auto"), "cpp" or "triton" (the fused op
                on that backend), "reference" or "instance_norm" (see IMPLS): the unfused
                formulations are the baselines the fused path is tested and benchmarked against.

    The affine map is StyleGAN's: an EqualizedLinear (weights N(0, 1), gain 1/sqrt(style_dim))
    with its bias initialised to 0, applied as scale = 1 + s, so the scale starts around 1 and
    the shift around 0 (rosinality's port stores the 1 in the bias instead: the same function).
    Gradients reach x, w and the affine map's parameters.
    """

    def __init__(self, channels: int, style_dim: int, *, semantics: str = "stylegan",
                 eps: float | None = None, impl: str = "fused"):
        super().__init__()
        if semantics not in SEMANTICS:
            raise ValueError(f"semantics must be one of {tuple(SEMANTICS)}, got {semantics!r}")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        default_eps, self.unbiased = SEMANTICS[semantics]
        if impl == "instance_norm" and self.unbiased:
            raise ValueError("impl='instance_norm' computes the biased variance; it cannot give "
                             "semantics='adain' (use impl='fused' or 'reference')")
        self.channels, self.semantics = channels, semantics
        self.eps = default_eps if eps is None else float(eps)
        self.impl = impl
        self.affine = EqualizedLinear(style_dim, 2 * channels)

    def styles(self, w: torch.Tensor):
        """(scale, shift), each (N, C), float32 (float64 for a float64 module): scale = 1 + s."""
        # At least float32 whatever autocast says: 1 + s in bfloat16 would keep 8 bits of s.
        dtype = torch.promote_types(self.affine.weight.dtype, torch.float32)
        with torch.autocast(w.device.type, enabled=False):
            style = self.affine(w.to(dtype))
        s, b = style.unflatten(1, (2, self.channels)).unbind(1)
        return s + 1, b

    def forward(self, x: torch.Tensor, w: torch.Tensor, *, noise: torch.Tensor | None = None,
                noise_weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                pre_activation: str | None = None,
                pre_negative_slope: float = 0.01) -> torch.Tensor:
        """AdaIN of x with w's style. With the prologue arguments, of
        pre_activation(x + noise_weight * noise + bias) instead (what StyleGAN runs before
        every AdaIN: noise, bias, LeakyReLU(0.2)); the fused impls run it in the op's kernel
        (adain_ext.adain_affine's prologue), the others as written, in x's dtype."""
        scale, shift = self.styles(w)
        prologue = {}
        if noise is not None or bias is not None or pre_activation not in (None, "none"):
            prologue = {"noise": noise, "noise_weight": noise_weight, "bias": bias,
                        "pre_activation": pre_activation, "pre_negative_slope": pre_negative_slope}
        if self.impl in FUSED:
            return functional.adain_affine(x, shift, scale, self.eps, self.unbiased,
                                           backend=FUSED[self.impl], **prologue)
        if prologue:
            prologue["pre_activation"] = pre_activation or "none"
            x = reference.prologue(x, **prologue).to(x.dtype)
        if self.impl == "reference":
            return reference.adain_affine(x, shift, scale, self.eps, self.unbiased)
        per_row = (*scale.shape, *([1] * (x.dim() - 2)))  # (N, C, 1, ...) against (N, C, *)
        out = F.instance_norm(x, eps=self.eps) * scale.view(per_row) + shift.view(per_row)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, semantics={self.semantics!r}, eps={self.eps}, "
                f"impl={self.impl!r}")

