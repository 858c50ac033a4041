"""adain_triton::_affine_forward / _affine_backward (behind adain_affine): Triton kernels,
launchers, op registration and autograd.

out = act(y), y = target_std * (x - mean_x) / std_x + target_mean, with target_mean =
blend(alpha, mean_t, mean_x) and target_std = blend(alpha, std_t, std_x) (row_math.forward_coef;
backward_coef for the gradients). The public adain_affine uses alpha = 1; the fused op passes its
alpha and no activation. act ('none', 'relu', 'leaky_relu': row_math.activate) is the kernels'
ACTIVATION constexpr, so 'none' compiles to kernels with no activation code at all; with one,
the backward recomputes y from x and the forward's coefficients and runs on g through act's
derivative (grad_through_activation) in place of g: in the gradient sums and in the map.

adain_triton::_prologue_affine_forward / _backward are the same kernels with their PROLOGUE
constexpr on (prologue.py): the statistics and the map are taken over p = act_pre(x + weight *
noise + bias), formed where x is loaded, alpha = 1; the backward also returns the rows'
gradients of bias and noise weight. Their launches take half the largest tile (_common.max_tile_of).
"""
import torch
import triton
import triton.language as tl

from adain_ext import _autograd, fakes
from adain_ext._validation import (
    check_activation,
    check_affine,
    check_alpha,
    check_backward_mean,
    check_eps,
    check_prologue,
)
from adain_ext.triton import _common
from adain_ext.triton._common import kernel
from adain_ext.triton.mean_std import _row_stats_kernel
from adain_ext.triton.prologue import (
    NOISE_NONE,
    NOISE_PER_ELEMENT,
    NOISE_PER_POSITION,
    PLAIN_ARGS,
    PROLOGUE_SUMS,
    prologue_grads,
    prologue_mask,
    prologue_params,
    prologue_sums_tile,
    prologue_tile,
)
from adain_ext.triton.row_math import (
    ACTIVATION_NONE,
    activate,
    activation_code,
    activation_grad,
    apply_coef,
    backward_coef,
    forward_coef,
    grad_sums_tile,
    std_of,
)
from adain_ext.triton.welford import (
    merge_partials,
    row_base,
    row_block_and_piece,
    scalar,
    tile_pointers,
    tile_stats,
)


@triton.jit
def affine_rows(X, OUT, MEAN_X, STD_X, rows, rows_mask, C, L, mean_t, std_t, alpha, eps,
                UNBIASED: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK_L: tl.constexpr,
                negative_slope=None, ACTIVATION: tl.constexpr = ACTIVATION_NONE, NOISE=None,
                weight=None, bias=None, pre_slope=None, PROLOGUE: tl.constexpr = False,
                NOISE_MODE: tl.constexpr = 0, PRE_ACTIVATION: tl.constexpr = 0):
    """Whole rows in one tile (BLOCK_L >= L): statistics, then the output, from one read of x.
    mean_t, std_t: the rows' target statistics, [BLOCK_R] in the accumulation dtype (as is
    negative_slope, which only leaky_relu reads; the fused kernel has no activation).
    PROLOGUE: statistics and map over p = act_pre(x + weight * noise + bias) (prologue.py)."""
    base = row_base(rows, C, L, CHANNELS_LAST)
    offs_l = tl.arange(0, BLOCK_L)
    mask = rows_mask[:, None] & (offs_l < L)[None, :]
    x = tl.load(tile_pointers(X, base, offs_l, C, CHANNELS_LAST), mask=mask, other=0.0)
    x = x.to(mean_t.dtype)
    if PROLOGUE:
        _, x, _ = prologue_tile(x, NOISE, rows, base, offs_l, mask, C, L, weight, bias, pre_slope,
                                CHANNELS_LAST, NOISE_MODE, PRE_ACTIVATION)
    mean_x, m2, _ = tile_stats(x, mask)
    std_x = std_of(m2, L, eps, UNBIASED)
    slope, mean, shift = forward_coef(mean_x, std_x, mean_t, std_t, alpha)
    out = activate(apply_coef(None, x, None, slope, mean, shift, False), negative_slope,
                   ACTIVATION)
    tl.store(tile_pointers(OUT, base, offs_l, C, CHANNELS_LAST), out, mask=mask)
    tl.store(MEAN_X + rows, mean_x, mask=rows_mask)
    tl.store(STD_X + rows, std_x, mask=rows_mask)


@triton.jit
def grad_through_activation(g, x, mean_x, std_x, mean_t, std_t, alpha, negative_slope,
                            ACTIVATION: tl.constexpr):
    """g times act's derivative at y, the forward's output before the activation, recomputed
    from x and the forward's coefficients (never saved: one tensor less to keep for backward);
    g itself without an activation. [BLOCK_R, BLOCK_L] tiles, per-row statistics. Masked entries
    carry g = 0, so they add nothing to the gradient sums whatever y is there."""
    if ACTIVATION != ACTIVATION_NONE:
        slope, mean, shift = forward_coef(mean_x, std_x, mean_t, std_t, alpha)
        g = activation_grad(apply_coef(None, x, None, slope, mean, shift, False), g,
                            negative_slope, ACTIVATION)
    return g


