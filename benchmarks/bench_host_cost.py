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
import json
import os
import platform
import sys

import torch
import torch.nn.functional as F

import adain_ext
from adain_ext import bench_harness

SHAPES = ((1, 4, 4, 4), (8, 512, 4, 4))
MODES = ("no autograd", "forward with autograd", "forward + backward")


def providers(shape):
    """name -> f(x, mean, std, style) for one (N, C, H, W) shape: the ops and their peers."""
    return {
        "F.instance_norm(x)": lambda x, m, s, y: F.instance_norm(x),
        "F.instance_norm(x) * std + mean": lambda x, m, s, y: F.instance_norm(x) * s + m,
        "torch.ops.adain.affine(x, mean, std)": lambda x, m, s, y: torch.ops.adain.affine(x, m, s),
        "adain_ext.adain_affine(x, mean, std)": lambda x, m, s, y: adain_ext.adain_affine(x, m, s),
        "adain_ext.adain(x, style)": lambda x, m, s, y: adain_ext.adain(x, y),
        "reference adain (the paper's code)":
            lambda x, m, s, y: adain_ext.reference.adaptive_instance_normalization(x, y),
        "torch.add(x, x), for scale": lambda x, m, s, y: torch.add(x, x),
    }


def calls_for(shape, mode):
    gen = torch.Generator().manual_seed(0)
    grad = mode != "no autograd"
    N, C = shape[:2]
    x = torch.randn(shape, generator=gen).requires_grad_(grad)
    style = torch.randn(shape, generator=gen).requires_grad_(grad)
    mean = torch.randn(N, C, 1, 1, generator=gen).requires_grad_(grad)
    std = (torch.rand(N, C, 1, 1, generator=gen) + 0.5).requires_grad_(grad)
    grad_out = torch.randn(shape, generator=gen)
    calls = {}
    for name, fn in providers(shape).items():
        if mode == "forward + backward":
            def call(fn=fn):
                fn(x, mean, std, style).backward(grad_out)
        else:
            def call(fn=fn):
                fn(x, mean, std, style)
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
    names = list(providers(SHAPES[0]))
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
    table = "\n".join(lines)
    print(table)
    if args.md:
        with open(args.md, "w") as f:
            f.write(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "microseconds": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
