"""Module forms of the ops."""
from __future__ import annotations

import torch
from torch import nn

from adain_ext import functional


class AdaIN(nn.Module):
    """AdaIN(content, style) = std(style) * (content - mean(content)) / std(content) + mean(style).

    alpha < 1 blends the result with the content (the paper's content-style trade-off).
    """

    def __init__(self, alpha: float = 1.0, eps: float = 1e-5, unbiased: bool = True,
                 backend: str = "auto"):
        super().__init__()
        self.alpha, self.eps, self.unbiased, self.backend = alpha, eps, unbiased, backend

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return functional.adain(content, style, self.alpha, self.eps, self.unbiased,
                                backend=self.backend)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, eps={self.eps}, unbiased={self.unbiased}, backend={self.backend!r}"
