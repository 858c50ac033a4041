"""StyleGAN-like generator: one forward+backward step, fused AdaIN against the unfused formulations.

Providers (the same weights, switched with Generator.set_impl):
    fused          adain_ext's affine op (the C++/CUDA kernels under backend="auto")
    reference      adain_ext.reference.adain_affine: the oracle's math written out in PyTorch
    instance_norm  F.instance_norm(x) * scale + shift: what StyleGAN ports write

CPU (pytest-benchmark, well under a minute on 2 cores; report.py makes the table):
    pytest benchmarks/bench_stylegan.py --benchmark-only --benchmark-json=out/stylegan.json
    python benchmarks/report.py out/stylegan.json
GPU check (256x256, batch 8, StyleGAN's channel counts), from a script or the command line:
    from benchmarks.bench_stylegan import cuda_step_times; print(cuda_step_times())
    python benchmarks/bench_stylegan.py --device cuda
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "stylegan_like", os.path.join(ROOT, "examples", "stylegan_like.py"))
stylegan_like = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stylegan_like)

IMPLS = ("fused", "reference", "instance_norm")

# Small enough for a 2-core CPU; the channel pyramid keeps StyleGAN's shape (wide at 4x4, narrow
# at full resolution), so big feature maps have few channels.
CPU_CONFIG = dict(resolution=64, batch=2, z_dim=128, w_dim=128, mapping_layers=4,
                  channel_base=1024, channel_max=64)
# The GPU target: 256x256, batch 8, StyleGAN's channels (512 up to 32x32, 64 at 256x256).
CUDA_CONFIG = dict(resolution=256, batch=8, z_dim=512, w_dim=512, mapping_layers=8,
                   channel_base=16384, channel_max=512)


def make_step(impl: str, device: str = "cpu", config: dict | None = None, seed: int = 0):
    """A closure running one generator forward+backward step (gradients zeroed each time)."""
    config = dict(config or CPU_CONFIG)
    batch = config.pop("batch")
    torch.manual_seed(seed)
    g = stylegan_like.Generator(noise_mode="const", impl=impl, **config).to(device)
    z = torch.randn(batch, g.z_dim, device=device)

    def step():
        g.zero_grad(set_to_none=True)
        return stylegan_like.step(g, z)

    return step


def compare(device: str = "cpu", config: dict | None = None, warmup: int = 2, rounds: int = 5,
            impls=IMPLS) -> dict:
    """Median step time (ms) per provider, measured round-robin so that background load hits
    every provider alike, and each provider's speedup of the fused one."""
    steps = {impl: make_step(impl, device, config) for impl in impls}
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for step in steps.values():
        for _ in range(warmup):
            step()
    sync()
    times = {impl: [] for impl in impls}
    for _ in range(rounds):
        for impl, step in steps.items():
            start = time.perf_counter()
            step()
            sync()
            times[impl].append(1e3 * (time.perf_counter() - start))
    result = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
              "config": dict(config or CPU_CONFIG),
              "ms": {impl: statistics.median(t) for impl, t in times.items()}}
    result["fused_speedup"] = {impl: result["ms"][impl] / result["ms"]["fused"]
                               for impl in impls if impl != "fused"}
    return result


def cuda_step_times(resolution: int = 256, batch: int = 8, warmup: int = 3,
                    rounds: int = 10) -> dict:
    """The GPU check: generator forward+backward at resolution x resolution, fused vs unfused.
    Target: fused_speedup["reference"] >= 1.3 at 256x256, batch 8."""
    config = dict(CUDA_CONFIG, resolution=resolution, batch=batch)
    return compare("cuda", config, warmup, rounds)


@pytest.mark.parametrize("impl", IMPLS)
def bench_stylegan_step_cpu(benchmark, impl):
    benchmark.group = "stylegan step cpu {resolution}px batch {batch}".format(**CPU_CONFIG)
    # The fields benchmarks/report.py tabulates (adain_ext = the fused provider).
    res = CPU_CONFIG["resolution"]
    benchmark.extra_info.update(provider="adain_ext" if impl == "fused" else impl,
                                direction="generator fwd+bwd",
                                shape=[CPU_CONFIG["batch"], 3, res, res])
    step = make_step(impl)
    step()  # warm-up outside the measurement
    benchmark.pedantic(step, rounds=5, iterations=1)


def _print(result: dict) -> None:
    print(f"device: {result['device']}  config: {result['config']}")
    for impl, ms in result["ms"].items():
        speedup = result["fused_speedup"].get(impl)
        faster = f"   fused is {speedup:.2f}x faster" if speedup else ""
        print(f"  {impl:14s} {ms:9.1f} ms{faster}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="generator step: fused vs unfused AdaIN")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (CPU); on a shared "
                        "machine 1 thread avoids OpenMP barriers waiting on descheduled threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        res = cuda_step_times(args.resolution or 256, args.batch or 8, rounds=args.rounds)
    else:
        cfg = dict(CPU_CONFIG, **{k: v for k, v in (("resolution", args.resolution),
                                                    ("batch", args.batch)) if v})
        res = compare("cpu", cfg, rounds=args.rounds)
    _print(res)
