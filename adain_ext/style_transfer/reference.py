"""The reference pipeline (naoto0804/pytorch-AdaIN test.py) on the seed's AdaIN: the oracle the
tests and benchmarks hold `StyleTransfer` to. Eager fp32, no fused op, no statistics mixing.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from adain_ext.reference import adaptive_instance_normalization


def reference_encoder(vgg: nn.Sequential) -> nn.Sequential:
    """`nn.Sequential(*list(vgg.children())[:31])`, as test.py builds it."""
    return nn.Sequential(*list(vgg.children())[:31])


def reference_style_transfer(vgg: nn.Sequential, decoder: nn.Sequential, content: torch.Tensor,
                             style: torch.Tensor, alpha: float = 1.0,
                             interpolation_weights: Sequence[float] | None = None) -> torch.Tensor:
    """test.py's style_transfer: K styles are K AdaINs whose outputs are summed with the weights
    (content repeated K times, one AdaIN each), then decoded. No output cropping."""
    assert 0.0 <= alpha <= 1.0
    content_f = vgg(content)
    style_f = vgg(style)
    if interpolation_weights:
        _, C, H, W = content_f.size()
        feat = torch.zeros(1, C, H, W, device=content_f.device, dtype=content_f.dtype)
        base_feat = adaptive_instance_normalization(content_f.repeat(style_f.shape[0], 1, 1, 1), style_f)
        for i, w in enumerate(interpolation_weights):
            feat = feat + w * base_feat[i : i + 1]
        content_f = content_f[0:1]
    else:
        feat = adaptive_instance_normalization(content_f, style_f)
    feat = feat * alpha + content_f * (1 - alpha)
    return decoder(feat)
