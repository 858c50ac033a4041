"""adain::_fused_forward (behind adain::fused): fake kernel and autograd.

The backward is adain::_fused_backward (the content gradient, the style statistics' gradients and
from them the style gradient; on devices without a kernel of its own it composes
_affine_backward and _mean_std_backward), or _affine_backward alone when the style needs no
gradient.
"""
from __future__ import annotations

import torch

from adain_ext import _autograd
from adain_ext._layout import empty_output, empty_stats
from adain_ext._validation import check_eps, check_pair


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


_backward, _setup_context = _autograd.fused_forward(
    torch.ops.adain._affine_backward, torch.ops.adain._mean_std_backward,
    torch.ops.adain._fused_backward,
)
torch.library.register_autograd(
    "adain::_fused_forward", _backward, setup_context=_setup_context
)
