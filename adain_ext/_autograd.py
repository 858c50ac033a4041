"""The autograd formulas of the ops, written once for every backend that registers them (the C++
ops in adain_ext/ops/, the Triton ops in adain_ext/triton/). Each factory takes the backend's
backward ops and returns (backward, setup_context) for torch.library.register_autograd.
"""
from __future__ import annotations

import torch

from adain_ext._layout import as_grad_of


def mean_std(mean_std_backward):
    """mean_std(x, eps, unbiased) -> (mean, std)."""

    def setup_context(ctx, inputs, output):
        x, _eps, unbiased = inputs
        mean, std = output
        ctx.save_for_backward(x, mean, std)
        ctx.unbiased = unbiased

    def backward(ctx, grad_mean, grad_std):
        if not ctx.needs_input_grad[0]:
            return None, None, None
        x, mean, std = ctx.saved_tensors
        # Either output may be unused; its gradient then arrives as None.
        grad_mean = torch.zeros_like(mean) if grad_mean is None else grad_mean
        grad_std = torch.zeros_like(std) if grad_std is None else grad_std
        return mean_std_backward(grad_mean, grad_std, x, mean, std, ctx.unbiased), None, None

    return backward, setup_context


def affine_forward(affine_backward):
    """_affine_forward(x, mean, std, alpha, eps, unbiased) -> (out, mean_x, std_x)."""

    def setup_context(ctx, inputs, output):
        x, mean, std, alpha, _eps, unbiased = inputs
        _out, mean_x, std_x = output
        ctx.mark_non_differentiable(mean_x, std_x)
        ctx.save_for_backward(x, mean_x, std_x, std)
        ctx.alpha, ctx.unbiased = alpha, unbiased
        ctx.mean_like = (mean.shape, mean.dtype)
        ctx.std_like = (std.shape, std.dtype)

    def backward(ctx, grad_out, _grad_mean_x, _grad_std_x):
        x, mean_x, std_x, std = ctx.saved_tensors
        grad_x, grad_mean, grad_std = affine_backward(grad_out, x, mean_x, std_x, std, ctx.alpha,
                                                      ctx.unbiased)
        need_x, need_mean, need_std = ctx.needs_input_grad[:3]
        return (
            grad_x if need_x else None,
            as_grad_of(grad_mean, *ctx.mean_like) if need_mean else None,
            as_grad_of(grad_std, *ctx.std_like) if need_std else None,
            None,
            None,
            None,
        )

    return backward, setup_context


def fused_forward(affine_backward, mean_std_backward, fused_backward=None):
    """_fused_forward(content, style, alpha, eps, unbiased) -> (out, 4 statistics).

    The backward is affine_backward (content gradient and the style statistics' gradients) then
    mean_std_backward (the style gradient from those), or fused_backward doing both in one op.
    """

    def setup_context(ctx, inputs, output):
        content, style, alpha, _eps, unbiased = inputs
        _out, content_mean, content_std, style_mean, style_std = output
        ctx.mark_non_differentiable(content_mean, content_std, style_mean, style_std)
        ctx.save_for_backward(content, style, content_mean, content_std, style_mean, style_std)
        ctx.alpha, ctx.unbiased = alpha, unbiased

    def backward(ctx, grad_out, *_grad_stats):
        content, style, content_mean, content_std, style_mean, style_std = ctx.saved_tensors
        need_content, need_style = ctx.needs_input_grad[:2]
        if need_style and fused_backward is not None:
            grad_content, grad_style = fused_backward(grad_out, content, style, content_mean,
                                                      content_std, style_mean, style_std,
                                                      ctx.alpha, ctx.unbiased)
        else:
            grad_content, grad_mean, grad_std = affine_backward(
                grad_out, content, content_mean, content_std, style_std, ctx.alpha, ctx.unbiased)
            grad_style = None
            if need_style:
                grad_style = mean_std_backward(grad_mean, grad_std, style, style_mean, style_std,
                                               ctx.unbiased)
        return grad_content if need_content else None, grad_style, None, None, None

    return backward, setup_context
