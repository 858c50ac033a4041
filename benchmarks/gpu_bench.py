"""GPU benchmark of the fused AdaIN op against what PyTorch users have today.

    python benchmarks/gpu_bench.py --out out/           # the full suite on the visible GPU
    python benchmarks/gpu_bench.py --device cpu --quick  # a smoke test of this script, no GPU

For every shape x dtype x memory format it times forward (content, style -> out) and backward
(grad_out -> grad content, grad style) of each provider, reports time, effective GB/s (the bytes
the op must move at least: forward reads content and style and writes out; backward reads
grad_out, content and style and writes both gradients) and that as a % of the device-to-device
copy bandwidth measured in the same run. Small shapes are timed as CUDA-graph replays (launch
overhead is what they are made of), the others call by call with CUDA events, the L2 cache flushed
before each call (median); the timer, the providers, the shapes and the inputs are those of
adain_ext/bench_harness.py, whose table says what each provider name times.

The suite's providers are PROVIDERS (name -> harness Provider); --providers takes any other of the
harness's table too.

The eager providers run first, over every configuration; the compiled ones (torch.compile) last,
in the share of the time budget --compile-budget-s keeps for them, each configuration compiled
once (its first forward and its first forward + backward, timed apart as compile_s) and those
graphs reused for the timed calls. gpu_bench.json and gpu_bench.md are rewritten after every
provider of every configuration, so a run killed at any point leaves what it measured.

A benchmark, not a test: it checks this op against the reference once per configuration (the
max error is in the JSON) but never fails on speed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from adain_ext import bench_harness as harness
from adain_ext import reference
from adain_ext.bench_harness import OURS, Provider

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LAYOUTS = ("contiguous", "channels_last")  # channels last: C innermost, in every rank
GRAPH_REPLAY_BELOW = 16 * 2**20  # bytes moved: below this, time CUDA-graph replays
BIG_SHAPE_BYTES = 64 * 2**20  # the "shapes moving 64 MB or more"

# ---- Providers: the suite's, from the harness's table.

PROVIDERS: dict[str, Provider] = {name: harness.PROVIDERS[name] for name in (
    OURS, "adain_ext_triton", "eager_reference", "compiled_reference", "instance_norm_biased",
    "group_norm_biased", "adain_ext_triton_compiled")}
# The summary's "speedup vs" lines: every provider of the table that is not one of adain_ext's.
BASELINES = tuple(name for name in harness.PROVIDERS if not name.startswith(OURS))


def _provider(name: str) -> Provider | None:
    return PROVIDERS.get(name) or harness.PROVIDERS.get(name)


# ---- Timing: the harness's timer, chosen per call size.


def time_ms(fn: Callable[[], object], device: str, quick: bool, graph: bool) -> tuple[float, str]:
    """Median milliseconds of one call of fn, and how it was measured."""
    if not device.startswith("cuda"):
        return harness.time_call(fn, device, repeats=3 if quick else 20, warmup=2) * 1e3, "perf_counter"
    if graph:
        try:
            return harness.time_graph_replays(fn, device) * 1e3, "cuda-graph"
        except Exception:  # noqa: BLE001  (not capturable, or a provider syncs: fall back)
            torch.cuda.synchronize()
    # About 10 ms (quick) or 25 ms of calls, each after an L2 flush: the suite must fit gpu_check's
    # budget, and a large tensor must come from memory, as it would in a model.
    repeats = harness.calls_within(fn, device, 0.010 if quick else 0.025)
    seconds = harness.time_call(fn, device, repeats, warmup=max(1, repeats // 5), flush_l2=True)
    return seconds * 1e3, "cuda-events"


def copy_bandwidth_gbs(device: str, quick: bool) -> float:
    """Device-to-device copy: (read + write) bytes per second, same timer as the providers."""
    numel = (2**22 if quick else 2**28) // 4  # 4 MiB / 256 MiB of fp32
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    ms, _ = time_ms(lambda: dst.copy_(src), device, quick, graph=False)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


# ---- One configuration.


def time_direction(fn, direction, content, style, grad_out, device, quick, graph):
    """(ms, how it was timed, forward+backward ms or None) of one provider and direction."""
    forward = harness.forward_runner(fn, content, style)
    if direction == "forward":
        ms, how = time_ms(forward, device, quick, graph)
        return ms, how, None
    full_ms, how = time_ms(harness.forward_backward_runner(fn, content, style, grad_out), device,
                           quick, graph)
    fwd_ms, _ = time_ms(forward, device, quick, graph)
    # Backward alone = (forward + backward) - forward.
    return max(full_ms - fwd_ms, 1e-6), how, full_ms


class Config:
    """One shape x dtype x memory format: its inputs, the bytes each direction must move and this
    op's max error against the float64 reference (None without adain_ext)."""

    def __init__(self, shape, dtype_name, layout_name, device, available):
        self.shape, self.dtype, self.layout = tuple(shape), dtype_name, layout_name
        self.content, self.style = harness.make_inputs(
            shape, device, DTYPES[dtype_name], channels_last=layout_name == "channels_last")
        self.grad_out = torch.randn_like(self.content)
        itemsize = self.content.element_size()
        self.nbytes = {
            "forward": (2 * self.content.numel() + self.style.numel()) * itemsize,
            "backward": (3 * self.content.numel() + 2 * self.style.numel()) * itemsize,
        }
        self.max_err = None
        if OURS in available:
            out = available[OURS](self.content, self.style)
            ref = reference.adain(self.content.double(), self.style.double())
            self.max_err = (out.double() - ref).abs().max().item()

    @property
    def label(self) -> str:
        return f"{'x'.join(map(str, self.shape))} {self.dtype} {self.layout}"

    def record(self, **fields) -> dict:
        return dict(fields, shape=list(self.shape), dtype=self.dtype, layout=self.layout,
                    bytes=self.nbytes[fields["direction"]], max_err_vs_reference=self.max_err)


