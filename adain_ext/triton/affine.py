"""adain_triton::_affine_forward / _affine_backward (behind adain_affine): Triton kernels,
launchers, op registration and autograd.

out = T_s * (x - mean_x) / std_x + T_m, with T_m = alpha*mean_t + (1-alpha)*mean_x and
T_s = alpha*std_t + (1-alpha)*std_x: alpha folded into the target statistics is exact, since
x = std_x * x_hat + mean_x. At alpha = 1 they are mean_t and std_t themselves (blend). The public
adain_affine uses alpha = 1; the fused op passes its alpha.
"""
import torch
import triton
import triton.language as tl

from adain_ext import _autograd
from adain_ext._validation import check_affine, check_eps
from adain_ext.triton import _common
from adain_ext.triton._common import kernel
from adain_ext.triton.mean_std import _row_stats_kernel
from adain_ext.triton.welford import (
    merge_partials,
    row_base,
    row_block_and_piece,
    row_length,
    scalar,
    std_of,
    tile_pointers,
    tile_stats,
    variance_divisor,
)


@triton.jit
def blend(alpha, target, own):
    """alpha * target + (1 - alpha) * own, and target itself at alpha == 1 (the rule of every
    backend): an Inf or NaN statistic of x's own must not reach the result through 0 * Inf."""
    return tl.where(alpha == 1.0, target, alpha * target + (1.0 - alpha) * own)


@triton.jit
def target_stats(mean_t, std_t, mean_x, std_x, alpha):
    """T_m and T_s: the per-row target statistics blended with x's own by alpha."""
    return blend(alpha, mean_t, mean_x), blend(alpha, std_t, std_x)


@triton.jit
def normalize_tile(x, mean_x, std_x, target_mean, target_std):
    # a * (x - mean_x) + T_m rather than a * x + b: b = T_m - a * mean_x cancels on large-mean rows.
    scale = target_std / std_x
    return scale[:, None] * (x - mean_x[:, None]) + target_mean[:, None]


@triton.jit
def affine_rows(X, OUT, XMEAN, XSTD, rows, rows_mask, C, L, mean_t, std_t, alpha, eps,
                UNBIASED: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK_L: tl.constexpr):
    """Whole rows in one tile (BLOCK_L >= L): statistics, then the output, from one read of x.
    mean_t, std_t: the rows' target statistics, [BLOCK_R] in the accumulation dtype."""
    base = row_base(rows, C, L, CHANNELS_LAST)
    offs_l = tl.arange(0, BLOCK_L)
    mask = rows_mask[:, None] & (offs_l < L)[None, :]
    x = tl.load(tile_pointers(X, base, offs_l, C, CHANNELS_LAST), mask=mask, other=0.0)
    x = x.to(mean_t.dtype)
    mean_x, m2, _ = tile_stats(x, mask)
    std_x = std_of(m2, L, eps, UNBIASED)
    target_mean, target_std = target_stats(mean_t, std_t, mean_x, std_x, alpha)
    out = normalize_tile(x, mean_x, std_x, target_mean, target_std)
    tl.store(tile_pointers(OUT, base, offs_l, C, CHANNELS_LAST), out, mask=mask)
    tl.store(XMEAN + rows, mean_x, mask=rows_mask)
    tl.store(XSTD + rows, std_x, mask=rows_mask)


