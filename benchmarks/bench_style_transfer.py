"""End-to-end style transfer: this project against the reference pipeline (pytest-benchmark).

    pytest benchmarks/bench_style_transfer.py --benchmark-only --benchmark-group-by=group
    pytest benchmarks/bench_style_transfer.py --benchmark-only --benchmark-json=benchmarks/results/style_transfer.json

Groups: "stylize <device> <batch>x<size>" (encode content AND style, AdaIN, decode) and
"train-step <device> <batch>x<size>" (forward, losses, backward, Adam step).
Providers:
  reference            naoto0804 test.py / net.py: eager fp32, contiguous, the paper's AdaIN
                       (train: style targets and AdaIN with autograd on, as net.py does)
  adain_ext-fp32       StyleTransfer / AdaINLoss: fused op, channels_last, inference_mode
  adain_ext-bf16       the same in bfloat16 (train: bf16 autocast); CUDA, or CPUs with AMX/AVX512-BF16
  adain_ext-fp16       CUDA only
  adain_ext-fp16-graph CUDA only: torch.compile(mode="reduce-overhead") (CUDA graphs), when
                       ADAIN_BENCH_COMPILE=1 (compilation takes minutes)
Sizes: CPU 1x256 (512 is minutes per round on a 2-core machine: ADAIN_BENCH_CPU_SIZE=512 to
override); CUDA 1x512 and 8x512 as in the issue. Weights are random (the published files are not
downloaded), which does not change the cost. Ratios are read from the table: reference mean /
provider mean, per group.
"""
from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch
from torch import nn

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import adain_ext  # noqa: F401
from adain_ext.style_transfer import models
from adain_ext.style_transfer.network import StyleTransfer
from adain_ext.style_transfer.reference import (
    ReferenceNet,
    reference_encoder,
    reference_style_transfer,
)
from adain_ext.style_transfer.train import AdaINLoss, train_step

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
CPU_SIZE = int(os.environ.get("ADAIN_BENCH_CPU_SIZE", "256"))
SHAPES = [(1, 512), (8, 512)] if CUDA else [(1, CPU_SIZE)]
TRAIN_SHAPES = [(8, 256)] if CUDA else [(2, 64)]
COMPILE = os.environ.get("ADAIN_BENCH_COMPILE") == "1"


def _bf16_ok() -> bool:
    if CUDA:
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


PROVIDERS = ["reference", "adain_ext-fp32"] + (["adain_ext-bf16"] if _bf16_ok() else []) + \
    (["adain_ext-fp16"] if CUDA else []) + (["adain_ext-fp16-graph"] if CUDA and COMPILE else [])


def _init(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                m.bias.zero_()
    return module


@pytest.fixture(scope="module")
def weights():
    return _init(models.vgg_normalised(), 0), _init(models.decoder(), 1)


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _run(benchmark, fn, rounds):
    def call():
        fn()
        _sync()

    benchmark.pedantic(call, rounds=rounds, warmup_rounds=1, iterations=1)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_stylize(benchmark, weights, provider, shape):
    batch, size = shape
    benchmark.group = f"stylize {DEVICE.type} {batch}x{size}"
    benchmark.extra_info.update(task="stylize", provider=provider, shape=[batch, size])
    vgg, dec = (copy.deepcopy(m).to(DEVICE) for m in weights)
    g = torch.Generator().manual_seed(0)
    content = torch.rand(batch, 3, size, size, generator=g).to(DEVICE)
    style = torch.rand(batch, 3, size, size, generator=g).to(DEVICE)
    rounds = 5 if CUDA else 3
    if provider == "reference":
        encoder = reference_encoder(vgg).eval()

        def fn():
            with torch.no_grad():
                return reference_style_transfer(encoder, dec, content, style)

        _run(benchmark, fn, rounds)
        return
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(provider.split("-")[1], torch.float16)
    net = StyleTransfer(vgg, dec).eval().to(DEVICE, dtype).to(memory_format=torch.channels_last)
    c = content.to(dtype).contiguous(memory_format=torch.channels_last)
    s = style.to(dtype).contiguous(memory_format=torch.channels_last)
    forward = net
    if provider.endswith("-graph"):
        forward = torch.compile(net, mode="reduce-overhead", fullgraph=True)
        with torch.inference_mode():
            for _ in range(3):
                forward(c, s)

    def fn():
        with torch.inference_mode():
            return forward(c, s)

    _run(benchmark, fn, rounds)


@pytest.mark.parametrize("provider", [p for p in PROVIDERS if not p.endswith("-graph")])
@pytest.mark.parametrize("shape", TRAIN_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_train_step(benchmark, weights, provider, shape):
    batch, size = shape
    benchmark.group = f"train-step {DEVICE.type} {batch}x{size}"
    benchmark.extra_info.update(task="train-step", provider=provider, shape=[batch, size])
    vgg, dec = (copy.deepcopy(m).to(DEVICE) for m in weights)
    vgg = vgg[:31]
    g = torch.Generator().manual_seed(0)
    content = torch.rand(batch, 3, size, size, generator=g).to(DEVICE)
    style = torch.rand(batch, 3, size, size, generator=g).to(DEVICE)
    if provider == "reference":
        net, autocast = ReferenceNet(vgg, dec), None
    else:
        net = AdaINLoss(vgg, dec).to(memory_format=torch.channels_last)
        content = content.contiguous(memory_format=torch.channels_last)
        style = style.contiguous(memory_format=torch.channels_last)
        autocast = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[provider.split("-")[1]]
    optimizer = torch.optim.Adam(net.decoder.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda") if autocast is torch.float16 else None

    def step():  # the training loop's step, paper weights (content 1, style 10)
        train_step(net, optimizer, content, style, 1.0, 10.0, autocast, scaler)

    _run(benchmark, step, 5 if CUDA else 3)
