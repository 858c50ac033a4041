"""adain::_affine_forward (behind adain::affine): fake kernels."""
from __future__ import annotations

import torch

from adain_ext._layout import empty_output, empty_stats
from adain_ext._validation import check_affine, check_alpha, check_eps


@torch.library.register_fake("adain::_affine_forward")
def _affine_forward_fake(x, mean, std, alpha, eps, unbiased):
    check_affine(x, mean, std, unbiased)
    check_eps(eps)
    check_alpha(alpha)
    return empty_output(x), empty_stats(x), empty_stats(x)


@torch.library.register_fake("adain::_affine_backward")
def _affine_backward_fake(grad_out, x, mean_x, std_x, std, alpha, unbiased):
    return empty_output(x), empty_stats(x), empty_stats(x)
