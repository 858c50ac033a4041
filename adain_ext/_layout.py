"""Layout and dtype rules every backend follows (the same as csrc/checks.h): which memory format an
output keeps, which dtype statistics accumulate in, and the shapes of fake outputs."""
from __future__ import annotations

import torch


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The kernels keep contiguous and channels_last layouts and make anything else contiguous.

    Contiguous wins when a tensor is both (C == 1 or H == W == 1), matching csrc/checks.h.
    """
    if x.is_contiguous():
        return torch.contiguous_format
    if x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics accumulate (and internal ops return them) in float32, float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def empty_stats(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[:2], dtype=stat_dtype(x.dtype))


def empty_output(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x, memory_format=output_memory_format(x))


def as_grad_of(grad: torch.Tensor, like_shape: torch.Size, like_dtype: torch.dtype) -> torch.Tensor:
    """Shapes a (N, C) accumulation-dtype gradient like the statistic input it belongs to."""
    return grad.reshape(like_shape).to(like_dtype)


def canonical(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The tensor a kernel reads and whether it is channels_last: contiguous and channels_last are
    kept (contiguous wins when a tensor is both); anything else is made contiguous."""
    if x.is_contiguous():
        return x, False
    if x.is_contiguous(memory_format=torch.channels_last):
        return x, True
    return x.contiguous(), False


def like_layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """t in the layout the kernel reads x in (gradients may arrive with any strides)."""
    return t.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def flat_stat(stat: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """Per-(n, c) statistics in any float dtype, (N, C) or (N, C, 1, 1) -> contiguous (N*C,) acc."""
    return stat.reshape(-1).to(acc).contiguous()
