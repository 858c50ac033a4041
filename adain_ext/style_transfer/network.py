"""The AdaIN style-transfer network T(c, s) = g(AdaIN(f(c), f(s))) and its test-time controls.

Every AdaIN goes through the package's ops: `adain_ext.adain` for one style, and
`adain_ext.adain_affine` with mixed target statistics for several. Mixing statistics is exact:
for weights w_k summing to 1,

    sum_k w_k AdaIN(x, s_k) = sum_k w_k (std_k * x_hat + mean_k)
                            = (sum_k w_k std_k) * x_hat + (sum_k w_k mean_k),

so K styles cost one affine and ONE decode, where the reference decodes the weighted sum of
K AdaIN outputs.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

import adain_ext
from adain_ext._validation import check_scalars
from adain_ext.style_transfer import models

StyleStats = tuple[torch.Tensor, torch.Tensor]  # (mean, std), each (1 or N, C, 1, 1)


def normalize_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """Interpolation weights as floats summing to 1 (the reference only took integers)."""
    if weights is None:
        return [1.0 / count] * count
    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise ValueError(f"got {len(weights)} interpolation weights for {count} styles")
    if any(not (0 <= w < math.inf) for w in weights) or max(weights) <= 0:  # NaN fails too
        raise ValueError(f"interpolation weights must be finite and >= 0 with a positive sum, got {weights}")
    top = max(weights)  # scaled first: 1e308,1e308 must not sum to inf, nor tiny ones to 0
    weights = [w / top for w in weights]
    total = math.fsum(weights)
    return [w / total for w in weights]


def mix_stats(stats: Sequence[StyleStats], weights: Sequence[float]) -> StyleStats:
    """The weighted sums of the styles' means and stds (weights already normalised)."""
    mean = sum(w * m for w, (m, _) in zip(weights, stats))
    std = sum(w * s for w, (_, s) in zip(weights, stats))
    return mean, std