@kernel
def _affine_row_kernel(X, MT, ST, OUT, XMEAN, XSTD, R, C, L, alpha_hi, alpha_lo, eps_hi, eps_lo,
                       ROWS_BUCKET, UNBIASED: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
    """Single pass: BLOCK_R whole rows per program (short rows packed several per program)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rows_mask = rows < R
    acc_zero = tl.zeros([BLOCK_R], XMEAN.dtype.element_ty)
    mean_t = tl.load(MT + rows, mask=rows_mask, other=0.0)
    std_t = tl.load(ST + rows, mask=rows_mask, other=1.0)
    affine_rows(X, OUT, XMEAN, XSTD, rows, rows_mask, C, L, mean_t, std_t,
                scalar(alpha_hi, alpha_lo, acc_zero), scalar(eps_hi, eps_lo, acc_zero),
                UNBIASED, CHANNELS_LAST, BLOCK_L)


@kernel
def _affine_apply_kernel(X, PMEAN, PM2, MT, ST, OUT, XMEAN, XSTD, R, C, L, chunk, splits,
                         alpha_hi, alpha_lo, eps_hi, eps_lo, ROWS_BUCKET,
                         UNBIASED: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
    """Second pass for long rows: every program merges its rows' partial statistics (in the same
    order, so all tiles of a row agree bit for bit) and writes one [BLOCK_R, BLOCK_L] tile."""
    row_block, l_tile = row_block_and_piece(tl.cdiv(L, BLOCK_L))
    rows = row_block * BLOCK_R + tl.arange(0, BLOCK_R)
    rows_mask = rows < R
    acc_zero = tl.zeros([BLOCK_R], XMEAN.dtype.element_ty)
    alpha = scalar(alpha_hi, alpha_lo, acc_zero)
    mean_x, m2, _ = merge_partials(PMEAN, PM2, rows, rows_mask, R, L, chunk, splits, acc_zero)
    std_x = std_of(m2, L, scalar(eps_hi, eps_lo, acc_zero), UNBIASED)
    mean_t = tl.load(MT + rows, mask=rows_mask, other=0.0)
    std_t = tl.load(ST + rows, mask=rows_mask, other=1.0)
    target_mean, target_std = target_stats(mean_t, std_t, mean_x, std_x, alpha)
    base = row_base(rows, C, L, CHANNELS_LAST)
    offs_l = l_tile * BLOCK_L + tl.arange(0, BLOCK_L)
    mask = rows_mask[:, None] & (offs_l < L)[None, :]
    x = tl.load(tile_pointers(X, base, offs_l, C, CHANNELS_LAST), mask=mask, other=0.0)
    out = normalize_tile(x.to(acc_zero.dtype), mean_x, std_x, target_mean, target_std)
    tl.store(tile_pointers(OUT, base, offs_l, C, CHANNELS_LAST), out, mask=mask)
    # Both sides tensors: triton 3.9's interpreter makes (tensor & scalar comparison) an int32
    # mask, which tl.store rejects.
    first = rows_mask & (rows * 0 + l_tile == 0)
    tl.store(XMEAN + rows, mean_x, mask=first)
    tl.store(XSTD + rows, std_x, mask=first)


@triton.jit
def grad_x_tile(g, x, mean_x, std_x, std_t, sum_g, sum_gx, alpha, L, UNBIASED: tl.constexpr):
    """grad_x = k*g + ((1-alpha) - k) * (sum_gx/D * x_hat + sum_g/L), k = T_s/std_x, where
    sum_gx = sum(g * x_hat) and x_hat = (x - mean_x)/std_x. The (1-alpha) terms are the
    gradient through x's own statistics inside T_m and T_s."""
    rstd = 1.0 / std_x
    k = blend(alpha, std_t, std_x) * rstd
    coef = (1.0 - alpha) - k
    slope = coef * sum_gx / variance_divisor(L, std_x, UNBIASED) * rstd
    shift = coef * sum_g / row_length(L, std_x)
    return k[:, None] * g + slope[:, None] * (x - mean_x[:, None]) + shift[:, None]


