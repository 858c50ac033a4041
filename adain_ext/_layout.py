"""Layout and dtype rules every backend follows (the same as csrc/checks.h): which layout an output
keeps, how a (N, C, *) tensor of any rank runs as 4-D rows, which dtype statistics accumulate in,
and the shapes of fake outputs.

(N, C, *) tensors of rank >= 3 run as the rows of a 4-D tensor. "Channels last" means C innermost
with the other dims in order (channels_last for 4-D, channels_last_3d for 5-D, the (N, T, C) memory
of a transposed sequence for 3-D); in both kept layouts the trailing dims merge into one, so a
(N, C, *) tensor reads as (N, C, L, 1) in the same layout without a copy. 4-D tensors keep their
shape.
"""
from __future__ import annotations

import math

import torch


def _channels_last_order(rank: int) -> list[int]:
    return [0, *range(2, rank), 1]


def is_channels_last(x: torch.Tensor) -> bool:
    """C innermost and the other dims in order (true also when x is contiguous and C == 1)."""
    return x.permute(_channels_last_order(x.dim())).is_contiguous()


def as_rows(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """x as 4-D rows in the given layout (copied only when its strides differ)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if x.dim() == 4:
        return x.contiguous(memory_format=fmt)
    if not channels_last:
        x = x.contiguous()
    elif not is_channels_last(x):
        order = _channels_last_order(x.dim())
        x = x.permute(order).contiguous().permute([order.index(d) for d in range(x.dim())])
    return x.view(x.shape[0], x.shape[1], math.prod(x.shape[2:]), 1)  # the trailing dims merge


def canonical_layout(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The 4-D rows a kernel reads and whether they are channels last: contiguous and channels last
    are kept (contiguous wins when a tensor is both); anything else is made contiguous."""
    channels_last = not x.is_contiguous() and is_channels_last(x)
    return as_rows(x, channels_last), channels_last


def shaped_like(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A kernel's 4-D result (rows of `like`) back in the shape of `like`, keeping its layout."""
    # Always a view: L's stride is 1 (contiguous) or C (channels last), and unflattening it gives
    # the trailing dims the strides of that layout.
    return rows.view(like.shape) if like.dim() != 4 else rows


def like_layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """t (a gradient, with any strides) as 4-D rows in the layout the kernel reads x in."""
    return as_rows(t, channels_last)


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics accumulate (and internal ops return them) in float32, float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def stat_shape_of(x: torch.Tensor) -> tuple[int, ...]:
    """mean_std's outputs: (N, C) followed by a 1 per trailing dim of x, broadcastable against x."""
    return (x.shape[0], x.shape[1], *([1] * (x.dim() - 2)))


def empty_stats(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[:2], dtype=stat_dtype(x.dtype))


def empty_output(x: torch.Tensor) -> torch.Tensor:
    """A fresh tensor of x's shape in the layout the kernels give x's results."""
    channels_last = not x.is_contiguous() and is_channels_last(x)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if x.dim() == 4:
        return torch.empty_like(x, memory_format=fmt)
    # One allocation with the strides of the 4-D rows the kernels write, viewed back as x's shape.
    rows_shape = (x.shape[0], x.shape[1], math.prod(x.shape[2:]), 1)
    rows = torch.empty(rows_shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    return shaped_like(rows, x)


def as_grad_of(grad: torch.Tensor, like_shape: torch.Size, like_dtype: torch.dtype) -> torch.Tensor:
    """Shapes a (N, C) accumulation-dtype gradient like the statistic input it belongs to."""
    return grad.reshape(like_shape).to(like_dtype)


def flat_stat(stat: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """Per-(n, c) statistics in any float dtype, (N, C) or (N, C, 1, ...) -> contiguous (N*C,)."""
    return stat.reshape(-1).to(acc).contiguous()
