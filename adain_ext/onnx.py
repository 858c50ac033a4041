"""ONNX translations of the `adain` ops, for `torch.onnx.export(..., dynamo=True)`.

torch.onnx's exporter translates a custom op only through its `custom_translation_table`
argument: it builds a fresh registry from its own ATen library for every export, and has no
public registry a package could add to at import time. So a model calling `adain_ext.adain`,
`mean_std` or `adain_affine` exports with one extra argument:

    import adain_ext.onnx
    torch.onnx.export(model, args, "model.onnx", dynamo=True,
                      custom_translation_table=adain_ext.onnx.translation_table())
    adain_ext.onnx.export(model, args, "model.onnx")      # the same call, table filled in

Each translation is the op's semantics written in standard ONNX ops (opset 18), so the file runs
on any ONNX runtime with no custom kernel: statistics per (n, c) over all dims after the first two
(any rank >= 3), mean then centred sum of squares (never E[x^2] - E[x]^2), divided by the count
minus one (unbiased, the default) or the count, eps added to the variance before the square root;
float32 statistics for 16-bit input and float64 for float64, as the kernels accumulate; output
`(T_std / std_x) * (x - mean_x) + T_mean` cast back to the input's dtype, with alpha folded into
the target statistics as the kernels do (exact: content = std_c * x_hat + mean_c), and the target
statistics used as they are at alpha == 1. Content and style may differ in their trailing shape.

The public ops (`fused`, `mean_std`, `affine`) are translated as they appear in a
`torch.export` graph; `_fused_forward` and `_affine_forward`, which the public ones decompose
into, are translated too, for programs already decomposed before export.

Needs onnx and onnxscript (`pip install 'adain_ext[onnx]'`, which adds onnxruntime to run the
result).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

try:
    from onnxscript import ir
    from onnxscript import opset18 as op
except ImportError as error:  # the optional `onnx` extra
    raise ImportError("adain_ext.onnx needs onnx and onnxscript: pip install onnx onnxscript "
                      "onnxruntime (or pip install 'adain_ext[onnx]')") from error

import adain_ext

__all__ = ["export", "translation_table"]

_SIXTEEN_BIT = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def _stat_dtype(dtype: ir.DataType) -> ir.DataType:
    """The accumulation dtype of the kernels: float64 for float64, else float32."""
    return ir.DataType.DOUBLE if dtype == ir.DataType.DOUBLE else ir.DataType.FLOAT


def _scalar(value: float, dtype: ir.DataType):
    return op.Constant(value=ir.tensor(np.array(value, dtype=dtype.numpy())))


def _cast(x, dtype: ir.DataType):
    return x if x.dtype == dtype else op.Cast(x, to=dtype)


def _moments(x, eps: float, unbiased: bool, rank: int | None = None):
    """(x - mean, mean, std) of each (n, c) row over all trailing dims, in the statistics dtype,
    the statistics shaped (N, C, 1, ...) with x's rank (given for a computed x, which has no
    shape yet)."""
    stat = _stat_dtype(x.dtype)
    rank = len(x.shape) if rank is None else rank  # before the Cast: it has no shape
    axes = op.Constant(value_ints=list(range(2, rank)))
    x = _cast(x, stat)
    mean = op.ReduceMean(x, axes, keepdims=1)
    centred = op.Sub(x, mean)
    count = op.Cast(op.ReduceProd(op.Shape(x, start=2), keepdims=0), to=stat)
    divisor = op.Sub(count, _scalar(1.0, stat)) if unbiased else count
    var = op.Div(op.ReduceSumSquare(centred, axes, keepdims=1), divisor)
    return centred, mean, op.Sqrt(op.Add(var, _scalar(eps, stat)))


def _renormalise(x, centred, mean_x, std_x, mean, std, alpha: float):
    """(T_std / std_x) * (x - mean_x) + T_mean in x's dtype; T = the target statistics
    blended with x's own by alpha."""
    stat = _stat_dtype(x.dtype)
    mean = op.Reshape(_cast(mean, stat), op.Shape(mean_x))  # (N, C) or (N, C, 1, ...)
    std = op.Reshape(_cast(std, stat), op.Shape(mean_x))
    if alpha != 1.0:
        a, b = _scalar(alpha, stat), _scalar(1.0 - alpha, stat)
        mean = op.Add(op.Mul(a, mean), op.Mul(b, mean_x))
        std = op.Add(op.Mul(a, std), op.Mul(b, std_x))
    out = op.Add(op.Mul(centred, op.Div(std, std_x)), mean)
    return _cast(out, x.dtype)


def _rows(x, statistic):
    """A (N, C, 1, ...) statistic as the (N, C) tensor the internal ops return."""
    return op.Reshape(statistic, op.Shape(x, start=0, end=2))


def _fused_forward(content, style, alpha: float, eps: float, unbiased: bool):
    centred, content_mean, content_std = _moments(content, eps, unbiased)
    _, style_mean, style_std = _moments(style, eps, unbiased)
    out = _renormalise(content, centred, content_mean, content_std, style_mean, style_std, alpha)
    return (out, _rows(content, content_mean), _rows(content, content_std),
            _rows(style, style_mean), _rows(style, style_std))