@kernel
def _affine_row_kernel(X, MEAN_T, STD_T, OUT, MEAN_X, STD_X, R, C, L, alpha_hi, alpha_lo, eps_hi,
                       eps_lo, negative_slope_hi, negative_slope_lo, ROWS_BUCKET,
                       UNBIASED: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                       ACTIVATION: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
                       NOISE=None, NOISE_WEIGHT=None, BIAS=None, pre_slope_hi=None,
                       pre_slope_lo=None, PROLOGUE: tl.constexpr = False,
                       NOISE_MODE: tl.constexpr = 0, PRE_ACTIVATION: tl.constexpr = 0):
    """Single pass: BLOCK_R whole rows per program (short rows packed several per program)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rows_mask = rows < R
    acc_zero = tl.zeros([BLOCK_R], MEAN_X.dtype.element_ty)
    mean_t = tl.load(MEAN_T + rows, mask=rows_mask, other=0.0)
    std_t = tl.load(STD_T + rows, mask=rows_mask, other=1.0)
    if PROLOGUE:
        weight, bias, pre_slope = prologue_params(NOISE_WEIGHT, BIAS, rows, rows_mask, C,
                                                  pre_slope_hi, pre_slope_lo, acc_zero)
        affine_rows(X, OUT, MEAN_X, STD_X, rows, rows_mask, C, L, mean_t, std_t,
                    scalar(alpha_hi, alpha_lo, acc_zero), scalar(eps_hi, eps_lo, acc_zero),
                    UNBIASED, CHANNELS_LAST, BLOCK_L,
                    scalar(negative_slope_hi, negative_slope_lo, acc_zero), ACTIVATION, NOISE,
                    weight, bias, pre_slope, PROLOGUE, NOISE_MODE, PRE_ACTIVATION)
    else:
        affine_rows(X, OUT, MEAN_X, STD_X, rows, rows_mask, C, L, mean_t, std_t,
                    scalar(alpha_hi, alpha_lo, acc_zero), scalar(eps_hi, eps_lo, acc_zero),
                    UNBIASED, CHANNELS_LAST, BLOCK_L,
                    scalar(negative_slope_hi, negative_slope_lo, acc_zero), ACTIVATION)


@kernel
def _affine_apply_kernel(X, PARTIAL_MEAN, PARTIAL_M2, MEAN_T, STD_T, OUT, MEAN_X, STD_X, R, C, L,
                         segment_len, segments, alpha_hi, alpha_lo, eps_hi, eps_lo,
                         negative_slope_hi, negative_slope_lo, ROWS_BUCKET,
                         UNBIASED: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                         ACTIVATION: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
                         NOISE=None, NOISE_WEIGHT=None, BIAS=None, pre_slope_hi=None,
                         pre_slope_lo=None, PROLOGUE: tl.constexpr = False,
                         NOISE_MODE: tl.constexpr = 0, PRE_ACTIVATION: tl.constexpr = 0):
    """Second pass for long rows: every program merges its rows' partial statistics (in the same
    order, so all tiles of a row agree bit for bit) and writes one [BLOCK_R, BLOCK_L] tile.
    PROLOGUE: the partials are p's, and so is the tile the map is applied to."""
    row_block, l_tile = row_block_and_piece(tl.cdiv(L, BLOCK_L))
    rows = row_block * BLOCK_R + tl.arange(0, BLOCK_R)
    rows_mask = rows < R
    acc_zero = tl.zeros([BLOCK_R], MEAN_X.dtype.element_ty)
    alpha = scalar(alpha_hi, alpha_lo, acc_zero)
    mean_x, m2, _ = merge_partials(PARTIAL_MEAN, PARTIAL_M2, rows, rows_mask, R, L, segment_len,
                                   segments, acc_zero)
    std_x = std_of(m2, L, scalar(eps_hi, eps_lo, acc_zero), UNBIASED)
    mean_t = tl.load(MEAN_T + rows, mask=rows_mask, other=0.0)
    std_t = tl.load(STD_T + rows, mask=rows_mask, other=1.0)
    slope, mean, shift = forward_coef(mean_x, std_x, mean_t, std_t, alpha)
    base = row_base(rows, C, L, CHANNELS_LAST)
    offs_l = l_tile * BLOCK_L + tl.arange(0, BLOCK_L)
    mask = rows_mask[:, None] & (offs_l < L)[None, :]
    x = tl.load(tile_pointers(X, base, offs_l, C, CHANNELS_LAST), mask=mask, other=0.0)
    x = x.to(acc_zero.dtype)
    if PROLOGUE:
        weight, bias, pre_slope = prologue_params(NOISE_WEIGHT, BIAS, rows, rows_mask, C,
                                                  pre_slope_hi, pre_slope_lo, acc_zero)
        _, x, _ = prologue_tile(x, NOISE, rows, base, offs_l, mask, C, L, weight, bias, pre_slope,
                                CHANNELS_LAST, NOISE_MODE, PRE_ACTIVATION)
    out = activate(apply_coef(None, x, None, slope, mean, shift, False),
                   scalar(negative_slope_hi, negative_slope_lo, acc_zero), ACTIVATION)
    tl.store(tile_pointers(OUT, base, offs_l, C, CHANNELS_LAST), out, mask=mask)
    # Both sides tensors: triton 3.9's interpreter makes (tensor & scalar comparison) an int32
    # mask, which tl.store rejects.
    first = rows_mask & (rows * 0 + l_tile == 0)
    tl.store(MEAN_X + rows, mean_x, mask=first)
    tl.store(STD_X + rows, std_x, mask=first)


