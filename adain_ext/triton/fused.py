"""adain_triton::_fused_forward (behind adain): Triton kernel, launcher, op registration, autograd.

out = alpha * AdaIN(content, style) + (1 - alpha) * content. When content rows fit one program
and style rows need no splitting, one launch does it all: each program reduces its rows' style,
then normalises its content rows from one read. Otherwise the style statistics come from the
row-statistics launcher and the content goes through the affine launcher with them as targets.
The backward reuses the affine and mean_std backward kernels.
"""
import torch
import triton
import triton.language as tl

from adain_ext import _autograd, fakes
from adain_ext._validation import check_alpha, check_eps, check_pair
from adain_ext.triton import _common
from adain_ext.triton._common import kernel
from adain_ext.triton.affine import affine_backward_op, affine_forward, affine_rows
from adain_ext.triton.mean_std import mean_std_backward_op, row_stats
from adain_ext.triton.row_math import std_of
from adain_ext.triton.welford import row_base, row_stats_loop, scalar


@kernel
def _fused_row_kernel(CONTENT, STYLE, OUT, CONTENT_MEAN, CONTENT_STD, STYLE_MEAN, STYLE_STD, R, C,
                      L, L_STYLE, alpha_hi, alpha_lo, eps_hi, eps_lo, ROWS_BUCKET, STYLE_BUCKET,
                      UNBIASED: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                      STYLE_CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr,
                      BLOCK_L: tl.constexpr, BLOCK_L_STYLE: tl.constexpr):
    """One launch: style statistics of BLOCK_R rows (streamed in BLOCK_L_STYLE tiles), then the
    single-pass affine of the same content rows with them as targets."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rows_mask = rows < R
    acc_zero = tl.zeros([BLOCK_R], CONTENT_MEAN.dtype.element_ty)
    eps = scalar(eps_hi, eps_lo, acc_zero)
    style_base = row_base(rows, C, L_STYLE, STYLE_CHANNELS_LAST)
    style_mean, style_m2, _ = row_stats_loop(STYLE, style_base, rows_mask, 0, L_STYLE, C,
                                             acc_zero, STYLE_CHANNELS_LAST, BLOCK_L_STYLE)
    style_std = std_of(style_m2, L_STYLE, eps, UNBIASED)
    tl.store(STYLE_MEAN + rows, style_mean, mask=rows_mask)
    tl.store(STYLE_STD + rows, style_std, mask=rows_mask)
    affine_rows(CONTENT, OUT, CONTENT_MEAN, CONTENT_STD, rows, rows_mask, C, L, style_mean,
                style_std, scalar(alpha_hi, alpha_lo, acc_zero), eps, UNBIASED, CHANNELS_LAST,
                BLOCK_L)


def fused_forward(content_in, style_in, alpha: float, eps: float, unbiased: bool):
    """(out, content_mean, content_std, style_mean, style_std), statistics (N, C) acc dtype."""
    content, channels_last = _common.canonical_layout(content_in)
    style, style_channels_last = _common.canonical_layout(style_in)
    N, C, H, W = content.shape
    R, L, L_style = N * C, H * W, style.shape[2] * style.shape[3]
    p = _common.plan(R, L, channels_last, content.device)
    p_style = _common.plan(R, L_style, style_channels_last, content.device)
    if R == 0 or not (p.single_pass and p_style.segments == 1):
        style_mean, style_std = (row_stats(style, style_channels_last, eps, unbiased) if R
                                 else (_common.empty_stats(content), _common.empty_stats(content)))
        out, content_mean, content_std = affine_forward(content, style_mean, style_std, alpha,
                                                        eps, unbiased)
        return _common.shaped_like(out, content_in), content_mean, content_std, style_mean, style_std
    out = _common.empty_output(content)
    stats = [_common.empty_stats(content) for _ in range(4)]
    alpha_hi, alpha_lo = _common.split_scalar(alpha)
    eps_hi, eps_lo = _common.split_scalar(eps)
    # The style streams through tiles no larger than the content tile or the packing tile.
    block_l_style = min(triton.next_power_of_2(L_style),
                        max(p.block_l, _common.limits_now().pack_tile // p.block_r))
    _common.launch(
        _fused_row_kernel, p.grid(), content, style, out, *stats, R, C, L, L_style, alpha_hi,
        alpha_lo, eps_hi, eps_lo, p.rows_bucket, _common.size_bucket(L_style),
        UNBIASED=unbiased, CHANNELS_LAST=channels_last, STYLE_CHANNELS_LAST=style_channels_last,
        BLOCK_R=p.block_r, BLOCK_L=p.block_l, BLOCK_L_STYLE=block_l_style,
        **_common.launch_options(p, block_l_style))
    return (_common.shaped_like(out, content_in), *stats)


# ---- Op (namespace adain_triton; the schema mirrors adain::_fused_forward).


@_common.register("_fused_forward", fakes.fused_forward)
def fused_forward_op(content: torch.Tensor, style: torch.Tensor, alpha: float, eps: float,
                     unbiased: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                              torch.Tensor, torch.Tensor]:
    check_pair(content, style, unbiased)
    check_eps(eps)
    check_alpha(alpha)
    return fused_forward(content, style, alpha, eps, unbiased)


# No fused backward kernel in Triton yet: the backward composes the two others.
_backward, _setup_context = _autograd.fused_forward(affine_backward_op, mean_std_backward_op)
fused_forward_op.register_autograd(_backward, setup_context=_setup_context)
