"""A small StyleGAN-like generator (Karras et al. 2019) built on adain_ext.stylegan.StyleModulation.

    mapping:   z -> pixel norm -> `mapping_layers` x (EqualizedLinear + leaky ReLU, lr x 0.01) -> w
    synthesis: learned constant 4x4 -> [noise, bias, leaky ReLU, AdaIN(w)] -> conv 3x3 -> [...]
               (the bracket is one call of the fused op: noise, bias and leaky ReLU its prologue)
               then per resolution 8, 16, ..., `resolution`:
               upsample x2 -> conv 3x3 -> [...] -> conv 3x3 -> [...]
               -> 1x1 conv to RGB

`impl` switches every AdaIN between the fused op ("fused") and the unfused formulations
("reference": adain_ext.reference.adain_affine, "instance_norm": F.instance_norm * scale + shift),
so the same weights run either way.

    python examples/stylegan_like.py --resolution 256 --batch 8 --device cuda --impl fused
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

try:
    import adain_ext  # noqa: F401
except ImportError:  # run from a source checkout without installing: use the checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from adain_ext.stylegan import EqualizedLinear, StyleModulation  # noqa: E402


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """StyleGAN's nf(): 512 channels up to 32x32, halving per octave after (base 16384)."""
    return max(1, min(channel_base // resolution, channel_max))


class EqualizedConv2d(nn.Module):
    """3x3 (or 1x1) conv with the equalized learning rate, He gain sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 gain: float = math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.padding)


class NoiseInjection(nn.Module):
    """x + strength[c] * noise[n, 1, h, w]. noise_mode "random" draws new noise every call,
    "const" uses a fixed buffer (deterministic: tests, compile), "none" adds nothing."""

    def __init__(self, channels: int, resolution: int, noise_mode: str):
        super().__init__()
        self.noise_mode = noise_mode
        self.strength = nn.Parameter(torch.zeros(channels))  # StyleGAN starts without noise
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution))

    def sample(self, x: torch.Tensor) -> torch.Tensor | None:
        """The noise for x (N, C, H, W): (N, 1, H, W) in x's dtype, or None in mode "none"."""
        if self.noise_mode == "none":
            return None
        if self.noise_mode == "const":
            return self.noise_const.to(x.dtype).expand(x.shape[0], -1, -1, -1)
        return torch.randn_like(x[:, :1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = self.sample(x)
        return x if noise is None else x + noise * self.strength.view(1, -1, 1, 1).to(x.dtype)


class Epilogue(nn.Module):
    """What StyleGAN does after every conv: noise, bias, leaky ReLU, then AdaIN with w."""

    def __init__(self, channels, resolution, w_dim, noise_mode, **modulation):
        super().__init__()
        self.noise = NoiseInjection(channels, resolution, noise_mode)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.adain = StyleModulation(channels, w_dim, **modulation)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # leaky_relu(x + strength * noise + bias, 0.2), then AdaIN: one kernel with the fused op
        # (its prologue), as written with the others.
        noise = self.noise.sample(x)
        return self.adain(x, w, noise=noise,
                          noise_weight=None if noise is None else self.noise.strength,
                          bias=self.bias, pre_activation="leaky_relu", pre_negative_slope=0.2)


class SynthesisBlock(nn.Module):
    def __init__(self, in_channels, out_channels, resolution, w_dim, noise_mode, **modulation):
        super().__init__()
        self.conv0 = EqualizedConv2d(in_channels, out_channels, 3)
        self.epi0 = Epilogue(out_channels, resolution, w_dim, noise_mode, **modulation)
        self.conv1 = EqualizedConv2d(out_channels, out_channels, 3)
        self.epi1 = Epilogue(out_channels, resolution, w_dim, noise_mode, **modulation)

    def forward(self, x, w0, w1):
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = self.epi0(self.conv0(x), w0)
        return self.epi1(self.conv1(x), w1)


class MappingNetwork(nn.Module):
    def __init__(self, z_dim: int, w_dim: int, layers: int, lr_multiplier: float = 0.01):
        super().__init__()
        dims = [z_dim] + [w_dim] * layers
        self.layers = nn.ModuleList(EqualizedLinear(a, b, lr_multiplier=lr_multiplier)
                                    for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)  # pixel norm
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.2)
        return x


class SynthesisNetwork(nn.Module):
    def __init__(self, w_dim: int, resolution: int, channel_base: int, channel_max: int,
                 noise_mode: str, **modulation):
        super().__init__()
        if resolution < 4 or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
        nf = lambda res: channels_at(res, channel_base, channel_max)  # noqa: E731
        self.const = nn.Parameter(torch.ones(1, nf(4), 4, 4))
        self.epi_const = Epilogue(nf(4), 4, w_dim, noise_mode, **modulation)
        self.conv4 = EqualizedConv2d(nf(4), nf(4), 3)
        self.epi4 = Epilogue(nf(4), 4, w_dim, noise_mode, **modulation)
        self.blocks = nn.ModuleList()
        res = 8
        while res <= resolution:
            self.blocks.append(SynthesisBlock(nf(res // 2), nf(res), res, w_dim, noise_mode,
                                              **modulation))
            res *= 2
        self.to_rgb = EqualizedConv2d(nf(resolution), 3, 1, gain=1.0)
        self.num_ws = 2 + 2 * len(self.blocks)

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        """ws: (N, num_ws, w_dim), one w per AdaIN (style mixing), or (N, w_dim) for all."""
        if ws.dim() == 2:
            ws = ws.unsqueeze(1).expand(-1, self.num_ws, -1)
        x = self.const.expand(ws.shape[0], -1, -1, -1)
        x = self.epi_const(x, ws[:, 0])
        x = self.epi4(self.conv4(x), ws[:, 1])
        for i, block in enumerate(self.blocks):
            x = block(x, ws[:, 2 + 2 * i], ws[:, 3 + 2 * i])
        return self.to_rgb(x)


class Generator(nn.Module):
    """z (N, z_dim) -> image (N, 3, resolution, resolution).

    impl:       the implementation of every AdaIN (StyleModulation): "fused", "cpp", "triton",
                "reference" or "instance_norm" (adain_ext.stylegan.IMPLS).
    semantics:  "stylegan" (biased variance, eps 1e-8) or "adain" (unbiased, eps 1e-5).
    noise_mode: "random" | "const" | "none".
    """

    def __init__(self, resolution: int = 256, z_dim: int = 512, w_dim: int = 512,
                 mapping_layers: int = 8, channel_base: int = 16384, channel_max: int = 512,
                 noise_mode: str = "random", impl: str = "fused", semantics: str = "stylegan"):
        super().__init__()
        self.z_dim = z_dim
        self.mapping = MappingNetwork(z_dim, w_dim, mapping_layers)
        self.synthesis = SynthesisNetwork(w_dim, resolution, channel_base, channel_max, noise_mode,
                                          impl=impl, semantics=semantics)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.synthesis(self.mapping(z))

    def set_impl(self, impl: str) -> Generator:
        """Switches every AdaIN to impl (adain_ext.stylegan.IMPLS), same weights."""
        for m in self.modules():
            if isinstance(m, StyleModulation):
                m.impl = impl
        return self


def step(generator: Generator, z: torch.Tensor) -> torch.Tensor:
    """One training-like step: forward, a scalar loss, backward (gradients everywhere)."""
    loss = generator(z).square().mean()
    loss.backward()
    return loss.detach()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=256, help="up to 1024")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--channel-base", type=int, default=16384)
    parser.add_argument("--channel-max", type=int, default=512)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--impl", default="fused", choices=("fused", "reference", "instance_norm"))
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    g = Generator(args.resolution, channel_base=args.channel_base, channel_max=args.channel_max,
                  impl=args.impl).to(args.device)
    z = torch.randn(args.batch, g.z_dim, device=args.device)
    for i in range(args.steps):
        start = time.perf_counter()
        loss = step(g, z)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        print(f"step {i}: loss {loss.item():.4f}, {1e3 * (time.perf_counter() - start):.1f} ms")


if __name__ == "__main__":
    main()
