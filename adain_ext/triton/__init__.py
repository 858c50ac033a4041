"""The Triton backend: adain_ext.functional calls these with backend="triton".

Kernels and launchers live one file per op (mean_std.py, affine.py, fused.py); the row math they
share (std_of, blend, the row coefficients: the mirror of csrc/row_math.h) is in row_math.py, the
affine op's prologue (noise, bias, pre-activation) in prologue.py, the one Welford/Chan merge in
welford.py; launch plans, layout rules and registration in _common.py.
Each op is registered as adain_triton::<name> (a torch.library.triton_op on a GPU, so
torch.compile traces into the kernels) with the same schema and semantics as the C++ adain::<name>.

On a GPU each kernel's num_warps is autotuned (the first call of each bucket of shapes benchmarks
the configs that do not spill its tile; see _common.AUTOTUNE_KEY). ADAIN_EXT_TRITON_AUTOTUNE=0,
set before this package is imported, turns that off: every kernel then runs with the num_warps
of its launch plan and nothing is benchmarked (test runs use it: the GPU suite would otherwise
tune some 270 keys, about 6 minutes). The interpreter (TRITON_INTERPRET=1) never autotunes.
"""
import torch
from torch.autograd import forward_ad

from adain_ext import _validation, reference
from adain_ext.triton import _common
from adain_ext.triton.affine import (
    affine_backward_op,
    affine_forward_op,
    prologue_affine_backward_op,
    prologue_affine_forward_op,
)
from adain_ext.triton.fused import fused_forward_op
from adain_ext.triton.mean_std import mean_std_backward_op, mean_std_op

INTERPRET = _common.INTERPRET
limits = _common.limits


def _needs_reference(*tensors: torch.Tensor) -> bool:
    """Whether a forward-mode AD level is open (torch.func.jvp, jacfwd, forward_ad.dual_level) or
    a functorch transform differentiates these tensors (torch.func.grad, vjp, jacrev, hessian).
    A custom op's autograd registration never sees tangents and functorch refuses it, so there
    these functions run the reference, which ATen differentiates exactly in every mode (the
    compiled ops do the same in C++, csrc/autograd.cpp). torch.compile traces neither case."""
    if torch.compiler.is_compiling():
        return False
    if forward_ad._current_level >= 0:
        return True
    return (torch._C._functorch.peek_interpreter_stack() is not None
            and any(t.requires_grad for t in tensors))


def _reference_ops():
    from adain_ext.backends import ops  # the reference behind the same input checks

    return ops("reference")


def mean_std(x: torch.Tensor, eps: float = 1e-5, unbiased: bool = True):
    """(mean, std = sqrt(var + eps)) per (n, c), each (N, C, 1, 1) in x's dtype."""
    if _needs_reference(x):
        return _reference_ops().mean_std(x, eps, unbiased)
    return mean_std_op(x, eps, unbiased)


def adain(content: torch.Tensor, style: torch.Tensor, alpha: float = 1.0, eps: float = 1e-5,
          unbiased: bool = True) -> torch.Tensor:
    """alpha * AdaIN(content, style) + (1 - alpha) * content; style may have another H and W."""
    if _needs_reference(content, style):
        return _reference_ops().adain(content, style, alpha, eps, unbiased)
    return fused_forward_op(content, style, alpha, eps, unbiased)[0]


def adain_affine(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, eps: float = 1e-5,
                 unbiased: bool = True, activation: str | None = "none",
                 negative_slope: float = 0.01, *, noise: torch.Tensor | None = None,
                 noise_weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                 pre_activation: str = "none",
                 pre_negative_slope: float = 0.01) -> torch.Tensor:
    """act(std * (p - mean_p) / std_p + mean) with given per-(n, c) statistics; act is 'none',
    'relu' or 'leaky_relu' (with negative_slope). p is x, or with the prologue arguments
    pre_activation(x + noise_weight * noise + bias) (reference.prologue): noise (N, 1, *) or
    (N, C, *), noise_weight one per channel or a single value, bias one per channel."""
    activation = "none" if activation is None else activation
    if not _validation.has_prologue(noise, noise_weight, bias, pre_activation):
        if _needs_reference(x, mean, std):
            return _reference_ops().adain_affine(x, mean, std, eps, unbiased, activation,
                                                 negative_slope)
        return affine_forward_op(x, mean, std, 1.0, eps, unbiased, activation,
                                 negative_slope)[0]
    if _needs_reference(*(t for t in (x, mean, std, noise, noise_weight, bias)
                          if t is not None)):
        _validation.check_affine(x, mean, std, unbiased)
        _validation.check_prologue(x, noise, noise_weight, bias, pre_activation,
                                   pre_negative_slope)
        _validation.check_eps(eps)
        _validation.check_activation(activation, negative_slope)
        return reference.adain_affine(x, mean, std, eps, unbiased, activation, negative_slope,
                                      noise=noise, noise_weight=noise_weight, bias=bias,
                                      pre_activation=pre_activation,
                                      pre_negative_slope=pre_negative_slope)
    return prologue_affine_forward_op(x, noise, noise_weight, bias, pre_activation,
                                      pre_negative_slope, mean, std, eps, unbiased, activation,
                                      negative_slope)[0]


__all__ = [
    "adain",
    "adain_affine",
    "affine_backward_op",
    "affine_forward_op",
    "fused_forward_op",
    "limits",
    "mean_std",
    "mean_std_backward_op",
    "mean_std_op",
    "prologue_affine_backward_op",
    "prologue_affine_forward_op",
]
