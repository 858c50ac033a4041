"""adain::_fused_forward (behind adain::fused): fake kernel and autograd.

The backward is adain::_fused_backward (the content gradient, the style statistics' gradients and
from them the style gradient; on devices without a kernel of its own it composes
_affine_backward and _mean_std_backward), or _affine_backward alone when the style needs no
gradient.
"""
from __future__ import annotations

import torch

from adain_ext._validation import check_eps, check_pair
from adain_ext._layout import empty_output, empty_stats


@torch.library.register_fake("adain::_fused_forward")
def _fused_forward_fake(content, style, alpha, eps, unbiased):
    check_pair(content, style, unbiased)
    check_eps(eps)
    stats = [empty_stats(content) for _ in range(4)]
    return (empty_output(content), *stats)


@torch.library.register_fake("adain::_fused_backward")
def _fused_backward_fake(grad_out, content, style, content_mean, content_std, style_mean, style_std,
                         alpha, unbiased):
    return empty_output(content), empty_output(style)


def _setup_context(ctx, inputs, output):
    content, style, alpha, _eps, unbiased = inputs
    _out, content_mean, content_std, style_mean, style_std = output
    ctx.mark_non_differentiable(content_mean, content_std, style_mean, style_std)
    ctx.save_for_backward(content, style, content_mean, content_std, style_mean, style_std)
    ctx.alpha, ctx.unbiased = alpha, unbiased


def _backward(ctx, grad_out, *_grad_stats):
    content, style, content_mean, content_std, style_mean, style_std = ctx.saved_tensors
    need_content, need_style = ctx.needs_input_grad[:2]
    if not need_style:
        grad_content, _, _ = torch.ops.adain._affine_backward(
            grad_out, content, content_mean, content_std, style_std, ctx.alpha, ctx.unbiased
        )
        return grad_content, None, None, None, None
    grad_content, grad_style = torch.ops.adain._fused_backward(
        grad_out, content, style, content_mean, content_std, style_mean, style_std, ctx.alpha,
        ctx.unbiased
    )
    return grad_content if need_content else None, grad_style, None, None, None


torch.library.register_autograd("adain::_fused_forward", _backward, setup_context=_setup_context)
