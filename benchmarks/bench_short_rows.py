"""Short rows on CPU, where per-call and per-row costs show: adain_ext.adain against
torch.compile(reference.adain), forward and forward + backward (gradients to content and style),
one thread, fp32, interleaved rounds in one process.

Fresh outputs are the other cost at these sizes: glibc serves each 1-2 MiB output with a new
mmap and every call faults it in again, unless its heap has been told to keep memory. So the run
is made twice, each in its own process: with the heap as it comes ("default"), and with glibc's
trim and mmap thresholds raised ("pinned": no provider pays page faults; the compiled reference's
best case). adain_ext reuses its own freed output blocks in both (csrc/cpu/output_cache.h).

    python benchmarks/bench_short_rows.py            # writes benchmarks/results/short_rows_cpu.{md,json}
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
SHAPES = [(16, 512, 8, 8), (16, 256, 128), (8, 512, 4, 4), (8, 512, 32, 32)]
PINNED = {"MALLOC_TRIM_THRESHOLD_": str(1 << 34), "MALLOC_MMAP_THRESHOLD_": str(1 << 32),
          "MALLOC_TOP_PAD_": str(1 << 30)}


def measure(rounds: int, calls: int) -> list[dict]:
    import torch

    import adain_ext
    from adain_ext import reference

    torch.set_num_threads(1)
    rows = []
    for shape in SHAPES:
        gen = torch.Generator().manual_seed(0)
        content = torch.randn(shape, generator=gen, requires_grad=True)
        style = torch.randn(shape, generator=gen, requires_grad=True)
        grad = torch.randn(shape, generator=gen)
        compiled = torch.compile(reference.adain, dynamic=False)

        def forward(fn):
            return lambda: fn(content.detach(), style.detach())

        def forward_backward(fn):
            return lambda: torch.autograd.grad(fn(content, style), (content, style), grad)

        runs = {("adain_ext", "forward"): forward(adain_ext.adain),
                ("compiled", "forward"): forward(compiled),
                ("adain_ext", "forward+backward"): forward_backward(adain_ext.adain),
                ("compiled", "forward+backward"): forward_backward(compiled)}
        for run in runs.values():
            run()
            run()
        samples = {key: [] for key in runs}
        keys = list(runs)
        for r in range(rounds):
            for key in (keys if r % 2 == 0 else keys[::-1]):
                start = time.perf_counter()
                for _ in range(calls):
                    runs[key]()
                samples[key].append((time.perf_counter() - start) / calls * 1e6)
        for mode in ("forward", "forward+backward"):
            ours = statistics.median(samples["adain_ext", mode])
            theirs = statistics.median(samples["compiled", mode])
            rows.append({"shape": "x".join(map(str, shape)), "mode": mode, "adain_ext_us": ours,
                         "compiled_us": theirs, "speedup": theirs / ours})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--md", default=os.path.join(RESULTS, "short_rows_cpu.md"))
    parser.add_argument("--json", default=os.path.join(RESULTS, "short_rows_cpu.json"))
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.rounds, args.calls)))
        return 0
    results = {}
    for heap, env in (("default", {}), ("pinned", PINNED)):
        done = subprocess.run([sys.executable, __file__, "--child", "--rounds", str(args.rounds),
                               "--calls", str(args.calls)], env={**os.environ, **env},
                              capture_output=True, text=True, check=True)
        results[heap] = json.loads(done.stdout.strip().splitlines()[-1])
    import platform

    import torch
    lines = [f"Short rows, CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} "
             f"cores, one thread), fp32, torch {torch.__version__}; median of {args.rounds} "
             f"interleaved rounds of {args.calls} calls, us; speedup = compiled / adain_ext", "",
             "| shape | mode | heap | adain_ext | torch.compile(reference) | speedup |",
             "|---|---|---|---|---|---|"]
    for i, row in enumerate(results["default"]):
        for heap in ("default", "pinned"):
            r = results[heap][i]
            lines.append(f"| {r['shape']} | {r['mode']} | {heap} | {r['adain_ext_us']:.0f} | "
                         f"{r['compiled_us']:.0f} | {r['speedup']:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    for path, content in ((args.md, text), (args.json, json.dumps(results, indent=1))):
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(content)
        os.replace(tmp, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