def _activate(out, activation: str, negative_slope: float):
    """The affine op's epilogue: ONNX Relu and LeakyRelu have its semantics (y if y > 0, else
    0 or negative_slope * y; NaN passes)."""
    if activation == "relu":
        return op.Relu(out)
    if activation == "leaky_relu":
        return op.LeakyRelu(out, alpha=negative_slope)
    return out


def _affine_forward(x, mean, std, alpha: float, eps: float, unbiased: bool,
                    activation: str = "none", negative_slope: float = 0.01):
    centred, mean_x, std_x = _moments(x, eps, unbiased)
    out = _renormalise(x, centred, mean_x, std_x, mean, std, alpha)
    return _activate(out, activation, negative_slope), _rows(x, mean_x), _rows(x, std_x)


def _prologue(x, noise, noise_weight, bias, pre_activation: str, pre_negative_slope: float):
    """The affine op's prologue, pre_activation(x + noise_weight * noise + bias), in the
    statistics dtype (as the kernels form it)."""
    stat = _stat_dtype(x.dtype)
    channel = op.Constant(value_ints=[1, -1] + [1] * (len(x.shape) - 2))
    p = _cast(x, stat)
    if noise is not None:
        n = _cast(noise, stat)
        if noise_weight is not None:
            n = op.Mul(op.Reshape(_cast(noise_weight, stat), channel), n)
        p = op.Add(p, n)
    if bias is not None:
        p = op.Add(p, op.Reshape(_cast(bias, stat), channel))
    return _activate(p, pre_activation, pre_negative_slope)


def _prologue_affine_forward(x, noise, noise_weight, bias, pre_activation: str,
                             pre_negative_slope: float, mean, std, eps: float, unbiased: bool,
                             activation: str, negative_slope: float):
    rank = len(x.shape)
    p = _prologue(x, noise, noise_weight, bias, pre_activation, pre_negative_slope)
    centred, mean_p, std_p = _moments(p, eps, unbiased, rank)
    out = _cast(_renormalise(p, centred, mean_p, std_p, mean, std, 1.0), x.dtype)
    return _activate(out, activation, negative_slope), _rows(x, mean_p), _rows(x, std_p)


def fused(content, style, alpha: float = 1.0, eps: float = 1e-5, unbiased: bool = True):
    """adain::fused: alpha * AdaIN(content, style) + (1 - alpha) * content."""
    return _fused_forward(content, style, alpha, eps, unbiased)[0]


def affine(x, mean, std, eps: float = 1e-5, unbiased: bool = True, activation: str = "none",
           negative_slope: float = 0.01, noise=None, noise_weight=None, bias=None,
           pre_activation: str = "none", pre_negative_slope: float = 0.01):
    """adain::affine: act(std * (p - mean_p) / std_p + mean), target statistics (N, C) or
    (N, C, 1, ...), p = x or the prologue's pre_activation(x + noise_weight * noise + bias)."""
    if (noise is not None or noise_weight is not None or bias is not None
            or pre_activation != "none"):
        return _prologue_affine_forward(x, noise, noise_weight, bias, pre_activation,
                                        pre_negative_slope, mean, std, eps, unbiased, activation,
                                        negative_slope)[0]
    return _affine_forward(x, mean, std, 1.0, eps, unbiased, activation, negative_slope)[0]


def mean_std(x, eps: float = 1e-5, unbiased: bool = True):
    """adain::mean_std: per-(n, c) mean and sqrt(var + eps), (N, C, 1, ...) in x's dtype."""
    _, mean, std = _moments(x, eps, unbiased)
    return _cast(mean, x.dtype), _cast(std, x.dtype)


def translation_table() -> dict[torch._ops.OpOverload, Callable]:
    """{op overload: ONNX translation} for every `adain` op a model's graph can hold: pass it as
    `torch.onnx.export(..., dynamo=True, custom_translation_table=...)`. Empty when the
    extension is not built: then every function runs the reference, which exports as it is."""
    if not adain_ext.HAS_CPP:
        return {}
    ops = torch.ops.adain
    return {
        ops.fused.default: fused,
        ops.mean_std.default: mean_std,
        ops.affine.default: affine,
        ops._fused_forward.default: _fused_forward,
        ops._affine_forward.default: _affine_forward,
        ops._prologue_affine_forward.default: _prologue_affine_forward,
    }


def export(model: torch.nn.Module | torch.export.ExportedProgram, args: tuple[Any, ...] = (),
           f: str | os.PathLike | None = None, *,
           custom_translation_table: Mapping[Callable, Callable] | None = None,
           **kwargs) -> torch.onnx.ONNXProgram:
    """`torch.onnx.export(model, args, f, dynamo=True, **kwargs)` with the `adain` translations
    added to `custom_translation_table` (yours win for the ops you give)."""
    table = {**translation_table(), **(custom_translation_table or {})}
    return torch.onnx.export(model, args, f, dynamo=True, custom_translation_table=table, **kwargs)
