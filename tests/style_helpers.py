"""Shared fixtures of the style-transfer tests: random weights in the published layouts, images.

No download ever happens: the "published" files here are random weights saved with the exact
key layout of vgg_normalised.pth / decoder.pth. Convs get a variance-preserving init so that
relu4_1 features keep a useful scale (PyTorch's default init shrinks them layer after layer,
and AdaIN of near-zero features would only test eps).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from adain_ext.style_transfer import models


def init_(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
    return module


def random_vgg(seed: int = 0, num_modules: int = models.ENCODER_MODULES) -> nn.Sequential:
    return init_(models.vgg_normalised(num_modules), seed)


def random_decoder(seed: int = 1) -> nn.Sequential:
    dec = init_(models.decoder(), seed)
    with torch.no_grad():  # keep the output near the [0, 1] image range
        dec[28].weight.mul_(0.1)
        dec[28].bias.fill_(0.5)
    return dec


def torchvision_vgg19_state(seed: int = 2) -> dict[str, torch.Tensor]:
    """A state dict with torchvision.models.vgg19()'s keys and shapes (random values)."""
    g = torch.Generator().manual_seed(seed)
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
           512, 512, 512, 512, "M"]
    state, index, cin = {}, 0, 3
    for v in cfg:
        if v == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(v, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5
        state[f"features.{index}.bias"] = torch.randn(v, generator=g) * 0.05
        index, cin = index + 2, v
    for i in (0, 3, 6):  # the classifier is ignored; tiny stand-ins keep the test light
        state[f"classifier.{i}.weight"] = torch.zeros(4, 4)
        state[f"classifier.{i}.bias"] = torch.zeros(4)
    return state


def random_image(h: int, w: int, seed: int) -> torch.Tensor:
    """A smooth-ish random RGB image in [0, 1] (noise alone has flat statistics)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, max(2, h // 8), max(2, w // 8), generator=g)
    img = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return (0.8 * img + 0.2 * torch.rand(1, 3, h, w, generator=g)).clamp(0, 1)[0]


def write_png(path: Path, image: torch.Tensor, mode: str = "RGB") -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = (image.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    img = Image.fromarray(rgb, "RGB")
    if mode == "RGBA":
        alpha = np.full(rgb.shape[:2], 255, np.uint8)
        alpha[: rgb.shape[0] // 2] = 0
        img = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    elif mode == "L":
        img = img.convert("L")
    elif mode == "I;16":
        gray = (image.mean(0).numpy() * 65535 + 0.5).astype(np.uint16)
        img = Image.fromarray(gray)  # 16-bit grayscale PNG
    img.save(path)
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for the modules that import it: these tiny convs gain nothing from more,
    and on a shared 2-core machine oversubscribed threads make them 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
