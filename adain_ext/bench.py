"""`adain-ext bench`: checks the fused op against the reference on the available device, then times
it against its peers and prints a table of times and speedups.

Contenders (one setup factory, shared with benchmarks/):
  adain_ext        torch.ops.adain.fused (the compiled kernels)
  eager            the seed's reference AdaIN in eager PyTorch
  compile          torch.compile(reference)
  instance_norm    AdaIN through F.instance_norm (exact: unbiased statistics rescaled)
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import adain_ext
from adain_ext import reference

CPU_SHAPES = [(8, 512, 32, 32), (1, 512, 64, 64), (1, 256, 128, 128), (1, 64, 512, 512),
              (16, 512, 8, 8)]
CUDA_SHAPES = [(8, 512, 32, 32), (1, 512, 64, 64), (1, 512, 128, 128), (8, 64, 256, 256),
               (4, 512, 4, 4), (4, 32, 1024, 1024)]
EPS = 1e-5


def adain_instance_norm(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """AdaIN through one F.instance_norm call, with the same (unbiased) semantics as the seed.

    instance_norm divides by H*W and adds eps inside; sqrt(var_u + eps) equals
    sqrt(L / (L - 1)) * sqrt(var_b + eps * (L - 1) / L), so a rescaled eps and weight make it exact.
    (N, C) statistics become per-channel weights by folding N into C.
    """
    N, C, H, W = content.shape
    L = H * W
    style_var, style_mean = torch.var_mean(style, dim=(2, 3), correction=1)
    scale = (style_var + EPS).sqrt() * math.sqrt((L - 1) / L)
    out = F.instance_norm(content.reshape(1, N * C, H, W), weight=scale.reshape(-1),
                          bias=style_mean.reshape(-1), eps=EPS * (L - 1) / L)
    return out.reshape(N, C, H, W)


def contenders(device: torch.device) -> dict[str, Callable]:
    # One compiled reference serves every shape and grad mode: let it keep all its graphs rather
    # than fall back to eager after the default 8 (which would flatter the fused op).
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    found = {
        "eager": reference.adaptive_instance_normalization,
        "compile": torch.compile(reference.adaptive_instance_normalization, dynamic=False),
        "instance_norm": adain_instance_norm,
    }
    if adain_ext._extension.has_kernel(device.type):
        found = {"adain_ext": lambda c, s: torch.ops.adain.fused(c, s), **found}
    return found


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 25) -> float:
    """Median seconds per call; on CUDA, timed with events. The warm-up covers compilation and
    the few dozen calls the CPU allocator needs to settle after the allocation pattern changes."""
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def make_inputs(shape, device, dtype, channels_last=False, requires_grad=False, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    content = torch.randn(shape, generator=gen).to(device, dtype).contiguous(memory_format=fmt)
    style = (torch.randn(shape, generator=gen) * 2 + 1).to(device, dtype).contiguous(memory_format=fmt)
    return content.requires_grad_(requires_grad), style.requires_grad_(requires_grad)


# The runners drop their results: a harness that keeps the previous call's result alive while it
# makes the next one forces every call onto fresh, page-faulting memory, which a model whose
# activations and gradients are consumed and freed layer by layer never sees.


def forward_runner(fn, content, style):
    def run():
        with torch.no_grad():
            fn(content, style)
    return run


def backward_runner(fn, content, style):
    """Times only the backward: the graph is built once and replayed with retain_graph."""
    out = fn(content, style)
    grad = torch.randn_like(out)

    def run():
        torch.autograd.grad(out, (content, style), grad, retain_graph=True)
    return run


def check(device: torch.device, dtype: torch.dtype) -> float:
    """Max abs error of the fused op against the float64 reference on a representative shape."""
    content, style = make_inputs((2, 64, 33, 31), device, dtype)
    out = adain_ext.adain(content, style)
    expected = reference.adain(content.double(), style.double())
    return (out.double() - expected).abs().max().item()


def run(shapes, device, dtype, repeats, backward, channels_last=False, log=print):
    rows = []
    runners = contenders(device)
    for shape in shapes:
        row = {"shape": list(shape), "dtype": str(dtype).split(".")[-1], "channels_last": channels_last}
        for direction in ["forward", "backward"] if backward else ["forward"]:
            content, style = make_inputs(shape, device, dtype, channels_last,
                                         requires_grad=direction == "backward")
            make = forward_runner if direction == "forward" else backward_runner
            timed = {name: make(fn, content, style) for name, fn in runners.items()}
            # Two passes, the second in reverse order, keeping each contender's lower median:
            # whoever runs first after a change of shape pays the allocator's settling (on CPU,
            # up to 1.5x on one contender's median here), so no contender gets a fixed place.
            for names in (list(timed), list(reversed(timed))):
                for name in names:
                    t = time_call(timed[name], device, repeats)
                    key = f"{direction}:{name}"
                    row[key] = min(row.get(key, t), t)
        rows.append(row)
        log(format_row(row, runners, backward))
    return rows


def format_row(row, runners, backward) -> str:
    parts = [f"{'x'.join(map(str, row['shape'])):>16}"]
    for direction in ["forward", "backward"] if backward else ["forward"]:
        ours = row.get(f"{direction}:adain_ext")
        for name in runners:
            t = row[f"{direction}:{name}"]
            cell = f"{t * 1e3:8.3f}"
            if ours is not None and name != "adain_ext":
                cell += f" ({t / ours:4.1f}x)"
            parts.append(f"{cell:>17}")
    return " ".join(parts)


def header(runners, backward) -> str:
    cols = [f"{'shape':>16}"]
    for direction in ["forward", "backward"] if backward else ["forward"]:
        cols += [f"{direction[:3] + ' ' + name:>17}" for name in runners]
    return " ".join(cols)


def geomean(values):
    return math.exp(sum(map(math.log, values)) / len(values))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="adain-ext bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    parser.add_argument("--shapes", default=None,
                        help="semicolon-separated NxCxHxW list (default: the device's benchmark shapes)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-backward", dest="backward", action="store_false")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(";")]
    else:
        shapes = CUDA_SHAPES if device.type == "cuda" else CPU_SHAPES
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"adain-ext bench on {device.type} ({machine}), {args.dtype}, torch {torch.__version__}")
    backend = adain_ext.resolve_backend("auto", device)
    print(f"backend 'auto' resolves to {backend!r}")
    error = check(device, dtype)
    tolerance = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 2e-1}[dtype]
    status = "ok" if error <= tolerance else "MISMATCH"
    print(f"check: fused op vs float64 reference, max abs error {error:.2e} ({status})")
    if status != "ok":
        return 1
    runners = contenders(device)
    print("median ms per call (speedup of adain_ext over each peer)")
    print(header(runners, args.backward))
    rows = run(shapes, device, dtype, args.repeats, args.backward, args.channels_last)
    if "adain_ext" in runners:
        for direction in ["forward", "backward"] if args.backward else ["forward"]:
            ratios = ", ".join(
                f"{name} {geomean([r[f'{direction}:{name}'] / r[f'{direction}:adain_ext'] for r in rows]):.2f}x"
                for name in runners if name != "adain_ext")
            print(f"geometric-mean speedup, {direction}: {ratios}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": machine, "torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0