@kernel
def _affine_backward_row_kernel(G, X, XMEAN, XSTD, ST, GX, GMT, GST, R, C, L, alpha_hi,
                                alpha_lo, ROWS_BUCKET, UNBIASED: tl.constexpr,
                                CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr,
                                BLOCK_L: tl.constexpr):
    """Single pass: BLOCK_R whole rows of g and x per program, reduced then differentiated."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rows_mask = rows < R
    acc_zero = tl.zeros([BLOCK_R], XMEAN.dtype.element_ty)
    alpha = scalar(alpha_hi, alpha_lo, acc_zero)
    mean_x = tl.load(XMEAN + rows, mask=rows_mask, other=0.0)
    std_x = tl.load(XSTD + rows, mask=rows_mask, other=1.0)
    std_t = tl.load(ST + rows, mask=rows_mask, other=1.0)
    base = row_base(rows, C, L, CHANNELS_LAST)
    offs_l = tl.arange(0, BLOCK_L)
    mask = rows_mask[:, None] & (offs_l < L)[None, :]
    g = tl.load(tile_pointers(G, base, offs_l, C, CHANNELS_LAST), mask=mask, other=0.0)
    x = tl.load(tile_pointers(X, base, offs_l, C, CHANNELS_LAST), mask=mask, other=0.0)
    g = g.to(acc_zero.dtype)
    x = x.to(acc_zero.dtype)
    sum_g = tl.sum(g, axis=1)
    sum_gx = tl.sum(tl.where(mask, g * (x - mean_x[:, None]), 0.0), axis=1) / std_x
    grad = grad_x_tile(g, x, mean_x, std_x, std_t, sum_g, sum_gx, alpha, L, UNBIASED)
    tl.store(tile_pointers(GX, base, offs_l, C, CHANNELS_LAST), grad, mask=mask)
    tl.store(GMT + rows, alpha * sum_g, mask=rows_mask)
    tl.store(GST + rows, alpha * sum_gx, mask=rows_mask)


@kernel
def _affine_backward_partial_kernel(G, X, XMEAN, PSG, PSGX, R, C, L, chunk, ROWS_BUCKET,
                                    CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr,
                                    BLOCK_L: tl.constexpr):
    """First backward pass for long rows: sum(g) and sum(g * (x - mean_x)) over one piece of
    each row, to [split, row] buffers. Plain sums are exact enough here: the terms are already
    centred."""
    row_block, split = row_block_and_piece(tl.cdiv(L, chunk))
    rows = row_block * BLOCK_R + tl.arange(0, BLOCK_R)
    rows_mask = rows < R
    acc_zero = tl.zeros([BLOCK_R], PSG.dtype.element_ty)
    mean_x = tl.load(XMEAN + rows, mask=rows_mask, other=0.0)
    base = row_base(rows, C, L, CHANNELS_LAST)
    start = split * chunk
    stop = tl.minimum(start + chunk, L)
    sum_g = acc_zero
    sum_gxc = acc_zero
    for l0 in range(start, stop, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        mask = rows_mask[:, None] & (offs_l < stop)[None, :]
        g = tl.load(tile_pointers(G, base, offs_l, C, CHANNELS_LAST), mask=mask, other=0.0)
        x = tl.load(tile_pointers(X, base, offs_l, C, CHANNELS_LAST), mask=mask, other=0.0)
        g = g.to(acc_zero.dtype)
        centred = tl.where(mask, x.to(acc_zero.dtype) - mean_x[:, None], 0.0)
        sum_g += tl.sum(g, axis=1)
        sum_gxc += tl.sum(g * centred, axis=1)
    tl.store(PSG + split * R + rows, sum_g, mask=rows_mask)
    tl.store(PSGX + split * R + rows, sum_gxc, mask=rows_mask)


@kernel
def _affine_backward_apply_kernel(G, X, XMEAN, XSTD, ST, PSG, PSGX, GX, GMT, GST, R, C, L,
                                  splits, alpha_hi, alpha_lo, ROWS_BUCKET,
                                  UNBIASED: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                                  BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
    """Second backward pass for long rows: sums the partials (in split order) and writes one
    [BLOCK_R, BLOCK_L] tile of grad_x; the first tile of each row writes the statistics' grads."""
    row_block, l_tile = row_block_and_piece(tl.cdiv(L, BLOCK_L))
    rows = row_block * BLOCK_R + tl.arange(0, BLOCK_R)
    rows_mask = rows < R
    acc_zero = tl.zeros([BLOCK_R], XMEAN.dtype.element_ty)
    alpha = scalar(alpha_hi, alpha_lo, acc_zero)
    mean_x = tl.load(XMEAN + rows, mask=rows_mask, other=0.0)
    std_x = tl.load(XSTD + rows, mask=rows_mask, other=1.0)
    std_t = tl.load(ST + rows, mask=rows_mask, other=1.0)
    sum_g = acc_zero
    sum_gxc = acc_zero
    for s in range(splits):
        sum_g += tl.load(PSG + s * R + rows, mask=rows_mask, other=0.0)
        sum_gxc += tl.load(PSGX + s * R + rows, mask=rows_mask, other=0.0)
    sum_gx = sum_gxc / std_x
    base = row_base(rows, C, L, CHANNELS_LAST)
    offs_l = l_tile * BLOCK_L + tl.arange(0, BLOCK_L)
    mask = rows_mask[:, None] & (offs_l < L)[None, :]
    g = tl.load(tile_pointers(G, base, offs_l, C, CHANNELS_LAST), mask=mask, other=0.0)
    x = tl.load(tile_pointers(X, base, offs_l, C, CHANNELS_LAST), mask=mask, other=0.0)
    grad = grad_x_tile(g.to(acc_zero.dtype), x.to(acc_zero.dtype), mean_x, std_x, std_t, sum_g,
                       sum_gx, alpha, L, UNBIASED)
    tl.store(tile_pointers(GX, base, offs_l, C, CHANNELS_LAST), grad, mask=mask)
    # Both sides tensors: triton 3.9's interpreter makes (tensor & scalar comparison) an int32
    # mask, which tl.store rejects.
    first = rows_mask & (rows * 0 + l_tile == 0)
    tl.store(GMT + rows, alpha * sum_g, mask=first)
    tl.store(GST + rows, alpha * sum_gx, mask=first)


