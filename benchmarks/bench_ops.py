"""pytest-benchmark suite for the fused op against its peers, forward and backward, one group per
shape and direction. Run it (and turn the JSON into a ratio table) with:

    pytest benchmarks/bench_ops.py --benchmark-json=out/cpu.json
    python benchmarks/report.py out/cpu.json > benchmarks/results/cpu.md

The providers, shapes, inputs and runners are adain-ext bench's (adain_ext/bench_harness.py);
pytest-benchmark's clock times them, around a synchronising call on a GPU.
Shapes: ADAIN_BENCH_SHAPES="8x512x32x32;1x64x512x512" overrides the device's defaults;
ADAIN_BENCH_DEVICE=cuda runs on the GPU.
"""
from __future__ import annotations

import os

import pytest
import torch

from adain_ext import bench_harness as harness

DEVICE = torch.device(os.environ.get("ADAIN_BENCH_DEVICE", "cpu"))
DTYPE = getattr(torch, os.environ.get("ADAIN_BENCH_DTYPE", "float32"))
if os.environ.get("ADAIN_BENCH_SHAPES"):
    SHAPES = [tuple(map(int, s.split("x"))) for s in os.environ["ADAIN_BENCH_SHAPES"].split(";")]
else:
    SHAPES = harness.default_shapes(DEVICE)
PROVIDERS = harness.available(DEVICE, [harness.OURS, *harness.DEFAULT_PEERS])


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("direction", harness.DIRECTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def bench_adain(benchmark, shape, direction, provider):
    benchmark.group = f"{direction} {'x'.join(map(str, shape))}"
    benchmark.extra_info.update(provider=provider, direction=direction, shape=list(shape),
                                dtype=str(DTYPE), device=str(DEVICE))
    content, style = harness.make_inputs(shape, DEVICE, DTYPE, requires_grad=direction == "backward")
    run = harness.synchronized(harness.RUNNERS[direction](PROVIDERS[provider], content, style), DEVICE)
    # The first few dozen calls after the allocation pattern changes pay page faults while the
    # allocator and the kernel settle (seen: 10x slower medians here); warm up past them.
    benchmark.pedantic(run, rounds=int(os.environ.get("ADAIN_BENCH_ROUNDS", 20)), warmup_rounds=25,
                       iterations=1)
