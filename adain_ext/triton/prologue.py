"""The affine op's prologue in the Triton kernels (the mirror of csrc/row_math.h's prologue_pre,
PrologueSums and prologue_grads):

    pre = x + weight[c] * noise + bias[c],   p = act_pre(pre)

with act_pre 'none', 'relu' or 'leaky_relu' (row_math.activate: the epilogue's `<= 0` test) and
noise per (n, position), the same for every channel (NOISE_MODE == NOISE_PER_POSITION: (N, 1, *)
noise, read as contiguous rows of L), or per element (NOISE_PER_ELEMENT: (N, C, *) noise in x's
layout), or none. weight and bias arrive as (C,) tensors of the accumulation dtype (1 and 0 where
not given). The statistics and the map of the affine kernels are taken over p; no kernel stores
pre or p: the forward forms p where it loads x, the backward forms pre and p again from x.

The backward: with g the gradient after the epilogue's backward and m = act_pre'(pre) (1, 0 or
the slope; 0 on masked entries), grad_x = m * (g_scale * g + slope * (p - mean) + shift) and the
per-row gradients of bias and weight come from six masked sums taken in the same sweep as the
affine GradSums (prologue_sums_tile), merged over segments by plain addition:

    grad_bias   = g_scale * sum_mg       + slope * sum_mdev       + shift * sum_m
    grad_weight = g_scale * sum_mg_noise + slope * sum_mdev_noise + shift * sum_m_noise

The kernels take the prologue behind a PROLOGUE constexpr (False: no prologue code at all, the
kernels of the plain op) with NOISE_MODE and PRE_ACTIVATION constexprs beside it.
"""
import triton
import triton.language as tl

from adain_ext.triton.row_math import activate, activation_grad
from adain_ext.triton.welford import scalar, tile_pointers, tile_stats, welford_merge

# NOISE_MODE constexpr values.
NOISE_NONE = tl.constexpr(0)
NOISE_PER_POSITION = tl.constexpr(1)  # (N, 1, *): one value per (n, position), every channel
NOISE_PER_ELEMENT = tl.constexpr(2)  # (N, C, *): one value per element, in x's layout
# The planes of the backward's [6, segment, row] partial buffer, in PrologueSums' order.
PROLOGUE_SUMS = 6

# The prologue arguments of a launch without one. Always passed, never left to the kernels'
# defaults: torch.compile's analysis of a triton_op's kernels (wrap_triton) needs every argument
# of the kernel at the call ("Incorrect number of arguments passed to kernel"). None pointers are
# constexprs: the plain kernels have no more runtime arguments than before the prologue.
PLAIN_ARGS = {"NOISE": None, "NOISE_WEIGHT": None, "BIAS": None, "pre_slope_hi": None,
              "pre_slope_lo": None, "PROLOGUE": False, "NOISE_MODE": 0, "PRE_ACTIVATION": 0}


@triton.jit
def prologue_params(NOISE_WEIGHT, BIAS, rows, rows_mask, C, pre_slope_hi, pre_slope_lo,
                    acc_zero):
    """(weight, bias, pre_negative_slope) of BLOCK_R rows, per-row vectors in the acc dtype."""
    channel = rows % C
    weight = tl.load(NOISE_WEIGHT + channel, mask=rows_mask, other=1.0)
    bias = tl.load(BIAS + channel, mask=rows_mask, other=0.0)
    return weight, bias, scalar(pre_slope_hi, pre_slope_lo, acc_zero)