class StyleTransfer(nn.Module):
    """Encoder (frozen normalised VGG-19 to relu4_1) + AdaIN op + decoder.

    `backend` picks the AdaIN implementation ("auto", "cpp", "triton", "reference"); everything
    else is ordinary PyTorch. Inputs are RGB in [0, 1], any H and W: the decoder's output is
    cropped back to the input's size (the ceil-mode pools round H and W up to a multiple of 8).
    """

    def __init__(self, vgg: nn.Sequential, decoder: nn.Sequential, backend: str = "auto",
                 eps: float = 1e-5):
        super().__init__()
        self.encoder = models.Encoder(vgg)
        self.decoder = decoder
        self.backend = backend
        self.eps = eps

    @classmethod
    def from_files(cls, vgg_path, decoder_path, backend: str = "auto") -> StyleTransfer:
        return cls(models.load_vgg(vgg_path), models.load_decoder(decoder_path), backend)

    # -- pieces -------------------------------------------------------------------------------
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder(image)

    def style_stats(self, style_image: torch.Tensor) -> StyleStats:
        """relu4_1 mean and std of a style image (cache these to reuse a style)."""
        return adain_ext.mean_std(self.encode(style_image), self.eps, backend=self.backend)

    def decode(self, features: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        out = self.decoder(features)
        if size is not None:
            out = out[..., : size[0], : size[1]]
        return out

    def transform(self, content_feat: torch.Tensor, stats: StyleStats, alpha: float = 1.0,
                  mask: torch.Tensor | None = None, bg_stats: StyleStats | None = None) -> torch.Tensor:
        """The AdaIN-layer target t for given style statistics (no decoding).

        With `mask` ((N, 1, H, W) or (1, 1, H, W), 1 = foreground, any resolution; resized to the
        features by nearest neighbour), the foreground and background are renormalised
        separately, each with its own content statistics, to `stats` and `bg_stats`.
        """
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        N, C = content_feat.shape[:2]
        mean, std = (s.expand(N, C, 1, 1) for s in stats)
        if mask is None:
            t = adain_ext.adain_affine(content_feat, mean, std, self.eps, backend=self.backend)
        else:
            if bg_stats is None:
                raise ValueError("a mask needs background style statistics too")
            bg = tuple(s.expand(N, C, 1, 1) for s in bg_stats)
            t = self._masked(content_feat, (mean, std), bg, mask)
        if alpha != 1.0:
            t = torch.lerp(content_feat, t, alpha)
        return t

    def _masked(self, feat: torch.Tensor, fg: StyleStats, bg: StyleStats,
                mask: torch.Tensor) -> torch.Tensor:
        N, C, H, W = feat.shape
        if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] not in (1, N):
            raise ValueError(f"mask must be (N or 1, 1, H, W), got {list(mask.shape)}")
        region = F.interpolate(mask.float(), size=(H, W), mode="nearest") > 0.5
        region = region.expand(N, 1, H, W).reshape(N, H * W)
        flat = feat.reshape(N, C, H * W)
        rows = []
        for n in range(N):
            row = torch.empty_like(flat[n])
            for inside, (mean, std) in ((region[n], fg), (~region[n], bg)):
                index = inside.nonzero().squeeze(1)
                if index.numel() == 0:
                    continue
                part = flat[n][:, index].reshape(1, C, -1, 1)
                # A one-pixel region has no variance: with unbiased=False it becomes the style mean.
                part = adain_ext.adain_affine(part, mean[n : n + 1], std[n : n + 1], self.eps,
                                              unbiased=index.numel() > 1, backend=self.backend)
                row[:, index] = part.reshape(C, -1)
            rows.append(row)
        out = torch.stack(rows).view(N, C, H, W)
        if feat.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    # -- whole pipeline -------------------------------------------------------------------------
    def forward(self, content: torch.Tensor, style: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        """T(c, s): one style per content (style (N or 1, 3, h, w)), through the fused op."""
        content_feat = self.encode(content)
        style_feat = self.encode(style)
        if style_feat.shape[0] != content_feat.shape[0]:
            style_feat = style_feat.expand(content_feat.shape[0], -1, -1, -1)
        check_scalars(alpha, self.eps)  # NaN/Inf would give a NaN image without an error
        t = adain_ext.adain(content_feat, style_feat, alpha, self.eps, backend=self.backend)
        return self.decode(t, content.shape[-2:])

    def stylize(self, content: torch.Tensor, styles: Sequence[StyleStats],
                weights: Sequence[float] | None = None, alpha: float = 1.0,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Stylizes a batch with precomputed style statistics.

        One style: plain AdaIN. Several with `weights`: interpolation by mixed statistics.
        With `mask`: exactly two styles, the first for the foreground (mask 1).
        """
        content_feat = self.encode(content)
        if mask is not None:
            if len(styles) != 2:
                raise ValueError(f"spatial control with a mask needs exactly 2 styles, got {len(styles)}")
            t = self.transform(content_feat, styles[0], alpha, mask=mask, bg_stats=styles[1])
        else:
            stats = styles[0] if len(styles) == 1 else mix_stats(styles, normalize_weights(weights, len(styles)))
            t = self.transform(content_feat, stats, alpha)
        return self.decode(t, content.shape[-2:])


# ---------------------------------------------------------------------------------------------
# Colour preservation

def coral(source: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """CORAL: recolours `source` (3, H, W) so its RGB mean and covariance equal `target`'s.

    x' = C_t^(1/2) C_s^(-1/2) (x - mu_s) + mu_t, with C = covariance + eps * I. The reference
    normalises by std and uses unscaled Gram matrices plus I, which skews the result when the two
    images have different sizes; this is the textbook transform. Computed in float64 (3x3
    eigendecompositions are free) and returned in source's dtype, clamped to [0, 1].
    """
    if source.dim() != 3 or target.dim() != 3 or source.shape[0] != 3 or target.shape[0] != 3:
        raise ValueError(f"coral takes two (3, H, W) images, got {list(source.shape)} and "
                         f"{list(target.shape)}")

    def moments(img):
        flat = img.reshape(3, -1).double()
        mu = flat.mean(1, keepdim=True)
        centred = flat - mu
        cov = centred @ centred.T / max(flat.shape[1] - 1, 1)
        return flat, mu, cov + eps * torch.eye(3, dtype=torch.float64, device=img.device)

    def sym_power(cov, power):
        vals, vecs = torch.linalg.eigh(cov)
        return vecs @ torch.diag(vals.clamp_min(1e-12) ** power) @ vecs.T

    src, mu_s, cov_s = moments(source)
    _, mu_t, cov_t = moments(target)
    out = sym_power(cov_t, 0.5) @ sym_power(cov_s, -0.5) @ (src - mu_s) + mu_t
    return out.reshape(source.shape).clamp(0, 1).to(source.dtype)
