"""adain_triton::mean_std and its backward: Triton kernels, launchers, op registration, autograd.

Also the row-statistics launcher the affine and fused ops reuse for long rows and styles.
"""
import torch
import triton.language as tl

from adain_ext import _autograd
from adain_ext._validation import check_eps, check_features
from adain_ext.triton import _common
from adain_ext.triton._common import kernel
from adain_ext.triton.welford import (
    merge_partials,
    row_base,
    row_block_and_piece,
    row_length,
    row_stats_loop,
    scalar,
    std_of,
    tile_pointers,
    variance_divisor,
)


@kernel
def _row_stats_kernel(X, MEAN, SECOND, R, C, L, chunk, eps_hi, eps_lo, ROWS_BUCKET,
                      FINALIZE: tl.constexpr, UNBIASED: tl.constexpr,
                      CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
    """Statistics of BLOCK_R rows over elements [split*chunk, split*chunk + chunk). FINALIZE (one
    split): writes mean and std. Otherwise writes the piece's mean and m2 to [split, row] partial
    buffers, merged later by merge_partials."""
    row_block, split = row_block_and_piece(tl.cdiv(L, chunk))
    rows = row_block * BLOCK_R + tl.arange(0, BLOCK_R)
    rows_mask = rows < R
    acc_zero = tl.zeros([BLOCK_R], MEAN.dtype.element_ty)
    base = row_base(rows, C, L, CHANNELS_LAST)
    start = split * chunk
    stop = tl.minimum(start + chunk, L)
    mean, m2, _ = row_stats_loop(X, base, rows_mask, start, stop, C, acc_zero,
                                 CHANNELS_LAST, BLOCK_L)
    if FINALIZE:
        eps = scalar(eps_hi, eps_lo, acc_zero)
        tl.store(MEAN + rows, mean, mask=rows_mask)
        tl.store(SECOND + rows, std_of(m2, L, eps, UNBIASED), mask=rows_mask)
    else:
        tl.store(MEAN + split * R + rows, mean, mask=rows_mask)
        tl.store(SECOND + split * R + rows, m2, mask=rows_mask)


@kernel
def _merge_stats_kernel(PMEAN, PM2, MEAN, STD, R, L, chunk, splits, eps_hi, eps_lo, ROWS_BUCKET,
                        UNBIASED: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
    """Final mean and std of rows whose statistics were computed in `splits` pieces."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rows_mask = rows < R
    acc_zero = tl.zeros([BLOCK_R], MEAN.dtype.element_ty)
    mean, m2, _ = merge_partials(PMEAN, PM2, rows, rows_mask, R, L, chunk, splits, acc_zero)
    eps = scalar(eps_hi, eps_lo, acc_zero)
    tl.store(MEAN + rows, mean, mask=rows_mask)
    tl.store(STD + rows, std_of(m2, L, eps, UNBIASED), mask=rows_mask)


@kernel
def _mean_std_backward_kernel(GM, GS, X, MEAN, STD, GX, R, C, L, ROWS_BUCKET,
                              UNBIASED: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                              BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
    """grad_x = gm / L + gs * (x - mean) / (D * std), one [BLOCK_R, BLOCK_L] tile per program."""
    row_block, l_tile = row_block_and_piece(tl.cdiv(L, BLOCK_L))
    rows = row_block * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_l = l_tile * BLOCK_L + tl.arange(0, BLOCK_L)
    rows_mask = rows < R
    acc = MEAN.dtype.element_ty
    mean = tl.load(MEAN + rows, mask=rows_mask, other=0.0)
    std = tl.load(STD + rows, mask=rows_mask, other=1.0)
    slope = tl.load(GS + rows, mask=rows_mask, other=0.0) / (
        variance_divisor(L, std, UNBIASED) * std)
    shift = tl.load(GM + rows, mask=rows_mask, other=0.0) / row_length(L, std)
    base = row_base(rows, C, L, CHANNELS_LAST)
    mask = rows_mask[:, None] & (offs_l < L)[None, :]
    x = tl.load(tile_pointers(X, base, offs_l, C, CHANNELS_LAST), mask=mask, other=0.0).to(acc)
    # x - mean before scaling: folding mean into the shift cancels on large-mean rows.
    grad = slope[:, None] * (x - mean[:, None]) + shift[:, None]
    tl.store(tile_pointers(GX, base, offs_l, C, CHANNELS_LAST), grad, mask=mask)


def row_stats(x: torch.Tensor, channels_last: bool, eps: float, unbiased: bool, shape=None):
    """(mean, std) of every row of a canonical-layout x in the accumulation dtype, each of
    `shape` (default (N, C)), contiguous.

    One launch when a row fits one program or there are enough rows to fill the device;
    otherwise rows are split into pieces (statistics merged exactly) and a merge launch follows.
    """
    N, C, H, W = x.shape
    R, L = N * C, H * W
    acc = _common.stat_dtype(x.dtype)
    mean = torch.empty(shape or (N, C), dtype=acc, device=x.device)
    std = torch.empty(shape or (N, C), dtype=acc, device=x.device)
    p = _common.plan(R, L, channels_last, x.device)
    eps_hi, eps_lo = _common.split_scalar(eps)
    opts = _common.launch_options(p)
    if p.splits == 1:
        _common.launch(
            _row_stats_kernel, p.grid(), x, mean, std, R, C, L, L, eps_hi, eps_lo,
            p.rows_bucket, FINALIZE=True, UNBIASED=unbiased, CHANNELS_LAST=channels_last,
            BLOCK_R=p.block_r, BLOCK_L=p.block_l, **opts)
        return mean, std
    p_mean = torch.empty(p.splits, R, dtype=acc, device=x.device)
    p_m2 = torch.empty(p.splits, R, dtype=acc, device=x.device)
    _common.launch(
        _row_stats_kernel, p.grid(p.splits), x, p_mean, p_m2, R, C, L, p.chunk, eps_hi, eps_lo,
        p.rows_bucket, FINALIZE=False, UNBIASED=unbiased, CHANNELS_LAST=channels_last,
        BLOCK_R=p.block_r, BLOCK_L=p.block_l, **opts)
    _common.launch(
        _merge_stats_kernel, p.grid(), p_mean, p_m2, mean, std, R, L, p.chunk, p.splits, eps_hi,
        eps_lo, p.rows_bucket, UNBIASED=unbiased, CHANNELS_LAST=channels_last,
        BLOCK_R=p.block_r, BLOCK_L=p.block_l, **opts)
    return mean, std


def mean_std_backward(grad_mean, grad_std, x_in, mean, std, unbiased: bool) -> torch.Tensor:
    """The gradient of x given the gradients of its (mean, std); statistics of any float dtype."""
    x, channels_last = _common.canonical(x_in)
    grad_x = _common.empty_output(x)
    N, C, H, W = x.shape
    R, L = N * C, H * W
    if R == 0:
        return _common.shaped_like(grad_x, x_in)
    acc = _common.stat_dtype(x.dtype)
    gm, gs, m, s = (_common.flat_stat(t, acc) for t in (grad_mean, grad_std, mean, std))
    p = _common.plan(R, L, channels_last, x.device)
    _common.launch(
        _mean_std_backward_kernel, p.grid(p.l_blocks), gm, gs, x, m, s, grad_x, R, C, L,
        p.rows_bucket, UNBIASED=unbiased, CHANNELS_LAST=channels_last, BLOCK_R=p.block_r,
        BLOCK_L=p.block_l, **_common.launch_options(p))
    return _common.shaped_like(grad_x, x_in)


# ---- Ops (namespace adain_triton; the schemas mirror adain::mean_std, adain::_mean_std_backward).


def _mean_std_fake(x, eps=1e-5, unbiased=True):
    check_features(x, "x", unbiased)
    check_eps(eps)
    return x.new_empty(_common.stat_shape(x)), x.new_empty(_common.stat_shape(x))


@_common.register("mean_std", _mean_std_fake)
def mean_std_op(x: torch.Tensor, eps: float = 1e-5,
                unbiased: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    check_features(x, "x", unbiased)
    check_eps(eps)
    shape = _common.stat_shape(x)
    if x.shape[0] * x.shape[1] == 0:
        return x.new_empty(shape), x.new_empty(shape)
    x, channels_last = _common.canonical(x)
    mean, std = row_stats(x, channels_last, eps, unbiased, shape=shape)
    # The kernels write the accumulation dtype; 16-bit inputs get their one cast here.
    return mean.to(x.dtype), std.to(x.dtype)


def _mean_std_backward_fake(grad_mean, grad_std, x, mean, std, unbiased):
    return _common.empty_output(x)


@_common.register("_mean_std_backward", _mean_std_backward_fake)
def mean_std_backward_op(grad_mean: torch.Tensor, grad_std: torch.Tensor, x: torch.Tensor,
                         mean: torch.Tensor, std: torch.Tensor, unbiased: bool) -> torch.Tensor:
    return mean_std_backward(grad_mean, grad_std, x, mean, std, unbiased)


_backward, _setup_context = _autograd.mean_std(mean_std_backward_op)
mean_std_op.register_autograd(_backward, setup_context=_setup_context)
