"""adain::_affine_forward (behind adain::affine): fake kernels and autograd."""
from __future__ import annotations

import torch

from adain_ext._validation import check_affine, check_eps
from adain_ext._layout import as_grad_of, empty_output, empty_stats


@torch.library.register_fake("adain::_affine_forward")
def _affine_forward_fake(x, mean, std, alpha, eps, unbiased):
    check_affine(x, mean, std, unbiased)
    check_eps(eps)
    return empty_output(x), empty_stats(x), empty_stats(x)


@torch.library.register_fake("adain::_affine_backward")
def _affine_backward_fake(grad_out, x, x_mean, x_std, std, alpha, unbiased):
    return empty_output(x), empty_stats(x), empty_stats(x)


def _setup_context(ctx, inputs, output):
    x, mean, std, alpha, _eps, unbiased = inputs
    _out, x_mean, x_std = output
    ctx.mark_non_differentiable(x_mean, x_std)
    ctx.save_for_backward(x, x_mean, x_std, std)
    ctx.alpha, ctx.unbiased = alpha, unbiased
    ctx.mean_like = (mean.shape, mean.dtype)
    ctx.std_like = (std.shape, std.dtype)


def _backward(ctx, grad_out, _grad_x_mean, _grad_x_std):
    x, x_mean, x_std, std = ctx.saved_tensors
    grad_x, grad_mean, grad_std = torch.ops.adain._affine_backward(
        grad_out, x, x_mean, x_std, std, ctx.alpha, ctx.unbiased
    )
    need_x, need_mean, need_std = ctx.needs_input_grad[:3]
    return (
        grad_x if need_x else None,
        as_grad_of(grad_mean, *ctx.mean_like) if need_mean else None,
        as_grad_of(grad_std, *ctx.std_like) if need_std else None,
        None,
        None,
        None,
    )


torch.library.register_autograd("adain::_affine_forward", _backward, setup_context=_setup_context)
