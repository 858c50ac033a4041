"""adain::mean_std: fake kernel and autograd (backward: adain::_mean_std_backward)."""
from __future__ import annotations

import torch

from adain_ext._validation import check_eps, check_features
from adain_ext._layout import empty_output


@torch.library.register_fake("adain::mean_std")
def _mean_std_fake(x, eps=1e-5, unbiased=True):
    check_features(x, "x", unbiased)
    check_eps(eps)
    N, C = x.shape[:2]
    return x.new_empty(N, C, 1, 1), x.new_empty(N, C, 1, 1)


@torch.library.register_fake("adain::_mean_std_backward")
def _mean_std_backward_fake(grad_mean, grad_std, x, mean, std, unbiased):
    return empty_output(x)


def _setup_context(ctx, inputs, output):
    x, _eps, unbiased = inputs
    mean, std = output
    ctx.save_for_backward(x, mean, std)
    ctx.unbiased = unbiased


def _backward(ctx, grad_mean, grad_std):
    if not ctx.needs_input_grad[0]:
        return None, None, None
    x, mean, std = ctx.saved_tensors
    # Either output may be unused; its gradient then arrives as None.
    grad_mean = torch.zeros_like(mean) if grad_mean is None else grad_mean
    grad_std = torch.zeros_like(std) if grad_std is None else grad_std
    grad_x = torch.ops.adain._mean_std_backward(grad_mean, grad_std, x, mean, std, ctx.unbiased)
    return grad_x, None, None


torch.library.register_autograd("adain::mean_std", _backward, setup_context=_setup_context)
