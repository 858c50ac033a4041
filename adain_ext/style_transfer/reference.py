"""The reference pipeline (naoto0804/pytorch-AdaIN test.py) on the paper's AdaIN: the oracle the
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


class ReferenceNet(nn.Module):
    """The reference's training network (net.py `Net`): losses with the paper's calc_mean_std,
    the style targets and the AdaIN target computed with autograd on, as the reference does."""

    def __init__(self, vgg: nn.Sequential, decoder: nn.Sequential):
        super().__init__()
        layers = list(vgg.children())
        self.enc_1 = nn.Sequential(*layers[:4])
        self.enc_2 = nn.Sequential(*layers[4:11])
        self.enc_3 = nn.Sequential(*layers[11:18])
        self.enc_4 = nn.Sequential(*layers[18:31])
        self.decoder = decoder
        self.mse_loss = nn.MSELoss()
        for name in ("enc_1", "enc_2", "enc_3", "enc_4"):
            for param in getattr(self, name).parameters():
                param.requires_grad = False

    def encode_with_intermediate(self, x):
        results = [x]
        for i in range(4):
            results.append(getattr(self, f"enc_{i + 1}")(results[-1]))
        return results[1:]

    def encode(self, x):
        for i in range(4):
            x = getattr(self, f"enc_{i + 1}")(x)
        return x

    def calc_content_loss(self, input, target):
        assert input.size() == target.size()
        assert target.requires_grad is False
        return self.mse_loss(input, target)

    def calc_style_loss(self, input, target):
        from adain_ext.reference import calc_mean_std

        input_mean, input_std = calc_mean_std(input)
        target_mean, target_std = calc_mean_std(target)
        return self.mse_loss(input_mean, target_mean) + self.mse_loss(input_std, target_std)

    def forward(self, content, style, alpha=1.0):
        assert 0 <= alpha <= 1
        style_feats = self.encode_with_intermediate(style)
        content_feat = self.encode(content)
        t = adaptive_instance_normalization(content_feat, style_feats[-1])
        t = alpha * t + (1 - alpha) * content_feat
        g_t = self.decoder(t)
        g_t_feats = self.encode_with_intermediate(g_t)
        loss_c = self.calc_content_loss(g_t_feats[-1], t)
        loss_s = self.calc_style_loss(g_t_feats[0], style_feats[0])
        for i in range(1, 4):
            loss_s += self.calc_style_loss(g_t_feats[i], style_feats[i])
        return loss_c, loss_s