@triton.jit
def prologue_tile(x, NOISE, rows, base, offs_l, mask, C, L, weight, bias, pre_slope,
                  CHANNELS_LAST: tl.constexpr, NOISE_MODE: tl.constexpr,
                  PRE_ACTIVATION: tl.constexpr):
    """(pre, p, noise) of a [BLOCK_R, BLOCK_L] tile of x (already in the acc dtype). noise is
    loaded with 0 on masked entries (x itself stands in for it without noise: never read).
    pre = (x + weight * noise) + bias, the order of the C++ kernels and the reference."""
    noise = x
    if NOISE_MODE == NOISE_PER_ELEMENT:
        noise = tl.load(tile_pointers(NOISE, base, offs_l, C, CHANNELS_LAST), mask=mask,
                        other=0.0).to(x.dtype)
    elif NOISE_MODE == NOISE_PER_POSITION:
        # (N, 1, L) rows, contiguous: row n*C + c reads noise row n, whatever x's layout.
        noise_base = (rows.to(tl.int64) // C) * L
        noise = tl.load(NOISE + noise_base[:, None] + offs_l[None, :], mask=mask,
                        other=0.0).to(x.dtype)
    pre = x
    if NOISE_MODE != NOISE_NONE:
        pre = pre + weight[:, None] * noise
    pre = pre + bias[:, None]
    return pre, activate(pre, pre_slope, PRE_ACTIVATION), noise


@triton.jit
def prologue_mask(pre, mask, pre_slope, PRE_ACTIVATION: tl.constexpr):
    """m = act_pre'(pre) on the tile, 0 on masked entries (where pre is bias, not data)."""
    return activation_grad(pre, mask.to(pre.dtype), pre_slope, PRE_ACTIVATION)


@triton.jit
def prologue_sums_tile(g, p, mean, m, noise, mask, NOISE_MODE: tl.constexpr):
    """PrologueSums of a tile per row: sum(m g), sum(m (p - mean)), sum(m), and the same times
    noise (0 without noise). g is 0 and m is 0 on masked entries; p - mean is masked after the
    product (a NaN mean must not reach them)."""
    mg = m * g
    mdev = tl.where(mask, m * (p - mean[:, None]), 0.0)
    sum_mg = tl.sum(mg, axis=1)
    sum_mdev = tl.sum(mdev, axis=1)
    sum_m = tl.sum(m, axis=1)
    sum_mg_noise = sum_m * 0.0
    sum_mdev_noise = sum_m * 0.0
    sum_m_noise = sum_m * 0.0
    if NOISE_MODE != NOISE_NONE:
        sum_mg_noise = tl.sum(mg * noise, axis=1)
        sum_mdev_noise = tl.sum(mdev * noise, axis=1)
        sum_m_noise = tl.sum(m * noise, axis=1)
    return sum_mg, sum_mdev, sum_m, sum_mg_noise, sum_mdev_noise, sum_m_noise


@triton.jit
def prologue_grads(sum_mg, sum_mdev, sum_m, sum_mg_noise, sum_mdev_noise, sum_m_noise, g_scale,
                   slope, shift):
    """(grad_bias, grad_weight) of a row, before the sum over N, from its PrologueSums and its
    grad_x coefficients."""
    grad_bias = g_scale * sum_mg + slope * sum_mdev + shift * sum_m
    grad_weight = g_scale * sum_mg_noise + slope * sum_mdev_noise + shift * sum_m_noise
    return grad_bias, grad_weight


@triton.jit
def prologue_row_stats_loop(X, NOISE, rows, base, rows_mask, start, stop, C, L, weight, bias,
                            pre_slope, acc_zero, CHANNELS_LAST: tl.constexpr,
                            NOISE_MODE: tl.constexpr, PRE_ACTIVATION: tl.constexpr,
                            BLOCK_L: tl.constexpr):
    """welford.row_stats_loop over p instead of x: mean, m2 and count of p on [start, stop)."""
    mean = acc_zero
    m2 = acc_zero
    count = acc_zero
    for l0 in range(start, stop, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        mask = rows_mask[:, None] & (offs_l < stop)[None, :]
        x = tl.load(tile_pointers(X, base, offs_l, C, CHANNELS_LAST), mask=mask,
                    other=0.0).to(acc_zero.dtype)
        _, p, _ = prologue_tile(x, NOISE, rows, base, offs_l, mask, C, L, weight, bias, pre_slope,
                                CHANNELS_LAST, NOISE_MODE, PRE_ACTIVATION)
        t_mean, t_m2, t_count = tile_stats(p, mask)
        mean, m2, count = welford_merge(mean, m2, count, t_mean, t_m2, t_count)
    return mean, m2, count