@kernel
def _affine_backward_row_kernel(G, X, MEAN_X, STD_X, MEAN_T, STD_T, GRAD_X, GRAD_MEAN_T,
                                GRAD_STD_T, R, C, L, alpha_hi, alpha_lo, negative_slope_hi,
                                negative_slope_lo, ROWS_BUCKET, UNBIASED: tl.constexpr,
                                CHANNELS_LAST: tl.constexpr, ACTIVATION: tl.constexpr,
                                BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr, NOISE=None,
                                NOISE_WEIGHT=None, BIAS=None, GRAD_BIAS=None,
                                GRAD_NOISE_WEIGHT=None, pre_slope_hi=None, pre_slope_lo=None,
                                PROLOGUE: tl.constexpr = False, NOISE_MODE: tl.constexpr = 0,
                                PRE_ACTIVATION: tl.constexpr = 0):
    """Single pass: BLOCK_R whole rows of g and x per program, reduced then differentiated.
    MEAN_T is read only with an activation. PROLOGUE: x's statistics are p's, the map runs on p
    and is multiplied by m = act_pre'(pre), and the rows' gradients of bias and noise weight go
    to GRAD_BIAS and GRAD_NOISE_WEIGHT (prologue.py)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rows_mask = rows < R
    acc_zero = tl.zeros([BLOCK_R], MEAN_X.dtype.element_ty)
    alpha = scalar(alpha_hi, alpha_lo, acc_zero)
    mean_x = tl.load(MEAN_X + rows, mask=rows_mask, other=0.0)
    std_x = tl.load(STD_X + rows, mask=rows_mask, other=1.0)
    std_t = tl.load(STD_T + rows, mask=rows_mask, other=1.0)
    base = row_base(rows, C, L, CHANNELS_LAST)
    offs_l = tl.arange(0, BLOCK_L)
    mask = rows_mask[:, None] & (offs_l < L)[None, :]
    g = tl.load(tile_pointers(G, base, offs_l, C, CHANNELS_LAST), mask=mask, other=0.0)
    x = tl.load(tile_pointers(X, base, offs_l, C, CHANNELS_LAST), mask=mask, other=0.0)
    g = g.to(acc_zero.dtype)
    x = x.to(acc_zero.dtype)
    if PROLOGUE:
        weight, bias, pre_slope = prologue_params(NOISE_WEIGHT, BIAS, rows, rows_mask, C,
                                                  pre_slope_hi, pre_slope_lo, acc_zero)
        pre, x, noise = prologue_tile(x, NOISE, rows, base, offs_l, mask, C, L, weight, bias,
                                      pre_slope, CHANNELS_LAST, NOISE_MODE, PRE_ACTIVATION)
    if ACTIVATION != ACTIVATION_NONE:
        mean_t = tl.load(MEAN_T + rows, mask=rows_mask, other=0.0)
        g = grad_through_activation(g, x, mean_x, std_x, mean_t, std_t, alpha,
                                    scalar(negative_slope_hi, negative_slope_lo, acc_zero),
                                    ACTIVATION)
    sum_g, sum_g_dev = grad_sums_tile(g, x, mean_x, mask)
    g_scale, slope, mean, shift, grad_mean_t, grad_std_t = backward_coef(
        sum_g, sum_g_dev, mean_x, std_x, std_t, alpha, L, UNBIASED)
    grad = apply_coef(g, x, g_scale, slope, mean, shift, True)
    if PROLOGUE:
        m = prologue_mask(pre, mask, pre_slope, PRE_ACTIVATION)
        sum_mg, sum_mdev, sum_m, sum_mg_noise, sum_mdev_noise, sum_m_noise = prologue_sums_tile(
            g, x, mean_x, m, noise, mask, NOISE_MODE)
        grad_bias, grad_weight = prologue_grads(sum_mg, sum_mdev, sum_m, sum_mg_noise,
                                                sum_mdev_noise, sum_m_noise, g_scale, slope,
                                                shift)
        if PRE_ACTIVATION != ACTIVATION_NONE:
            grad = m * grad
        tl.store(GRAD_BIAS + rows, grad_bias, mask=rows_mask)
        tl.store(GRAD_NOISE_WEIGHT + rows, grad_weight, mask=rows_mask)
    tl.store(tile_pointers(GRAD_X, base, offs_l, C, CHANNELS_LAST), grad, mask=mask)
    tl.store(GRAD_MEAN_T + rows, grad_mean_t, mask=rows_mask)
    tl.store(GRAD_STD_T + rows, grad_std_t, mask=rows_mask)


@kernel
def _affine_backward_partial_kernel(G, X, MEAN_X, STD_X, MEAN_T, STD_T, PARTIAL_SUM_G,
                                    PARTIAL_SUM_G_DEV, R, C, L, segment_len, alpha_hi, alpha_lo,
                                    negative_slope_hi, negative_slope_lo, ROWS_BUCKET,
                                    CHANNELS_LAST: tl.constexpr, ACTIVATION: tl.constexpr,
                                    BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr, NOISE=None,
                                    NOISE_WEIGHT=None, BIAS=None, PARTIAL_PROLOGUE=None,
                                    pre_slope_hi=None, pre_slope_lo=None,
                                    PROLOGUE: tl.constexpr = False,
                                    NOISE_MODE: tl.constexpr = 0,
                                    PRE_ACTIVATION: tl.constexpr = 0):
    """First backward pass for long rows: the gradient sums (sum_g, sum_g_dev) of one segment of
    each row, to [segment, row] buffers. Plain sums are exact enough here: the terms are already
    centred. STD_X, MEAN_T, STD_T, alpha and negative_slope are read only with an activation.
    PROLOGUE: the sums over p, and the six PrologueSums to the [6, segment, row] buffer
    PARTIAL_PROLOGUE (the three noise ones only with noise)."""
    row_block, segment = row_block_and_piece(tl.cdiv(L, segment_len))
    rows = row_block * BLOCK_R + tl.arange(0, BLOCK_R)
    rows_mask = rows < R
    acc_zero = tl.zeros([BLOCK_R], PARTIAL_SUM_G.dtype.element_ty)
    mean_x = tl.load(MEAN_X + rows, mask=rows_mask, other=0.0)
    if ACTIVATION != ACTIVATION_NONE:
        std_x = tl.load(STD_X + rows, mask=rows_mask, other=1.0)
        mean_t = tl.load(MEAN_T + rows, mask=rows_mask, other=0.0)
        std_t = tl.load(STD_T + rows, mask=rows_mask, other=1.0)
        alpha = scalar(alpha_hi, alpha_lo, acc_zero)
        negative_slope = scalar(negative_slope_hi, negative_slope_lo, acc_zero)
    base = row_base(rows, C, L, CHANNELS_LAST)
    start = segment * segment_len
    stop = tl.minimum(start + segment_len, L)
    sum_g = acc_zero
    sum_g_dev = acc_zero
    if PROLOGUE:
        weight, bias, pre_slope = prologue_params(NOISE_WEIGHT, BIAS, rows, rows_mask, C,
                                                  pre_slope_hi, pre_slope_lo, acc_zero)
        sum_mg = acc_zero
        sum_mdev = acc_zero
        sum_m = acc_zero
        sum_mg_noise = acc_zero
        sum_mdev_noise = acc_zero
        sum_m_noise = acc_zero
    for l0 in range(start, stop, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        mask = rows_mask[:, None] & (offs_l < stop)[None, :]
        g = tl.load(tile_pointers(G, base, offs_l, C, CHANNELS_LAST), mask=mask, other=0.0)
        x = tl.load(tile_pointers(X, base, offs_l, C, CHANNELS_LAST), mask=mask, other=0.0)
        g = g.to(acc_zero.dtype)
        x = x.to(acc_zero.dtype)
        if PROLOGUE:
            pre, x, noise = prologue_tile(x, NOISE, rows, base, offs_l, mask, C, L, weight, bias,
                                          pre_slope, CHANNELS_LAST, NOISE_MODE, PRE_ACTIVATION)
        if ACTIVATION != ACTIVATION_NONE:
            g = grad_through_activation(g, x, mean_x, std_x, mean_t, std_t, alpha,
                                        negative_slope, ACTIVATION)
        tile_sum_g, tile_sum_g_dev = grad_sums_tile(g, x, mean_x, mask)
        sum_g += tile_sum_g
        sum_g_dev += tile_sum_g_dev
        if PROLOGUE:
            m = prologue_mask(pre, mask, pre_slope, PRE_ACTIVATION)
            t_mg, t_mdev, t_m, t_mg_noise, t_mdev_noise, t_m_noise = prologue_sums_tile(
                g, x, mean_x, m, noise, mask, NOISE_MODE)
            sum_mg += t_mg
            sum_mdev += t_mdev
            sum_m += t_m
            if NOISE_MODE != NOISE_NONE:
                sum_mg_noise += t_mg_noise
                sum_mdev_noise += t_mdev_noise
                sum_m_noise += t_m_noise
    tl.store(PARTIAL_SUM_G + segment * R + rows, sum_g, mask=rows_mask)
    tl.store(PARTIAL_SUM_G_DEV + segment * R + rows, sum_g_dev, mask=rows_mask)
    if PROLOGUE:
        plane = tl.cdiv(L, segment_len) * R  # one [segment, row] plane per sum
        out = PARTIAL_PROLOGUE + segment * R + rows
        tl.store(out, sum_mg, mask=rows_mask)
        tl.store(out + plane, sum_mdev, mask=rows_mask)
        tl.store(out + 2 * plane, sum_m, mask=rows_mask)
        if NOISE_MODE != NOISE_NONE:
            tl.store(out + 3 * plane, sum_mg_noise, mask=rows_mask)
            tl.store(out + 4 * plane, sum_mdev_noise, mask=rows_mask)
            tl.store(out + 5 * plane, sum_m_noise, mask=rows_mask)


@kernel
def _affine_backward_apply_kernel(G, X, MEAN_X, STD_X, MEAN_T, STD_T, PARTIAL_SUM_G,
                                  PARTIAL_SUM_G_DEV, GRAD_X, GRAD_MEAN_T, GRAD_STD_T, R, C, L,
                                  segments, alpha_hi, alpha_lo, negative_slope_hi,
                                  negative_slope_lo, ROWS_BUCKET, UNBIASED: tl.constexpr,
                                  CHANNELS_LAST: tl.constexpr, ACTIVATION: tl.constexpr,
                                  BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr, NOISE=None,
                                  NOISE_WEIGHT=None, BIAS=None, PARTIAL_PROLOGUE=None,
                                  GRAD_BIAS=None, GRAD_NOISE_WEIGHT=None, pre_slope_hi=None,
                                  pre_slope_lo=None, PROLOGUE: tl.constexpr = False,
                                  NOISE_MODE: tl.constexpr = 0,
                                  PRE_ACTIVATION: tl.constexpr = 0):
    """Second backward pass for long rows: sums the partials (in segment order) and writes one
    [BLOCK_R, BLOCK_L] tile of grad_x; the first tile of each row writes the statistics' grads.
    PROLOGUE: the map on p times m, and the first tile writes the rows' gradients of bias and
    noise weight from the summed PARTIAL_PROLOGUE planes."""
    row_block, l_tile = row_block_and_piece(tl.cdiv(L, BLOCK_L))
    rows = row_block * BLOCK_R + tl.arange(0, BLOCK_R)
    rows_mask = rows < R
    acc_zero = tl.zeros([BLOCK_R], MEAN_X.dtype.element_ty)
    alpha = scalar(alpha_hi, alpha_lo, acc_zero)
    mean_x = tl.load(MEAN_X + rows, mask=rows_mask, other=0.0)
    std_x = tl.load(STD_X + rows, mask=rows_mask, other=1.0)
    std_t = tl.load(STD_T + rows, mask=rows_mask, other=1.0)
    sum_g = acc_zero
    sum_g_dev = acc_zero
    for s in range(segments):
        sum_g += tl.load(PARTIAL_SUM_G + s * R + rows, mask=rows_mask, other=0.0)
        sum_g_dev += tl.load(PARTIAL_SUM_G_DEV + s * R + rows, mask=rows_mask, other=0.0)
    g_scale, slope, mean, shift, grad_mean_t, grad_std_t = backward_coef(
        sum_g, sum_g_dev, mean_x, std_x, std_t, alpha, L, UNBIASED)
    base = row_base(rows, C, L, CHANNELS_LAST)
    offs_l = l_tile * BLOCK_L + tl.arange(0, BLOCK_L)
    mask = rows_mask[:, None] & (offs_l < L)[None, :]
    g = tl.load(tile_pointers(G, base, offs_l, C, CHANNELS_LAST), mask=mask, other=0.0)
    x = tl.load(tile_pointers(X, base, offs_l, C, CHANNELS_LAST), mask=mask, other=0.0)
    g = g.to(acc_zero.dtype)
    x = x.to(acc_zero.dtype)
    if PROLOGUE:
        weight, bias, pre_slope = prologue_params(NOISE_WEIGHT, BIAS, rows, rows_mask, C,
                                                  pre_slope_hi, pre_slope_lo, acc_zero)
        pre, x, _ = prologue_tile(x, NOISE, rows, base, offs_l, mask, C, L, weight, bias,
                                  pre_slope, CHANNELS_LAST, NOISE_MODE, PRE_ACTIVATION)
    if ACTIVATION != ACTIVATION_NONE:
        mean_t = tl.load(MEAN_T + rows, mask=rows_mask, other=0.0)
        g = grad_through_activation(g, x, mean_x, std_x, mean_t, std_t, alpha,
                                    scalar(negative_slope_hi, negative_slope_lo, acc_zero),
                                    ACTIVATION)
    grad = apply_coef(g, x, g_scale, slope, mean, shift, True)
    if PROLOGUE:
        if PRE_ACTIVATION != ACTIVATION_NONE:
            grad = prologue_mask(pre, mask, pre_slope, PRE_ACTIVATION) * grad
    tl.store(tile_pointers(GRAD_X, base, offs_l, C, CHANNELS_LAST), grad, mask=mask)
    # Both sides tensors: triton 3.9's interpreter makes (tensor & scalar comparison) an int32
    # mask, which tl.store rejects.
    first = rows_mask & (rows * 0 + l_tile == 0)
    tl.store(GRAD_MEAN_T + rows, grad_mean_t, mask=first)
    tl.store(GRAD_STD_T + rows, grad_std_t, mask=first)
    if PROLOGUE:
        plane = segments * R
        sum_mg = acc_zero
        sum_mdev = acc_zero
        sum_m = acc_zero
        sum_mg_noise = acc_zero
        sum_mdev_noise = acc_zero
        sum_m_noise = acc_zero
        for s in range(segments):
            part = PARTIAL_PROLOGUE + s * R + rows
            sum_mg += tl.load(part, mask=first, other=0.0)
            sum_mdev += tl.load(part + plane, mask=first, other=0.0)
            sum_m += tl.load(part + 2 * plane, mask=first, other=0.0)
            if NOISE_MODE != NOISE_NONE:
                sum_mg_noise += tl.load(part + 3 * plane, mask=first, other=0.0)
                sum_mdev_noise += tl.load(part + 4 * plane, mask=first, other=0.0)
                sum_m_noise += tl.load(part + 5 * plane, mask=first, other=0.0)
        grad_bias, grad_weight = prologue_grads(sum_mg, sum_mdev, sum_m, sum_mg_noise,
                                                sum_mdev_noise, sum_m_noise, g_scale, slope,
                                                shift)
        tl.store(GRAD_BIAS + rows, grad_bias, mask=first)
        tl.store(GRAD_NOISE_WEIGHT + rows, grad_weight, mask=first)


# ---- Launchers.


def affine_forward(x_in, mean_t, std_t, alpha: float, eps: float, unbiased: bool,
                   activation: str = "none", negative_slope: float = 0.01, prologue=None):
    """(out, mean_x, std_x) for a canonical-layout-or-not x; targets acc-dtype (N*C,) or any.
    prologue: a _Prologue (the statistics and the map over p), or None."""
    x, channels_last = _common.canonical_layout(x_in)
    pro = prologue.kernel_args(x, channels_last) if prologue is not None else PLAIN_ARGS
    out = _common.empty_output(x)
    mean_x, std_x = _common.empty_stats(x), _common.empty_stats(x)
    N, C, H, W = x.shape
    R, L = N * C, H * W
    if R == 0:
        return _common.shaped_like(out, x_in), mean_x, std_x
    acc = mean_x.dtype
    mt, st = _common.flat_stat(mean_t, acc), _common.flat_stat(std_t, acc)
    alpha_hi, alpha_lo = _common.split_scalar(alpha)
    eps_hi, eps_lo = _common.split_scalar(eps)
    slope_hi, slope_lo = _common.split_scalar(negative_slope)
    act = activation_code(activation)
    p = _common.plan(R, L, channels_last, x.device, prologue is not None)
    opts = _common.launch_options(p)
    if p.single_pass:
        _common.launch(
            _affine_row_kernel, p.grid(), x, mt, st, out, mean_x, std_x, R, C, L, alpha_hi,
            alpha_lo, eps_hi, eps_lo, slope_hi, slope_lo, p.rows_bucket, UNBIASED=unbiased,
            CHANNELS_LAST=channels_last, ACTIVATION=act, BLOCK_R=p.block_r, BLOCK_L=p.block_l,
            **pro, **opts)
        return _common.shaped_like(out, x_in), mean_x, std_x
    partial_mean, partial_m2 = _common.empty_partials(p, acc, x.device)
    _common.launch(
        _row_stats_kernel, p.grid(p.segments), x, partial_mean, partial_m2, R, C, L,
        p.segment_len, eps_hi, eps_lo, p.rows_bucket, FINALIZE=False, UNBIASED=unbiased,
        CHANNELS_LAST=channels_last, BLOCK_R=p.block_r, BLOCK_L=p.block_l, **pro, **opts)
    _common.launch(
        _affine_apply_kernel, p.grid(p.l_blocks), x, partial_mean, partial_m2, mt, st, out,
        mean_x, std_x, R, C, L, p.segment_len, p.segments, alpha_hi, alpha_lo, eps_hi, eps_lo,
        slope_hi, slope_lo, p.rows_bucket, UNBIASED=unbiased, CHANNELS_LAST=channels_last,
        ACTIVATION=act, BLOCK_R=p.block_r, BLOCK_L=p.block_l, **pro, **opts)
    return _common.shaped_like(out, x_in), mean_x, std_x


def affine_backward(grad_out, x_in, mean_x, std_x, std_t, alpha: float, unbiased: bool,
                    mean_t=None, activation: str = "none", negative_slope: float = 0.01,
                    prologue=None):
    """(grad_x, grad_mean_t, grad_std_t), the last two (N, C) in the accumulation dtype. mean_t,
    the forward's target mean, is needed (and read) only with an activation. With a prologue
    (a _Prologue; mean_x, std_x are then p's) also grad_bias and grad_noise_weight, the rows'
    gradients (N, C) in the accumulation dtype."""
    x, channels_last = _common.canonical_layout(x_in)
    grad_x = _common.empty_output(x)
    grad_mt, grad_st = _common.empty_stats(x), _common.empty_stats(x)
    N, C, H, W = x.shape
    R, L = N * C, H * W
    pro, extra = dict(PLAIN_ARGS, PARTIAL_PROLOGUE=None), ()
    if prologue is not None:
        pro = dict(prologue.kernel_args(x, channels_last), PARTIAL_PROLOGUE=None)
        extra = (_common.empty_stats(x), _common.empty_stats(x))  # grad_bias, grad_noise_weight
    if R == 0:
        return _common.shaped_like(grad_x, x_in), grad_mt, grad_st, *extra
    acc = grad_mt.dtype
    g = _common.like_layout(grad_out, channels_last)
    xm, xs, st = (_common.flat_stat(t, acc) for t in (mean_x, std_x, std_t))
    act = activation_code(activation)
    # Without an activation the kernels never read MEAN_T: any acc-dtype (N*C,) tensor will do.
    mt = _common.flat_stat(mean_t, acc) if act != ACTIVATION_NONE.value else st
    alpha_hi, alpha_lo = _common.split_scalar(alpha)
    slope_hi, slope_lo = _common.split_scalar(negative_slope)
    p = _common.plan(R, L, channels_last, x.device, prologue is not None)
    opts = _common.launch_options(p)
    if p.single_pass:
        _common.launch(
            _affine_backward_row_kernel, p.grid(), g, x, xm, xs, mt, st, grad_x, grad_mt, grad_st,
            R, C, L, alpha_hi, alpha_lo, slope_hi, slope_lo, p.rows_bucket, UNBIASED=unbiased,
            CHANNELS_LAST=channels_last, ACTIVATION=act, BLOCK_R=p.block_r, BLOCK_L=p.block_l,
            **_grads_of_prologue(pro, extra, partial=False), **opts)
        return _common.shaped_like(grad_x, x_in), grad_mt, grad_st, *extra
    partial_sum_g, partial_sum_g_dev = _common.empty_partials(p, acc, x.device)
    if prologue is not None:
        pro["PARTIAL_PROLOGUE"] = torch.empty(PROLOGUE_SUMS, p.segments, p.rows, dtype=acc,
                                              device=x.device)
    _common.launch(
        _affine_backward_partial_kernel, p.grid(p.segments), g, x, xm, xs, mt, st, partial_sum_g,
        partial_sum_g_dev, R, C, L, p.segment_len, alpha_hi, alpha_lo, slope_hi, slope_lo,
        p.rows_bucket, CHANNELS_LAST=channels_last, ACTIVATION=act, BLOCK_R=p.block_r,
        BLOCK_L=p.block_l, **pro, **opts)
    _common.launch(
        _affine_backward_apply_kernel, p.grid(p.l_blocks), g, x, xm, xs, mt, st, partial_sum_g,
        partial_sum_g_dev, grad_x, grad_mt, grad_st, R, C, L, p.segments, alpha_hi, alpha_lo,
        slope_hi, slope_lo, p.rows_bucket, UNBIASED=unbiased, CHANNELS_LAST=channels_last,
        ACTIVATION=act, BLOCK_R=p.block_r, BLOCK_L=p.block_l, **_grads_of_prologue(pro, extra),
        **opts)
    return _common.shaped_like(grad_x, x_in), grad_mt, grad_st, *extra


def _grads_of_prologue(pro: dict, extra: tuple, partial: bool = True) -> dict:
    """The prologue's kernel arguments with its two gradient outputs (None without a prologue),
    and without the partials' buffer for the single-pass kernel."""
    args = dict(pro, GRAD_BIAS=extra[0] if extra else None,
                GRAD_NOISE_WEIGHT=extra[1] if extra else None)
    if not partial:
        del args["PARTIAL_PROLOGUE"]
    return args


class _Prologue:
    """The prologue's inputs, as the kernels take them (prologue.py): noise in x's layout
    ((N, 1, *) noise as contiguous rows of L), weight and bias as (C,) tensors of the
    accumulation dtype (1 and 0 where not given), pre_negative_slope in two fp32 halves."""

    def __init__(self, noise, noise_weight, bias, pre_activation: str, pre_negative_slope: float):
        self.noise, self.noise_weight, self.bias = noise, noise_weight, bias
        self.pre_activation, self.pre_negative_slope = pre_activation, pre_negative_slope

    @staticmethod
    def _per_channel(t, C: int, acc: torch.dtype, device, fill: float) -> torch.Tensor:
        if t is None:
            return torch.full((C,), fill, dtype=acc, device=device)
        return t.reshape(-1).to(acc).expand(C).contiguous()

    def kernel_args(self, x, channels_last: bool) -> dict:
        """The kernels' prologue keyword arguments for x's 4-D rows."""
        C, acc = x.shape[1], _common.stat_dtype(x.dtype)
        noise, mode = x, NOISE_NONE.value  # x stands in for the pointer: never read
        if self.noise is not None:
            per_element = self.noise.shape[1] == C
            mode = (NOISE_PER_ELEMENT if per_element else NOISE_PER_POSITION).value
            noise = _common.like_layout(self.noise, channels_last and per_element)
        pre_slope_hi, pre_slope_lo = _common.split_scalar(self.pre_negative_slope)
        return {"NOISE": noise,
                "NOISE_WEIGHT": self._per_channel(self.noise_weight, C, acc, x.device, 1.0),
                "BIAS": self._per_channel(self.bias, C, acc, x.device, 0.0),
                "pre_slope_hi": pre_slope_hi, "pre_slope_lo": pre_slope_lo, "PROLOGUE": True,
                "NOISE_MODE": mode, "PRE_ACTIVATION": activation_code(self.pre_activation)}


# ---- Ops (namespace adain_triton; the schemas mirror adain::_affine_forward/_affine_backward).


@_common.register("_affine_forward", fakes.affine_forward)
def affine_forward_op(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, alpha: float,
                      eps: float, unbiased: bool, activation: str = "none",
                      negative_slope: float = 0.01
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    check_affine(x, mean, std, unbiased)
    check_eps(eps)
    check_alpha(alpha)
    check_activation(activation, negative_slope)
    return affine_forward(x, mean, std, alpha, eps, unbiased, activation, negative_slope)


@_common.register("_affine_backward", fakes.affine_backward)
def affine_backward_op(grad_out: torch.Tensor, x: torch.Tensor, mean_x: torch.Tensor,
                       std_x: torch.Tensor, std: torch.Tensor, alpha: float, unbiased: bool,
                       mean: torch.Tensor | None = None, activation: str = "none",
                       negative_slope: float = 0.01
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    check_activation(activation, negative_slope)
    check_backward_mean(mean, activation)
    return affine_backward(grad_out, x, mean_x, std_x, std, alpha, unbiased, mean, activation,
                           negative_slope)


_backward, _setup_context = _autograd.affine_forward(affine_backward_op)
affine_forward_op.register_autograd(_backward, setup_context=_setup_context)


# ---- The prologue ops (namespace adain_triton; the schemas of adain::_prologue_affine_forward /
# _prologue_affine_backward): affine at alpha = 1 over p = act_pre(x + noise_weight * noise + bias).


@_common.register("_prologue_affine_forward", fakes.prologue_affine_forward)
def prologue_affine_forward_op(x: torch.Tensor, noise: torch.Tensor | None,
                               noise_weight: torch.Tensor | None, bias: torch.Tensor | None,
                               pre_activation: str, pre_negative_slope: float,
                               mean: torch.Tensor, std: torch.Tensor, eps: float, unbiased: bool,
                               activation: str, negative_slope: float
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    check_affine(x, mean, std, unbiased)
    check_prologue(x, noise, noise_weight, bias, pre_activation, pre_negative_slope)
    check_eps(eps)
    check_activation(activation, negative_slope)
    prologue = _Prologue(noise, noise_weight, bias, pre_activation, pre_negative_slope)
    return affine_forward(x, mean, std, 1.0, eps, unbiased, activation, negative_slope, prologue)


@_common.register("_prologue_affine_backward", fakes.prologue_affine_backward)
def prologue_affine_backward_op(grad_out: torch.Tensor, x: torch.Tensor,
                                noise: torch.Tensor | None, noise_weight: torch.Tensor | None,
                                bias: torch.Tensor | None, pre_activation: str,
                                pre_negative_slope: float, mean_p: torch.Tensor,
                                std_p: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                                unbiased: bool, activation: str, negative_slope: float
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                           torch.Tensor]:
    check_prologue(x, noise, noise_weight, bias, pre_activation, pre_negative_slope)
    check_activation(activation, negative_slope)
    prologue = _Prologue(noise, noise_weight, bias, pre_activation, pre_negative_slope)
    return affine_backward(grad_out, x, mean_p, std_p, std, 1.0, unbiased, mean, activation,
                           negative_slope, prologue)


_backward, _setup_context = _autograd.prologue_affine_forward(prologue_affine_backward_op)
prologue_affine_forward_op.register_autograd(_backward, setup_context=_setup_context)