# ---- Launchers.


def affine_forward(x_in, mean_t, std_t, alpha: float, eps: float, unbiased: bool):
    """(out, x_mean, x_std) for a canonical-layout-or-not x; targets acc-dtype (N*C,) or any."""
    x, channels_last = _common.canonical(x_in)
    out = _common.empty_output(x)
    x_mean, x_std = _common.empty_stats(x), _common.empty_stats(x)
    N, C, H, W = x.shape
    R, L = N * C, H * W
    if R == 0:
        return _common.shaped_like(out, x_in), x_mean, x_std
    acc = x_mean.dtype
    mt, st = _common.flat_stat(mean_t, acc), _common.flat_stat(std_t, acc)
    alpha_hi, alpha_lo = _common.split_scalar(alpha)
    eps_hi, eps_lo = _common.split_scalar(eps)
    p = _common.plan(R, L, channels_last, x.device)
    opts = _common.launch_options(p)
    if p.single_pass:
        _common.launch(
            _affine_row_kernel, p.grid(), x, mt, st, out, x_mean, x_std, R, C, L, alpha_hi,
            alpha_lo, eps_hi, eps_lo, p.rows_bucket, UNBIASED=unbiased,
            CHANNELS_LAST=channels_last, BLOCK_R=p.block_r, BLOCK_L=p.block_l, **opts)
        return _common.shaped_like(out, x_in), x_mean, x_std
    p_mean = torch.empty(p.splits, R, dtype=acc, device=x.device)
    p_m2 = torch.empty(p.splits, R, dtype=acc, device=x.device)
    _common.launch(
        _row_stats_kernel, p.grid(p.splits), x, p_mean, p_m2, R, C, L, p.chunk, eps_hi, eps_lo,
        p.rows_bucket, FINALIZE=False, UNBIASED=unbiased, CHANNELS_LAST=channels_last,
        BLOCK_R=p.block_r, BLOCK_L=p.block_l, **opts)
    _common.launch(
        _affine_apply_kernel, p.grid(p.l_blocks), x, p_mean, p_m2, mt, st, out, x_mean, x_std,
        R, C, L, p.chunk, p.splits, alpha_hi, alpha_lo, eps_hi, eps_lo, p.rows_bucket,
        UNBIASED=unbiased, CHANNELS_LAST=channels_last, BLOCK_R=p.block_r, BLOCK_L=p.block_l,
        **opts)
    return _common.shaped_like(out, x_in), x_mean, x_std


