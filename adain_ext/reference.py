"""The pure-PyTorch oracle. Every backend and every test is checked against this file.

`calc_mean_std` and `adaptive_instance_normalization` are the paper's PyTorch code (only `.view` is
`.reshape` so strided input works); `mean_std`, `adain` and `adain_affine` generalise them with
the options the ops take (eps, unbiased, alpha, external statistics) without changing the math:
variance over H*W divided by H*W - 1 (or H*W), eps added to the variance before the square root.
They take (N, C, *) tensors of any rank >= 3, with statistics over all trailing dims (as
F.instance_norm does); for 4-D input they are calc_mean_std's math exactly.
"""
from __future__ import annotations

import torch


def calc_mean_std(feat: torch.Tensor, eps: float = 1e-5):
    size = feat.size()
    assert len(size) == 4
    N, C = size[:2]
    feat_var = feat.reshape(N, C, -1).var(dim=2) + eps
    feat_std = feat_var.sqrt().view(N, C, 1, 1)
    feat_mean = feat.reshape(N, C, -1).mean(dim=2).view(N, C, 1, 1)
    return feat_mean, feat_std


def adaptive_instance_normalization(content_feat: torch.Tensor, style_feat: torch.Tensor):
    assert content_feat.size()[:2] == style_feat.size()[:2]
    size = content_feat.size()
    style_mean, style_std = calc_mean_std(style_feat)
    content_mean, content_std = calc_mean_std(content_feat)
    normalized_feat = (content_feat - content_mean.expand(size)) / content_std.expand(size)
    return normalized_feat * style_std.expand(size) + style_mean.expand(size)


def _stat_shape(x: torch.Tensor) -> tuple[int, ...]:
    return (x.shape[0], x.shape[1], *([1] * (x.dim() - 2)))


def mean_std(x: torch.Tensor, eps: float = 1e-5, unbiased: bool = True):
    """Per-(n, c) mean and sqrt(var + eps) over all trailing dims of a (N, C, *) tensor, each
    shaped (N, C, 1, ...) like x ((N, C, 1, 1) for 4-D: calc_mean_std's shape), in x's dtype."""
    N, C = x.shape[:2]
    rows = x.flatten(2)  # not reshape(N, C, -1): -1 is ambiguous when N or C is 0
    var = rows.var(dim=2, correction=1 if unbiased else 0) + eps
    return rows.mean(dim=2).view(_stat_shape(x)), var.sqrt().view(_stat_shape(x))


def activate(y: torch.Tensor, activation: str = "none", negative_slope: float = 0.01):
    """The affine op's output activation, as the models that follow AdaIN with one write it."""
    if activation == "relu":
        return torch.relu(y)
    if activation == "leaky_relu":
        return torch.nn.functional.leaky_relu(y, negative_slope)
    return y


def _per_channel(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-channel parameter ((C,), (1, C, 1, ...) or a single value) shaped to broadcast
    against x's (N, C, *)."""
    return t.reshape(1, -1, *([1] * (x.dim() - 2)))


def prologue(x: torch.Tensor, noise=None, noise_weight=None, bias=None,
             pre_activation: str = "none", pre_negative_slope: float = 0.01):
    """pre_activation(x + noise_weight * noise + bias): StyleGAN's noise injection and LeakyReLU
    before its AdaIN. noise is (N, 1, *) or (N, C, *); noise_weight one per channel or a single
    value (none: 1); bias one per channel. Computed in the promoted dtype of its inputs."""
    pre = x
    if noise is not None:
        pre = pre + (noise if noise_weight is None else _per_channel(noise_weight, x) * noise)
    if bias is not None:
        pre = pre + _per_channel(bias, x)
    return activate(pre, pre_activation, pre_negative_slope)


def adain_affine(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, eps: float = 1e-5,
                 unbiased: bool = True, activation: str = "none", negative_slope: float = 0.01,
                 *, noise=None, noise_weight=None, bias=None, pre_activation: str = "none",
                 pre_negative_slope: float = 0.01):
    """act(std * (p - mean_p) / std_p + mean), with target statistics given as (N, C) or
    (N, C, 1, ...); act is 'none', 'relu' or 'leaky_relu' (with negative_slope). p is x, or with
    the prologue arguments prologue(x, ...); the output has x's dtype."""
    p = x
    if (noise is not None or noise_weight is not None or bias is not None
            or pre_activation != "none"):
        p = prologue(x, noise, noise_weight, bias, pre_activation, pre_negative_slope)
    mean_p, std_p = mean_std(p, eps, unbiased)
    out = (p - mean_p) / std_p * std.reshape(_stat_shape(x)) + mean.reshape(_stat_shape(x))
    return activate(out.to(x.dtype), activation, negative_slope)


def adain(content: torch.Tensor, style: torch.Tensor, alpha: float = 1.0, eps: float = 1e-5,
          unbiased: bool = True):
    """alpha * AdaIN(content, style) + (1 - alpha) * content."""
    style_mean, style_std = mean_std(style, eps, unbiased)
    out = adain_affine(content, style_mean, style_std, eps, unbiased)
    if alpha != 1.0:
        out = alpha * out + (1.0 - alpha) * content
    return out
