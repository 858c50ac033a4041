"""adain_triton::mean_std and its backward: Triton kernels, launchers, op registration, autograd.

Also the row-statistics launcher the affine and fused ops reuse for long rows and styles.
"""
import torch
import triton.language as tl

from adain_ext import _autograd, fakes
from adain_ext._validation import check_eps, check_features
from adain_ext.triton import _common
from adain_ext.triton._common import kernel
from adain_ext.triton.prologue import PLAIN_ARGS, prologue_params, prologue_row_stats_loop
from adain_ext.triton.row_math import apply_coef, mean_std_backward_coef, std_of
from adain_ext.triton.welford import (
    merge_partials,
    row_base,
    row_block_and_piece,
    row_stats_loop,
    scalar,
    tile_pointers,
)


@kernel
def _row_stats_kernel(X, MEAN, STD_OR_M2, R, C, L, segment_len, eps_hi, eps_lo, ROWS_BUCKET,
                      FINALIZE: tl.constexpr, UNBIASED: tl.constexpr,
                      CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
                      NOISE=None, NOISE_WEIGHT=None, BIAS=None, pre_slope_hi=None,
                      pre_slope_lo=None, PROLOGUE: tl.constexpr = False,
                      NOISE_MODE: tl.constexpr = 0, PRE_ACTIVATION: tl.constexpr = 0):
    """Statistics of BLOCK_R rows over elements [segment * segment_len, (segment + 1) *
    segment_len). FINALIZE (one segment per row): writes mean and std. Otherwise writes the
    segment's mean and m2 to [segment, row] partial buffers (MEAN is then the partial_mean
    buffer, STD_OR_M2 the partial_m2 one), merged later by merge_partials. PROLOGUE: the
    statistics of p = act_pre(x + weight * noise + bias) instead of x (prologue.py)."""
    row_block, segment = row_block_and_piece(tl.cdiv(L, segment_len))
    rows = row_block * BLOCK_R + tl.arange(0, BLOCK_R)
    rows_mask = rows < R
    acc_zero = tl.zeros([BLOCK_R], MEAN.dtype.element_ty)
    base = row_base(rows, C, L, CHANNELS_LAST)
    start = segment * segment_len
    stop = tl.minimum(start + segment_len, L)
    if PROLOGUE:
        weight, bias, pre_slope = prologue_params(NOISE_WEIGHT, BIAS, rows, rows_mask, C,
                                                  pre_slope_hi, pre_slope_lo, acc_zero)
        mean, m2, _ = prologue_row_stats_loop(X, NOISE, rows, base, rows_mask, start, stop, C, L,
                                              weight, bias, pre_slope, acc_zero, CHANNELS_LAST,
                                              NOISE_MODE, PRE_ACTIVATION, BLOCK_L)
    else:
        mean, m2, _ = row_stats_loop(X, base, rows_mask, start, stop, C, acc_zero,
                                     CHANNELS_LAST, BLOCK_L)
    if FINALIZE:
        eps = scalar(eps_hi, eps_lo, acc_zero)
        tl.store(MEAN + rows, mean, mask=rows_mask)
        tl.store(STD_OR_M2 + rows, std_of(m2, L, eps, UNBIASED), mask=rows_mask)
    else:
        tl.store(MEAN + segment * R + rows, mean, mask=rows_mask)
        tl.store(STD_OR_M2 + segment * R + rows, m2, mask=rows_mask)