def affine_backward(grad_out, x_in, x_mean, x_std, std_t, alpha: float, unbiased: bool):
    """(grad_x, grad_mean_t, grad_std_t), the last two (N, C) in the accumulation dtype."""
    x, channels_last = _common.canonical(x_in)
    grad_x = _common.empty_output(x)
    grad_mt, grad_st = _common.empty_stats(x), _common.empty_stats(x)
    N, C, H, W = x.shape
    R, L = N * C, H * W
    if R == 0:
        return _common.shaped_like(grad_x, x_in), grad_mt, grad_st
    acc = grad_mt.dtype
    g = _common.like_layout(grad_out, channels_last)
    xm, xs, st = (_common.flat_stat(t, acc) for t in (x_mean, x_std, std_t))
    alpha_hi, alpha_lo = _common.split_scalar(alpha)
    p = _common.plan(R, L, channels_last, x.device)
    opts = _common.launch_options(p)
    if p.single_pass:
        _common.launch(
            _affine_backward_row_kernel, p.grid(), g, x, xm, xs, st, grad_x, grad_mt, grad_st, R,
            C, L, alpha_hi, alpha_lo, p.rows_bucket, UNBIASED=unbiased,
            CHANNELS_LAST=channels_last, BLOCK_R=p.block_r, BLOCK_L=p.block_l, **opts)
        return _common.shaped_like(grad_x, x_in), grad_mt, grad_st
    p_sg = torch.empty(p.splits, R, dtype=acc, device=x.device)
    p_sgx = torch.empty(p.splits, R, dtype=acc, device=x.device)
    _common.launch(
        _affine_backward_partial_kernel, p.grid(p.splits), g, x, xm, p_sg, p_sgx, R, C, L,
        p.chunk, p.rows_bucket, CHANNELS_LAST=channels_last, BLOCK_R=p.block_r,
        BLOCK_L=p.block_l, **opts)
    _common.launch(
        _affine_backward_apply_kernel, p.grid(p.l_blocks), g, x, xm, xs, st, p_sg, p_sgx, grad_x,
        grad_mt, grad_st, R, C, L, p.splits, alpha_hi, alpha_lo, p.rows_bucket,
        UNBIASED=unbiased, CHANNELS_LAST=channels_last, BLOCK_R=p.block_r, BLOCK_L=p.block_l,
        **opts)
    return _common.shaped_like(grad_x, x_in), grad_mt, grad_st


# ---- Ops (namespace adain_triton; the schemas mirror adain::_affine_forward/_affine_backward).


def _affine_forward_fake(x, mean, std, alpha, eps, unbiased):
    check_affine(x, mean, std, unbiased)
    check_eps(eps)
    return _common.empty_output(x), _common.empty_stats(x), _common.empty_stats(x)


@_common.register("_affine_forward", _affine_forward_fake)
def affine_forward_op(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, alpha: float,
                      eps: float,
                      unbiased: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    check_affine(x, mean, std, unbiased)
    check_eps(eps)
    return affine_forward(x, mean, std, alpha, eps, unbiased)


def _affine_backward_fake(grad_out, x, x_mean, x_std, std, alpha, unbiased):
    return _common.empty_output(x), _common.empty_stats(x), _common.empty_stats(x)


@_common.register("_affine_backward", _affine_backward_fake)
def affine_backward_op(grad_out: torch.Tensor, x: torch.Tensor, x_mean: torch.Tensor,
                       x_std: torch.Tensor, std: torch.Tensor, alpha: float,
                       unbiased: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return affine_backward(grad_out, x, x_mean, x_std, std, alpha, unbiased)


_backward, _setup_context = _autograd.affine_forward(affine_backward_op)
affine_forward_op.register_autograd(_backward, setup_context=_setup_context)
