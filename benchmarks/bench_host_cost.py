"""Host cost per call: what one call of each op costs the host (Python, dispatch, autograd) on
shapes so small that the kernel is not what is timed, against the PyTorch code it replaces.

On a GPU the kernel of a small StyleGAN layer takes a few microseconds, so the host decides those
layers. Three modes per call: no autograd (inputs without grad), forward with autograd (inputs
requiring grad: the graph is recorded), forward + backward. One thread, fp32, CPU; the providers
interleaved in several rounds, each one's best kept (adain_ext.bench_harness.host_cost).

    python benchmarks/bench_host_cost.py [--calls 1000] [--rounds 5] [--json PATH] [--md PATH]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import types

import torch
import torch.nn.functional as F

import adain_ext
from adain_ext import bench_harness

SHAPES = ((1, 4, 4, 4), (8, 512, 4, 4))
MODES = ("no autograd", "forward with autograd", "forward + backward")


def providers():
    """name -> f(inputs): the ops and their peers. inputs: x, mean, std, style (requiring grad in
    the autograd modes) and mean0, std0 (never requiring grad: F.instance_norm(x) has x as its
    only input, so the fair comparison of adain_affine with it has x as its only leaf too)."""
    return {
        "F.instance_norm(x)": lambda t: F.instance_norm(t.x),
        "F.instance_norm(x) * std + mean": lambda t: F.instance_norm(t.x) * t.std + t.mean,
        "torch.ops.adain.affine(x, mean, std)": lambda t: torch.ops.adain.affine(t.x, t.mean, t.std),
        "adain_ext.adain_affine(x, mean, std)": lambda t: adain_ext.adain_affine(t.x, t.mean, t.std),
        "adain_ext.adain_affine, grad for x only":
            lambda t: adain_ext.adain_affine(t.x, t.mean0, t.std0),
        "adain_ext.adain(x, style)": lambda t: adain_ext.adain(t.x, t.style),
        "reference adain (the paper's code)":
            lambda t: adain_ext.reference.adaptive_instance_normalization(t.x, t.style),
        "torch.add(x, x), for scale": lambda t: torch.add(t.x, t.x),
    }


def calls_for(shape, mode):
    gen = torch.Generator().manual_seed(0)
    grad = mode != "no autograd"
    N, C = shape[:2]
    t = types.SimpleNamespace(
        x=torch.randn(shape, generator=gen).requires_grad_(grad),
        style=torch.randn(shape, generator=gen).requires_grad_(grad),
        mean0=torch.randn(N, C, 1, 1, generator=gen),
        std0=torch.rand(N, C, 1, 1, generator=gen) + 0.5)
    t.mean, t.std = (s.clone().requires_grad_(grad) for s in (t.mean0, t.std0))
    grad_out = torch.randn(shape, generator=gen)
    calls = {}
    for name, fn in providers().items():
        if mode == "forward + backward":
            def call(fn=fn):
                fn(t).backward(grad_out)
        else:
            def call(fn=fn):
                fn(t)
        calls[name] = call
    return calls


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per sample")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--md", help="write the markdown table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    for shape in SHAPES:
        for mode in MODES:
            calls = calls_for(shape, mode)
            times = bench_harness.host_cost(calls, args.calls, args.rounds)
            results["x".join(map(str, shape)) + " " + mode] = {k: v * 1e6 for k, v in times.items()}
            print(f"{shape} {mode}: done", file=sys.stderr)
    names = list(providers())
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, one thread, "
               f"torch {torch.__version__}, Python {platform.python_version()}")
    lines = [f"Host cost per call, microseconds (best of {args.rounds} interleaved rounds of "
             f"{args.calls} calls; fp32, CPU, {machine})", ""]
    for shape in SHAPES:
        key = "x".join(map(str, shape))
        lines += [f"| {key} | " + " | ".join(MODES) + " |", "|---|" + "---|" * len(MODES)]
        for name in names:
            cells = [f"{results[f'{key} {mode}'][name]:.1f}" for mode in MODES]
            lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
        lines.append("")
    bench_harness.write_report("\n".join(lines), {"machine": machine, "microseconds": results},
                               args.md, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