@kernel
def _merge_stats_kernel(PARTIAL_MEAN, PARTIAL_M2, MEAN, STD, R, L, segment_len, segments, eps_hi,
                        eps_lo, ROWS_BUCKET, UNBIASED: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
    """Final mean and std of rows whose statistics were computed in `segments` segments."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rows_mask = rows < R
    acc_zero = tl.zeros([BLOCK_R], MEAN.dtype.element_ty)
    mean, m2, _ = merge_partials(PARTIAL_MEAN, PARTIAL_M2, rows, rows_mask, R, L, segment_len,
                                 segments, acc_zero)
    eps = scalar(eps_hi, eps_lo, acc_zero)
    tl.store(MEAN + rows, mean, mask=rows_mask)
    tl.store(STD + rows, std_of(m2, L, eps, UNBIASED), mask=rows_mask)


@kernel
def _mean_std_backward_kernel(GRAD_MEAN, GRAD_STD, X, MEAN, STD, GRAD_X, R, C, L, ROWS_BUCKET,
                              UNBIASED: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                              BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
    """grad_x = grad_mean / L + grad_std * (x - mean) / (D * std), one [BLOCK_R, BLOCK_L] tile
    per program."""
    row_block, l_tile = row_block_and_piece(tl.cdiv(L, BLOCK_L))
    rows = row_block * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_l = l_tile * BLOCK_L + tl.arange(0, BLOCK_L)
    rows_mask = rows < R
    acc = MEAN.dtype.element_ty
    slope, mean, shift = mean_std_backward_coef(
        tl.load(GRAD_MEAN + rows, mask=rows_mask, other=0.0),
        tl.load(GRAD_STD + rows, mask=rows_mask, other=0.0),
        tl.load(MEAN + rows, mask=rows_mask, other=0.0),
        tl.load(STD + rows, mask=rows_mask, other=1.0), L, UNBIASED)
    base = row_base(rows, C, L, CHANNELS_LAST)
    mask = rows_mask[:, None] & (offs_l < L)[None, :]
    x = tl.load(tile_pointers(X, base, offs_l, C, CHANNELS_LAST), mask=mask, other=0.0).to(acc)
    grad = apply_coef(None, x, None, slope, mean, shift, False)
    tl.store(tile_pointers(GRAD_X, base, offs_l, C, CHANNELS_LAST), grad, mask=mask)


def row_stats(x: torch.Tensor, channels_last: bool, eps: float, unbiased: bool, shape=None):
    """(mean, std) of every row of a canonical-layout x in the accumulation dtype, each of
    `shape` (default (N, C)), contiguous.

    One launch when a row fits one program or there are enough rows to fill the device;
    otherwise rows are cut into segments (statistics merged exactly) and a merge launch follows.
    """
    N, C, H, W = x.shape
    R, L = N * C, H * W
    acc = _common.stat_dtype(x.dtype)
    mean = torch.empty(shape or (N, C), dtype=acc, device=x.device)
    std = torch.empty(shape or (N, C), dtype=acc, device=x.device)
    p = _common.plan(R, L, channels_last, x.device)
    eps_hi, eps_lo = _common.split_scalar(eps)
    opts = _common.launch_options(p)
    if p.segments == 1:
        _common.launch(
            _row_stats_kernel, p.grid(), x, mean, std, R, C, L, L, eps_hi, eps_lo,
            p.rows_bucket, FINALIZE=True, UNBIASED=unbiased, CHANNELS_LAST=channels_last,
            BLOCK_R=p.block_r, BLOCK_L=p.block_l, **PLAIN_ARGS, **opts)
        return mean, std
    partial_mean, partial_m2 = _common.empty_partials(p, acc, x.device)
    _common.launch(
        _row_stats_kernel, p.grid(p.segments), x, partial_mean, partial_m2, R, C, L,
        p.segment_len, eps_hi, eps_lo, p.rows_bucket, FINALIZE=False, UNBIASED=unbiased,
        CHANNELS_LAST=channels_last, BLOCK_R=p.block_r, BLOCK_L=p.block_l, **PLAIN_ARGS, **opts)
    _common.launch(
        _merge_stats_kernel, p.grid(), partial_mean, partial_m2, mean, std, R, L, p.segment_len,
        p.segments, eps_hi, eps_lo, p.rows_bucket, UNBIASED=unbiased,
        CHANNELS_LAST=channels_last, BLOCK_R=p.block_r, BLOCK_L=p.block_l, **opts)
    return mean, std


def mean_std_backward(grad_mean, grad_std, x_in, mean, std, unbiased: bool) -> torch.Tensor:
    """The gradient of x given the gradients of its (mean, std); statistics of any float dtype."""
    x, channels_last = _common.canonical_layout(x_in)
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


@_common.register("mean_std", fakes.mean_std)
def mean_std_op(x: torch.Tensor, eps: float = 1e-5,
                unbiased: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    check_features(x, "x", unbiased)
    check_eps(eps)
    shape = _common.stat_shape_of(x)
    if x.shape[0] * x.shape[1] == 0:
        return x.new_empty(shape), x.new_empty(shape)
    x, channels_last = _common.canonical_layout(x)
    mean, std = row_stats(x, channels_last, eps, unbiased, shape=shape)
    # The kernels write the accumulation dtype; 16-bit inputs get their one cast here.
    return mean.to(x.dtype), std.to(x.dtype)


@_common.register("_mean_std_backward", fakes.mean_std_backward)
def mean_std_backward_op(grad_mean: torch.Tensor, grad_std: torch.Tensor, x: torch.Tensor,
                         mean: torch.Tensor, std: torch.Tensor, unbiased: bool) -> torch.Tensor:
    return mean_std_backward(grad_mean, grad_std, x, mean, std, unbiased)


_backward, _setup_context = _autograd.mean_std(mean_std_backward_op)
mean_std_op.register_autograd(_backward, setup_context=_setup_context)
