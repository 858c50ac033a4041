"""GPU benchmark of the fused AdaIN op against what PyTorch users have today.

    python benchmarks/gpu_bench.py --out out/           # the full suite on the visible GPU
    python benchmarks/gpu_bench.py --device cpu --quick  # a smoke test of this script, no GPU

For every shape x dtype x memory format it times forward (content, style -> out) and backward
(grad_out -> grad content, grad style) of each provider, reports time, effective GB/s (the bytes
the op must move at least: forward reads content and style and writes out; backward reads
grad_out, content and style and writes both gradients) and that as a % of the device-to-device
copy bandwidth measured in the same run. Small shapes are timed as CUDA-graph replays (launch
overhead is what they are made of), the others with triton.testing.do_bench (median, L2 flushed).

Providers live in PROVIDERS (name -> factory(device) -> callable(content, style) -> out, or None
when unavailable). Add yours with register_provider(), from a module given with --plugin:

    # my_providers.py
    import gpu_bench
    gpu_bench.register_provider("mine", lambda device: my_adain)

A benchmark, not a test: it checks this op against the reference once per configuration (the
max error is in the JSON) but never fails on speed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

sys.modules.setdefault("gpu_bench", sys.modules[__name__])  # plugins can `import gpu_bench`

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import adain_ext
from adain_ext import reference

EPS = 1e-5

# VGG relu4_1; style-loss statistics in training; StyleGAN-like.
GPU_SHAPES = [
    (8, 512, 32, 32),
    (1, 512, 64, 64),
    (1, 512, 128, 128),
    (8, 64, 256, 256),
    (8, 128, 128, 128),
    (8, 256, 64, 64),
    (4, 512, 4, 4),
    (4, 512, 16, 16),
    (4, 256, 64, 64),
    (4, 64, 256, 256),
    (4, 32, 1024, 1024),
    # Other ranks: speech/sequence features (N, C, T) and video/volume features (N, C, D, H, W).
    (16, 256, 128),
    (16, 256, 2048),
    (2, 64, 16, 64, 64),
]
QUICK_SHAPES = [(2, 8, 16, 16), (1, 4, 64, 64), (4, 64, 4, 4), (4, 16, 256), (1, 8, 4, 16, 16)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LAYOUTS = ("contiguous", "channels_last")  # channels last: C innermost, in every rank
GRAPH_REPLAY_BELOW = 16 * 2**20  # bytes moved: below this, time CUDA-graph replays
BIG_SHAPE_BYTES = 64 * 2**20  # the "shapes moving 64 MB or more"

# ---- Providers.

Provider = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PROVIDERS: dict[str, Callable[[str], Provider | None]] = {}


def register_provider(name: str, factory: Callable[[str], Provider | None]) -> None:
    """factory(device) returns callable(content, style) -> AdaIN output, or None if unavailable."""
    PROVIDERS[name] = factory


def _seed_eager(device):
    return lambda c, s: reference.adaptive_instance_normalization(c, s)


def _compiled(device):
    # Static shapes: one compilation per configuration (dynamo is reset between configurations).
    return torch.compile(reference.adaptive_instance_normalization, dynamic=False)


def _style_stats(style):
    var, mean = torch.var_mean(style, dim=tuple(range(2, style.dim())), keepdim=True, correction=1)
    return mean, (var + EPS).sqrt()


def _instance_norm(device):
    # instance_norm normalises with the biased variance: the same cost, slightly other numbers.
    def run(c, s):
        mean, std = _style_stats(s)
        return F.instance_norm(c, eps=EPS) * std + mean

    return run


def _group_norm(device):
    def run(c, s):
        mean, std = _style_stats(s)
        return F.group_norm(c, c.shape[1], eps=EPS) * std + mean

    return run


def _this_op(device):
    if not adain_ext.HAS_CPP or not adain_ext._extension.has_kernel(torch.device(device).type):
        return None
    return lambda c, s: adain_ext.adain(c, s, backend="cpp")


def _triton(device):
    probe = torch.randn(1, 2, 4, 4, device=device)
    try:
        adain_ext.adain(probe, probe, backend="triton")
    except Exception:  # noqa: BLE001  (not written yet, or no Triton for this device)
        return None
    return lambda c, s: adain_ext.adain(c, s, backend="triton")


register_provider("adain_ext", _this_op)
register_provider("triton", _triton)
register_provider("eager", _seed_eager)
register_provider("torch.compile", _compiled)
register_provider("instance_norm", _instance_norm)
register_provider("group_norm", _group_norm)
BASELINES = ("eager", "torch.compile", "instance_norm", "group_norm")

# ---- Timing.


class Timer:
    def __init__(self, device: str, quick: bool):
        self.cuda = device.startswith("cuda")
        self.quick = quick

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def time_ms(self, fn: Callable[[], object], graph: bool) -> tuple[float, str]:
        """Median milliseconds of one call of fn, and how it was measured."""
        fn()
        fn()
        self.sync()
        if not self.cuda:
            reps = 3 if self.quick else 20
            samples = []
            for _ in range(reps):
                start = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - start) * 1e3)
            return statistics.median(samples), "perf_counter"
        if graph:
            try:
                return self._graph_ms(fn), "cuda-graph"
            except Exception:  # noqa: BLE001  (not capturable, or a provider syncs: fall back)
                torch.cuda.synchronize()
        import triton.testing

        rep = 10 if self.quick else 25  # ms of repetitions: the suite must fit gpu_check's budget
        return float(
            triton.testing.do_bench(fn, warmup=5, rep=rep, return_mode="median")
        ), "do_bench"

    def _graph_ms(self, fn, calls_per_graph: int = 20, replays: int = 10) -> float:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls_per_graph):
                fn()
        graph.replay()
        torch.cuda.synchronize()
        samples = []
        for _ in range(replays):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / calls_per_graph)
        del graph
        return statistics.median(samples)


def copy_bandwidth_gbs(device: str, timer: Timer, quick: bool) -> float:
    """Device-to-device copy: (read + write) bytes per second, same timer as the providers."""
    numel = (2**22 if quick else 2**28) // 4  # 4 MiB / 256 MiB of fp32
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    ms, _ = timer.time_ms(lambda: dst.copy_(src), graph=False)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


# ---- One configuration.


def make_inputs(shape, dtype, layout, device, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    content = torch.randn(shape, generator=gen).mul_(2).add_(0.5)
    style = torch.randn(shape, generator=gen).mul_(3).sub_(1)
    return in_layout(content.to(device=device, dtype=dtype), layout), in_layout(
        style.to(device=device, dtype=dtype), layout)


def in_layout(t, layout):
    """t contiguous, or channels last (C innermost: channels_last, channels_last_3d, (N, T, C))."""
    if layout == "contiguous":
        return t.contiguous()
    order = [0, *range(2, t.dim()), 1]
    return t.permute(order).contiguous().permute([order.index(d) for d in range(t.dim())])


def time_direction(timer, fn, direction, content, style, grad_out, graph):
    """(ms, how it was timed, forward+backward ms or None) of one provider and direction."""
    if direction == "forward":
        ms, how = timer.time_ms(lambda: fn(content, style), graph=graph)
        return ms, how, None
    c = content.detach().requires_grad_(True)
    s = style.detach().requires_grad_(True)
    full_ms, how = timer.time_ms(lambda: torch.autograd.grad(fn(c, s), (c, s), grad_out), graph)
    fwd_ms, _ = timer.time_ms(lambda: fn(content, style), graph=graph)
    # Backward alone = (forward + backward) - forward.
    return max(full_ms - fwd_ms, 1e-6), how, full_ms


def bench_config(
    shape,
    dtype_name,
    layout_name,
    device,
    providers,
    timer,
    copy_gbs,
    directions,
    compile_budget_left: Callable[[], bool],
):
    dtype, layout = DTYPES[dtype_name], layout_name
    content, style = make_inputs(shape, dtype, layout, device)
    grad_out = torch.randn_like(content)
    itemsize = content.element_size()
    nbytes = {
        "forward": (2 * content.numel() + style.numel()) * itemsize,
        "backward": (3 * content.numel() + 2 * style.numel()) * itemsize,
    }
    records = []
    max_err = None
    if "adain_ext" in providers:
        out = providers["adain_ext"](content, style)
        ref = reference.adain(content.double(), style.double())
        max_err = (out.double() - ref).abs().max().item()
    for name, fn in providers.items():
        if name == "torch.compile":
            if not compile_budget_left():
                for direction in directions:
                    records.append(dict(provider=name, direction=direction, skipped="time budget"))
                continue
            torch._dynamo.reset()
            fn = PROVIDERS[name](device)
        for direction in directions:
            rec = {"provider": name, "direction": direction}
            graph = nbytes[direction] < GRAPH_REPLAY_BELOW
            try:
                ms, how, full_ms = time_direction(
                    timer, fn, direction, content, style, grad_out, graph
                )
            except Exception as error:  # noqa: BLE001  (a provider that cannot run this case)
                rec["error"] = f"{type(error).__name__}: {error}"[:300]
                records.append(rec)
                continue
            if full_ms is not None:
                rec["full_ms"] = full_ms
            gbs = nbytes[direction] / (ms * 1e-3) / 1e9
            rec.update(ms=ms, gbs=gbs, pct_copy=100 * gbs / copy_gbs, timing=how)
            records.append(rec)
    for rec in records:
        rec.update(
            shape=list(shape),
            dtype=dtype_name,
            layout=layout_name,
            bytes=nbytes[rec["direction"]],
            max_err_vs_reference=max_err,
        )
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
        ours, triton_ms = times("adain_ext", direction), times("triton", direction)
        ratios = [triton_ms[k] / ours[k] for k in ours.keys() & triton_ms.keys()]
        if ratios:
            summary[f"{direction}: triton / adain_ext time (worst)"] = max(ratios)
            summary[f"{direction}: triton / adain_ext time (geomean)"] = geomean(ratios)
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
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke test)")
    parser.add_argument("--quick", action="store_true", help="small shapes, few repetitions")
    parser.add_argument(
        "--out", default=os.environ.get("OUT", "out"), help="folder for JSON and markdown"
    )
    parser.add_argument(
        "--providers", default=None, help="comma-separated subset of " + ", ".join(PROVIDERS)
    )
    parser.add_argument(
        "--plugin", action="append", default=[], help="module that registers providers"
    )
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--layouts", default="contiguous,channels_last")
    parser.add_argument("--directions", default="forward,backward")
    parser.add_argument("--shapes", default=None, help="e.g. 8x512x32x32,1x512x64x64")
    parser.add_argument(
        "--compile-budget-s",
        type=float,
        default=float(os.environ.get("COMPILE_BUDGET_S", "200")),
        help="stop timing torch.compile (compilation is slow) after this many seconds",
    )
    parser.add_argument(
        "--time-budget-s",
        type=float,
        default=float(os.environ.get("TIME_BUDGET_S", "inf")),
        help="start no new configuration after this many seconds",
    )
    args = parser.parse_args(argv)
    for module in args.plugin:
        __import__(module)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_bench: no CUDA GPU visible (use --device cpu --quick for a smoke test)")
    quick = args.quick or not device.startswith("cuda")
    if not device.startswith("cuda"):
        torch.set_num_threads(1)  # a smoke test: stable numbers beat fast ones on a shared CPU
    torch._dynamo.config.cache_size_limit = 256
    shapes = (
        [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        if args.shapes
        else QUICK_SHAPES
        if quick
        else GPU_SHAPES
    )
    wanted = args.providers.split(",") if args.providers else list(PROVIDERS)
    providers = {}
    for name in wanted:
        fn = PROVIDERS[name](device) if name != "torch.compile" else "compiled per configuration"
        if fn is None:
            print(f"gpu_bench: provider {name} unavailable on {device}, skipped")
        else:
            providers[name] = fn
    timer = Timer(device, quick)
    copy_gbs = copy_bandwidth_gbs(device, timer, quick)
    started = time.time()

    def compile_left():
        return time.time() - started < args.compile_budget_s

    # Each shape in both dtypes and both layouts back to back (the channels_last / contiguous
    # ratio, fp32 and bf16 from the first shapes on); past --time-budget-s no new configuration
    # starts, so a capped run still reports. The JSON and markdown are rewritten after every
    # configuration: a run killed at its time limit leaves what it measured.
    configs = [
        (shape, dtype, layout)
        for shape in shapes
        for dtype in args.dtypes.split(",")
        for layout in args.layouts.split(",")
    ]
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
    )
    os.makedirs(args.out, exist_ok=True)
    records, skipped = [], []

    def write_outputs(done: int):
        meta.update(configs_done=done, seconds=time.time() - started, not_run=skipped)
        write_json_atomically(
            os.path.join(args.out, "gpu_bench.json"),
            dict(meta=meta, summary=summarize(records), records=records),
        )
        with open(os.path.join(args.out, "gpu_bench.md"), "w") as f:
            f.write(markdown(meta, records, summarize(records)))

    for done, (shape, dtype, layout) in enumerate(configs):
        if time.time() - started > args.time_budget_s:
            skipped.append(f"{'x'.join(map(str, shape))} {dtype} {layout}")
            continue
        recs = bench_config(
            shape,
            dtype,
            layout,
            device,
            providers,
            timer,
            copy_gbs,
            args.directions.split(","),
            compile_left,
        )
        records += recs
        times = " ".join(
            f"{r['provider']}:{r['direction'][:3]}={r['ms']:.4f}" for r in recs if "ms" in r
        )
        print(f"{'x'.join(map(str, shape)):>16} {dtype} {layout:<13} ms {times}", flush=True)
        write_outputs(done + 1)
    if skipped:
        print(f"gpu_bench: time budget reached, {len(skipped)} configurations not run")
    write_outputs(len(configs) - len(skipped))
    summary = summarize(records)
    print(f"\nwrote {args.out}/gpu_bench.json and gpu_bench.md ({meta['seconds']:.0f} s)")
    for k, v in summary.items():
        print(f"  {k}: {v:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
