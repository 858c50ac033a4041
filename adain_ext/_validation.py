"""Input checks for the Python-side paths (reference and Triton backends, fake kernels).

The compiled kernels run the same checks in csrc/checks.h with the same messages, so a user gets
the same error whichever backend runs; tests/test_errors.py holds both to that.
"""
from __future__ import annotations

import math

import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _fail(message: str, error: type = ValueError):
    raise error(f"adain: {message}")


def row_length(x: torch.Tensor) -> int:
    """Elements per (n, c) row: the product of the trailing dims of a (N, C, *) tensor."""
    return math.prod(x.shape[2:])


def check_features(x: torch.Tensor, name: str, unbiased: bool) -> None:
    if x.dim() < 3:
        _fail(f"{name} must be a (N, C, *) tensor with at least 3 dims, got {x.dim()}-D with shape "
              f"{list(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        _fail(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}", TypeError)
    if x.shape[0] * x.shape[1] == 0:
        return  # empty N or C: an empty result, whatever the row length is
    L = row_length(x)
    if L == 0:
        _fail(f"{name} has L = 0 elements per (n, c) row (shape {list(x.shape)}); statistics need at "
              "least one element")
    if unbiased and L < 2:
        _fail(f"{name} has L = {L} element per (n, c) row (shape {list(x.shape)}); unbiased variance "
              "needs L >= 2 (pass unbiased=False for instance-norm statistics)")


def check_eps(eps: float) -> None:
    if not 0 <= eps < math.inf:  # also rejects NaN
        _fail(f"eps must be >= 0 and finite, got {eps}")


def check_alpha(alpha: float) -> None:
    if not -math.inf < alpha < math.inf:  # NaN or Inf would make every output NaN
        _fail(f"alpha must be a finite number, got {alpha}")


ACTIVATIONS = ("none", "relu", "leaky_relu")


def check_activation(activation: str, negative_slope: float) -> None:
    """The affine op's output activation: 'none', 'relu' or 'leaky_relu' (F.relu's and
    F.leaky_relu's names); negative_slope is leaky_relu's and must be finite."""
    if activation not in ACTIVATIONS:
        _fail(f"activation must be 'none', 'relu' or 'leaky_relu', got {activation!r}".replace(
            '"', "'"))
    if activation != "none" and not -math.inf < negative_slope < math.inf:
        _fail(f"negative_slope must be a finite number, got {negative_slope}")


def check_backward_mean(mean, activation: str) -> None:
    """_affine_backward with an activation recomputes the pre-activation output, which needs the
    forward's target mean."""
    if activation != "none" and mean is None:
        _fail(f"_affine_backward with activation={activation!r} needs the target mean "
              "(it recomputes the output before the activation)".replace('"', "'"))


def check_scalars(alpha=1.0, eps: float = 0.0) -> None:
    """alpha and eps as the public API takes them: finite numbers (NaN or Inf would turn every
    output into NaN without an error); a tensor alpha that requires grad is refused, as it
    would silently be turned into a float without its gradient."""
    if isinstance(alpha, torch.Tensor):
        if alpha.requires_grad:
            _fail("alpha is a tensor that requires grad; the ops take alpha as a number and would "
                  "drop its gradient (blend with torch.lerp(content, adain(..., alpha=1), alpha) "
                  "to learn it)", TypeError)
        if alpha.numel() != 1:
            _fail(f"alpha must be a number or a one-element tensor, got shape {list(alpha.shape)}")
        alpha = alpha.item()
    check_alpha(alpha)
    check_eps(eps)


def check_pair(content: torch.Tensor, style: torch.Tensor, unbiased: bool) -> None:
    check_features(content, "content", unbiased)
    check_features(style, "style", unbiased)
    if content.shape[:2] != style.shape[:2]:
        _fail(f"style must have the same N and C as content (got {content.shape[0]}x{content.shape[1]} "
              f"and {style.shape[0]}x{style.shape[1]})")
    if content.dtype != style.dtype:
        _fail(f"style dtype ({style.dtype}) must match content dtype ({content.dtype})", TypeError)
    if content.device != style.device:
        _fail(f"style is on {style.device} but content is on {content.device}")


def check_statistic(stat: torch.Tensor, name: str, x: torch.Tensor) -> None:
    """Per-(n, c) statistics: (N, C), or (N, C) followed by any number of 1s ((N, C, 1, 1) for 4-D
    x)."""
    N, C = x.shape[:2]
    if tuple(stat.shape[:2]) != (N, C) or any(s != 1 for s in stat.shape[2:]):
        _fail(f"{name} must have shape (N, C) or (N, C, 1, ...) = ({N}, {C}), got {list(stat.shape)}")
    if stat.dtype not in _FLOAT_DTYPES:
        _fail(f"{name} must be float16, bfloat16, float32 or float64, got {stat.dtype}", TypeError)
    if stat.device != x.device:
        _fail(f"{name} is on {stat.device} but x is on {x.device}")


def check_affine(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, unbiased: bool) -> None:
    check_features(x, "x", unbiased)
    check_statistic(mean, "mean", x)
    check_statistic(std, "std", x)


def has_prologue(noise, noise_weight, bias, pre_activation: str) -> bool:
    return (noise is not None or noise_weight is not None or bias is not None
            or pre_activation != "none")


def _check_channel_param(t: torch.Tensor, name: str, x: torch.Tensor, one_allowed: bool) -> None:
    C = x.shape[1]
    ok = t.numel() == C or (one_allowed and t.numel() == 1)
    if ok and t.dim() > 1:  # (C,), or (1, C, 1, ...) like x
        ok = t.dim() == x.dim() and t.shape[0] == 1 and all(s == 1 for s in t.shape[2:])
    if not ok:
        single = ", or a single value" if one_allowed else ""
        _fail(f"{name} must have one value per channel, ({C},) or (1, {C}, 1, ...){single}; "
              f"got shape {list(t.shape)}")
    if t.dtype not in _FLOAT_DTYPES:
        _fail(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}", TypeError)
    if t.device != x.device:
        _fail(f"{name} is on {t.device} but x is on {x.device}")


def check_prologue(x: torch.Tensor, noise, noise_weight, bias, pre_activation: str,
                   pre_negative_slope: float) -> None:
    """The prologue's inputs (csrc/checks.h's check_prologue, the same messages)."""
    if pre_activation not in ACTIVATIONS:
        _fail(f"pre_activation must be 'none', 'relu' or 'leaky_relu', got {pre_activation!r}"
              .replace('"', "'"))
    if pre_activation != "none" and not -math.inf < pre_negative_slope < math.inf:
        _fail(f"pre_negative_slope must be a finite number, got {pre_negative_slope}")
    if noise is not None:
        ok = (noise.dim() == x.dim() and noise.shape[0] == x.shape[0]
              and noise.shape[1] in (1, x.shape[1]) and noise.shape[2:] == x.shape[2:])
        if not ok:
            _fail(f"noise must have shape (N, 1, *) or (N, C, *) with x's N, C and trailing dims "
                  f"{list(x.shape)}, got {list(noise.shape)}")
        if noise.dtype != x.dtype:
            _fail(f"noise dtype ({noise.dtype}) must match x dtype ({x.dtype})", TypeError)
        if noise.device != x.device:
            _fail(f"noise is on {noise.device} but x is on {x.device}")
    if noise_weight is not None:
        if noise is None:
            _fail("noise_weight was given without noise")
        _check_channel_param(noise_weight, "noise_weight", x, one_allowed=True)
    if bias is not None:
        _check_channel_param(bias, "bias", x, one_allowed=False)