def first_call_s(run: Callable[[], object], device: str) -> float:
    """Seconds of one call of run, synchronized: for a compiled provider its compilation for
    this configuration (Inductor's, and the autotuning of the kernels it generates)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench_provider(config: Config, name: str, fn, device, quick, copy_gbs, directions,
                   compiled: bool = False) -> list[dict]:
    """The records of one provider on one configuration, one per direction. A compiled provider
    first compiles (its first forward, then its first forward + backward call), timed apart as
    compile_s; the timed calls after it reuse those graphs (the forward's also serves the
    backward direction's forward-only subtraction)."""
    records = []
    for direction in directions:
        rec = {"provider": name, "direction": direction}
        graph = config.nbytes[direction] < GRAPH_REPLAY_BELOW
        try:
            if compiled:
                runner = (harness.forward_runner(fn, config.content, config.style)
                          if direction == "forward" else
                          harness.forward_backward_runner(fn, config.content, config.style,
                                                          config.grad_out))
                rec["compile_s"] = first_call_s(runner, device)
            ms, how, full_ms = time_direction(fn, direction, config.content, config.style,
                                              config.grad_out, device, quick, graph)
        except Exception as error:  # noqa: BLE001  (a provider that cannot run this case)
            rec["error"] = f"{type(error).__name__}: {error}"[:300]
            records.append(config.record(**rec))
            continue
        if full_ms is not None:
            rec["full_ms"] = full_ms
        gbs = config.nbytes[direction] / (ms * 1e-3) / 1e9
        rec.update(ms=ms, gbs=gbs, pct_copy=100 * gbs / copy_gbs, timing=how)
        records.append(config.record(**rec))
    return records


# ---- Reporting.


def geomean(values):
    values = [v for v in values if v and v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def summarize(records):
    """Ratios the issue asks for, computed from the records."""

    def times(provider, direction, **where):
        out = {}
        for r in records:
            if (
                r["provider"] == provider
                and r["direction"] == direction
                and "ms" in r
                and all(r[k] == v for k, v in where.items())
            ):
                out[(tuple(r["shape"]), r["dtype"], r["layout"])] = r["ms"]
        return out

    summary = {}
    for direction in ("forward", "backward"):
        ours = times("adain_ext", direction)
        for base in BASELINES:
            theirs = times(base, direction)
            keys = ours.keys() & theirs.keys()
            if keys:
                summary[f"{direction}: speedup vs {base} (geomean)"] = geomean(
                    [theirs[k] / ours[k] for k in keys]
                )
    # The target: the Triton backend within 10% of the CUDA C++ one on every shape, or faster.
    for direction in ("forward", "backward"):
        ours, triton_ms = times(OURS, direction), times("adain_ext_triton", direction)
        ratios = [triton_ms[k] / ours[k] for k in ours.keys() & triton_ms.keys()]
        if ratios:
            summary[f"{direction}: adain_ext_triton / adain_ext time (worst)"] = max(ratios)
            summary[f"{direction}: adain_ext_triton / adain_ext time (geomean)"] = geomean(ratios)
    big = [
        r["pct_copy"]
        for r in records
        if r["provider"] == "adain_ext"
        and r["direction"] == "forward"
        and "pct_copy" in r
        and r["bytes"] >= BIG_SHAPE_BYTES
    ]
    if big:
        summary["forward: min % of copy bandwidth, shapes >= 64 MB"] = min(big)
    cl, contig = (
        times("adain_ext", "forward", layout="channels_last"),
        times("adain_ext", "forward", layout="contiguous"),
    )
    pairs = [
        (cl[k], contig[(k[0], k[1], "contiguous")])
        for k in cl
        if (k[0], k[1], "contiguous") in contig
    ]
    if pairs:
        summary["forward: channels_last / contiguous time (worst)"] = max(a / b for a, b in pairs)
        summary["forward: channels_last / contiguous time (geomean)"] = geomean(
            [a / b for a, b in pairs]
        )
    return summary


def markdown(meta, records, summary):
    lines = [
        f"# adain_ext GPU benchmark: {meta['device_name']}",
        "",
        f"torch {meta['torch']}, CUDA {meta['cuda']}, copy bandwidth {meta['copy_gbs']:.0f} GB/s "
        f"(read + write), {meta['when']}",
        "",
        f"Eager providers: {meta.get('configs_done', '?')} of {meta.get('configs', '?')} "
        f"configurations in {meta.get('eager_seconds', 0):.0f} s. Compiled providers: "
        f"{meta.get('compiled_configs_done', 0)} configurations, compilation "
        f"{meta.get('compile_seconds', 0):.0f} s (first calls, apart) + timing "
        f"{meta.get('compiled_run_seconds', 0):.0f} s.",
        "",
        "## Summary",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.3g} |" for k, v in summary.items()]
    providers = list(dict.fromkeys(r["provider"] for r in records))
    for direction in ("forward", "backward"):
        lines += [
            "",
            f"## {direction} (ms; adain_ext GB/s and % of copy)",
            "",
            "| shape | dtype | layout | " + " | ".join(providers) + " | GB/s | % copy |",
            "|---|---|---|" + "---|" * (len(providers) + 2),
        ]
        configs = list(dict.fromkeys((tuple(r["shape"]), r["dtype"], r["layout"]) for r in records))
        for shape, dtype, layout in configs:
            row = {
                r["provider"]: r
                for r in records
                if r["direction"] == direction
                and (tuple(r["shape"]), r["dtype"], r["layout"]) == (shape, dtype, layout)
            }
            cells = []
            for p in providers:
                r = row.get(p, {})
                cells.append(
                    f"{r['ms']:.4f}"
                    if "ms" in r
                    else ("skip" if "skipped" in r else "err" if "error" in r else "-")
                )
            ours = row.get("adain_ext", {})
            lines.append(
                f"| {'x'.join(map(str, shape))} | {dtype} | {layout} | "
                + " | ".join(cells)
                + f" | {ours.get('gbs', float('nan')):.0f} | {ours.get('pct_copy', float('nan')):.0f} |"
            )
    return "\n".join(lines) + "\n"


def write_json_atomically(path: str, data) -> None:
    """Writes a whole file or none: a reader (or a kill) never sees half of one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog="providers (--providers; those of the suite first):\n"
        + harness.describe([*PROVIDERS, *(n for n in harness.PROVIDERS if n not in PROVIDERS)]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke test)")
    parser.add_argument("--quick", action="store_true", help="small shapes, few repetitions")
    parser.add_argument(
        "--out", default=os.environ.get("OUT", "out"), help="folder for JSON and markdown"
    )
    parser.add_argument(
        "--providers",
        default=None,
        help="comma-separated providers, listed below (default: the suite's: "
        + ", ".join(PROVIDERS) + ")",
    )
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--layouts", default="contiguous,channels_last")
    parser.add_argument("--directions", default="forward,backward")
    parser.add_argument("--shapes", default=None, help="e.g. 8x512x32x32,1x512x64x64")
    parser.add_argument(
        "--compile-budget-s",
        type=float,
        default=float(os.environ.get("COMPILE_BUDGET_S", "200")),
        help="the seconds kept for the compiled providers (compiled_reference, "
        "adain_ext_triton_compiled), which run after every eager provider: no compiled "
        "configuration starts past them; their compile time is reported apart",
    )
    parser.add_argument(
        "--time-budget-s",
        type=float,
        default=float(os.environ.get("TIME_BUDGET_S", "inf")),
        help="start no new configuration after this many seconds, the compiled providers' "
        "--compile-budget-s included (the eager ones get the rest)",
    )
    args = parser.parse_args(argv)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_bench: no CUDA GPU visible (use --device cpu --quick for a smoke test)")
    quick = args.quick or not device.startswith("cuda")
    if not device.startswith("cuda"):
        torch.set_num_threads(1)  # a smoke test: stable numbers beat fast ones on a shared CPU
    shapes = (
        [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        if args.shapes
        else harness.QUICK_SHAPES
        if quick
        else harness.GPU_SUITE_SHAPES
    )
    wanted = args.providers.split(",") if args.providers else list(PROVIDERS)
    unknown = [name for name in wanted if _provider(name) is None]
    if unknown:
        sys.exit(f"gpu_bench: --providers: no provider {', '.join(unknown)} (see --help)")
    providers = {_provider(name).name: _provider(name) for name in wanted}
    # Eager providers first, over every configuration; the compiled ones last, in the time
    # --compile-budget-s keeps for them: a compiled provider is built (its probe compiles) only
    # when its phase starts, so no compilation happens before the clocks below start.
    eager = {name: p for name, p in providers.items() if not p.compiled}
    compiled = {name: p for name, p in providers.items() if p.compiled}
    available = {}
    for name, provider in eager.items():
        fn = provider.on(device)
        if fn is None:
            print(f"gpu_bench: provider {name} unavailable on {device}, skipped")
        else:
            available[name] = fn
    copy_gbs = copy_bandwidth_gbs(device, quick)
    started = time.time()
    # The eager phase ends where the compiled providers' share of the time budget begins.
    eager_until = started + (args.time_budget_s - args.compile_budget_s if compiled
                             else args.time_budget_s)

    # Each shape in both dtypes and both layouts back to back (the channels_last / contiguous
    # ratio, fp32 and bf16 from the first shapes on); past its phase's budget no new
    # configuration starts, so a capped run still reports. The JSON and markdown are rewritten
    # after every provider of every configuration: a run killed at any point leaves what it
    # measured.
    configs = [
        (shape, dtype, layout)
        for shape in shapes
        for dtype in args.dtypes.split(",")
        for layout in args.layouts.split(",")
    ]
    directions = args.directions.split(",")
    cuda = device.startswith("cuda")
    meta = dict(
        device=device,
        device_name=torch.cuda.get_device_name()
        if cuda
        else platform.processor() or platform.machine(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        copy_gbs=copy_gbs,
        when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        quick=quick,
        configs=len(configs),
        eager_providers=list(available),
        compiled_providers=list(compiled),
        eager_seconds=0.0,
        compiled_configs_done=0,
        compile_seconds=0.0,  # first calls of the compiled providers (and their probes)
        compiled_run_seconds=0.0,  # the compiled phase less its compilations
    )
    os.makedirs(args.out, exist_ok=True)
    records, skipped, compiled_skipped = [], [], []
    done = 0

    def write_outputs():
        meta.update(configs_done=done, seconds=time.time() - started, not_run=skipped,
                    compiled_not_run=compiled_skipped)
        write_json_atomically(
            os.path.join(args.out, "gpu_bench.json"),
            dict(meta=meta, summary=summarize(records), records=records),
        )
        with open(os.path.join(args.out, "gpu_bench.md"), "w") as f:
            f.write(markdown(meta, records, summarize(records)))

    def show(config, recs):
        times = " ".join(
            f"{r['provider']}:{r['direction'][:3]}={r['ms']:.4f}" for r in recs if "ms" in r
        )
        compile_s = sum(r.get("compile_s", 0) for r in recs)
        print(f"{config.label:>30} ms {times}"
              + (f" (compile {compile_s:.1f} s)" if compile_s else ""), flush=True)

    max_errs = {}
    for key in configs:
        if time.time() > eager_until:
            skipped.append(f"{'x'.join(map(str, key[0]))} {key[1]} {key[2]}")
            continue
        config = Config(*key, device, available)
        max_errs[key] = config.max_err
        recs = []
        for name, fn in available.items():
            new = bench_provider(config, name, fn, device, quick, copy_gbs, directions)
            recs += new
            records += new
            write_outputs()
        done += 1
        meta["eager_seconds"] = time.time() - started
        show(config, recs)
        write_outputs()
    config = None  # its tensors go before the compiled phase makes its own
    if compiled:
        phase_start = time.time()
        compiled_until = min(phase_start + args.compile_budget_s, started + args.time_budget_s)
        compiled_fns = {}
        for name, provider in compiled.items():
            t0 = time.perf_counter()
            fn = provider.on(device)  # adain_ext_triton_compiled: its probe compiles a small shape
            meta["compile_seconds"] += time.perf_counter() - t0
            if fn is None:
                print(f"gpu_bench: provider {name} unavailable on {device}, skipped")
            else:
                compiled_fns[name] = fn
        for key in configs:
            if key not in max_errs or not compiled_fns or time.time() > compiled_until:
                compiled_skipped.append(f"{'x'.join(map(str, key[0]))} {key[1]} {key[2]}")
                continue
            config = Config(*key, device, {})
            config.max_err = max_errs[key]
            recs = []
            for name, fn in compiled_fns.items():
                new = bench_provider(config, name, fn, device, quick, copy_gbs, directions,
                                     compiled=True)
                recs += new
                records += new
                meta["compile_seconds"] += sum(r.get("compile_s", 0) for r in new)
                meta["compiled_run_seconds"] = (time.time() - phase_start
                                                - meta["compile_seconds"])
                write_outputs()
            meta["compiled_configs_done"] += 1
            show(config, recs)
        for name, provider in compiled.items():  # what the compile budget left out, as before
            if name not in compiled_fns:
                continue
            for label in compiled_skipped:
                for direction in directions:
                    shape, dtype, layout = label.split()
                    records.append(dict(provider=name, direction=direction, skipped="time budget",
                                        shape=[int(v) for v in shape.split("x")], dtype=dtype,
                                        layout=layout))
    write_outputs()
    if skipped:
        print(f"gpu_bench: time budget reached, {len(skipped)} configurations not run")
    summary = summarize(records)
    print(f"\nwrote {args.out}/gpu_bench.json and gpu_bench.md ({meta['seconds']:.0f} s: eager "
          f"{meta['eager_seconds']:.0f} s; compiled providers {meta['compiled_configs_done']} "
          f"configurations, compile {meta['compile_seconds']:.0f} s + timed "
          f"{meta['compiled_run_seconds']:.0f} s)")
    for k, v in summary.items():
        print(f"  {k}: {v:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
