"""adain::_fused_forward (behind adain::fused) and adain::_fused_backward: fake kernels."""
from __future__ import annotations

import torch

from adain_ext._layout import empty_output, empty_stats
from adain_ext._validation import check_alpha, check_eps, check_pair


@torch.library.register_fake("adain::_fused_forward")
def _fused_forward_fake(content, style, alpha, eps, unbiased):
    check_pair(content, style, unbiased)
    check_eps(eps)
    check_alpha(alpha)
    stats = [empty_stats(content) for _ in range(4)]
    return (empty_output(content), *stats)


@torch.library.register_fake("adain::_fused_backward")
def _fused_backward_fake(grad_out, content, style, content_mean, content_std, style_mean, style_std,
                         alpha, unbiased):
    return empty_output(content), empty_output(style)
