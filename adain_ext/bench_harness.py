"""The benchmark harness: the providers, the shapes, the inputs, the runners and the timer behind
`adain-ext bench` (adain_ext/bench.py), the pytest-benchmark suite (benchmarks/bench_ops.py) and
the GPU benchmark (benchmarks/gpu_bench.py). Those keep only their own options and output.

Providers: each name means one computation in every front end, table, JSON file and chart.

  name                       what is timed
  adain_ext                  the compiled C++/CUDA kernels (torch.ops.adain.fused)
  adain_ext_triton           the Triton kernels (adain_ext.triton), eager
  adain_ext_triton_compiled  the same under torch.compile(fullgraph=True): what Inductor adds or
                             removes around them (CUDA)
  eager_reference            the reference AdaIN (the paper's code) in eager PyTorch
  compiled_reference         torch.compile(eager_reference)
  instance_norm_exact        AdaIN through one F.instance_norm call, rescaled to the reference's
                             unbiased statistics: exact
  instance_norm_biased       F.instance_norm(content) * style std + style mean: what
                             nn.InstanceNorm code does; the content's biased variance, so
                             slightly other numbers
  group_norm_biased          the same through F.group_norm(groups=C)

Timing (`time_call`): warm-up calls, then per call the device's own clock: CUDA events on a GPU,
perf_counter around the call and a synchronize elsewhere; the median. `measure` interleaves the
providers in two rounds, the second in reverse order, and keeps each one's lower median.
`time_graph_replays` times CUDA-graph replays, for calls too small to time one at a time.
"""
from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from adain_ext import backends, reference

EPS = 1e-5
AdainFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# ---- Shapes: one table, each shape with the sets it belongs to. A set keeps the table's order,
# which matters: a run cut short by a time budget has measured the first shapes of its set.
#   cpu        adain-ext bench and bench_ops.py on CPU
#   cuda       adain-ext bench and bench_ops.py on a GPU
#   gpu_suite  gpu_bench.py's full suite
#   quick      gpu_bench.py --quick (and its CPU smoke run): small shapes of every rank
_SHAPE_TABLE = (
    # Images (N, C, H, W): VGG relu4_1 sizes, style-loss statistics in training, StyleGAN-like.
    ((8, 512, 32, 32), ("cpu", "cuda", "gpu_suite")),
    ((1, 512, 64, 64), ("cpu", "cuda", "gpu_suite")),
    ((1, 256, 128, 128), ("cpu",)),
    ((1, 64, 512, 512), ("cpu",)),
    ((16, 512, 8, 8), ("cpu",)),
    ((1, 512, 128, 128), ("cuda", "gpu_suite")),
    ((8, 64, 256, 256), ("cuda", "gpu_suite")),
    ((8, 128, 128, 128), ("gpu_suite",)),
    ((8, 256, 64, 64), ("gpu_suite",)),
    ((4, 512, 4, 4), ("cuda", "gpu_suite")),
    ((4, 512, 16, 16), ("gpu_suite",)),
    ((4, 256, 64, 64), ("gpu_suite",)),
    ((4, 64, 256, 256), ("gpu_suite",)),
    ((4, 32, 1024, 1024), ("cuda", "gpu_suite")),
    # Speech/sequence features (N, C, T) and video/volume features (N, C, D, H, W).
    ((16, 256, 128), ("cpu", "cuda", "gpu_suite")),
    ((16, 256, 2048), ("cpu", "cuda", "gpu_suite")),
    ((1, 64, 16, 64, 64), ("cpu",)),
    ((2, 64, 16, 64, 64), ("cuda", "gpu_suite")),
    # Small, every rank: a smoke run of the scripts.
    ((2, 8, 16, 16), ("quick",)),
    ((1, 4, 64, 64), ("quick",)),
    ((4, 64, 4, 4), ("quick",)),
    ((4, 16, 256), ("quick",)),
    ((1, 8, 4, 16, 16), ("quick",)),
)
SHAPE_SETS = ("cpu", "cuda", "gpu_suite", "quick")


def shapes(shape_set: str) -> list[tuple[int, ...]]:
    """The shapes of one set (SHAPE_SETS), in the table's order."""
    if shape_set not in SHAPE_SETS:
        raise ValueError(f"shape set must be one of {SHAPE_SETS}, got {shape_set!r}")
    return [shape for shape, sets in _SHAPE_TABLE if shape_set in sets]


CPU_SHAPES = shapes("cpu")
CUDA_SHAPES = shapes("cuda")
GPU_SUITE_SHAPES = shapes("gpu_suite")
QUICK_SHAPES = shapes("quick")


def default_shapes(device: torch.device) -> list[tuple[int, ...]]:
    """adain-ext bench's and bench_ops.py's shapes for a device."""
    return CUDA_SHAPES if torch.device(device).type == "cuda" else CPU_SHAPES


# ---- The AdaIN formulations the providers time, besides adain_ext's own kernels.


def eager_reference(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """The reference code in eager PyTorch: the paper's adaptive_instance_normalization for images
    (its calc_mean_std takes 4-D only), the same math over every trailing dim for other ranks."""
    if content.dim() == 4:
        return reference.adaptive_instance_normalization(content, style)
    return reference.adain(content, style)


def instance_norm_exact(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """AdaIN through one F.instance_norm call, with the same (unbiased) semantics as the reference.

    instance_norm divides by L (the row length, H*W for images) and adds eps inside;
    sqrt(var_u + eps) equals sqrt(L / (L - 1)) * sqrt(var_b + eps * (L - 1) / L), so a rescaled eps
    and weight make it exact. (N, C) statistics become per-channel weights by folding N into C.
    """
    N, C, *trailing = content.shape
    L = math.prod(trailing)
    style_var, style_mean = torch.var_mean(style, dim=tuple(range(2, style.dim())), correction=1)
    scale = (style_var + EPS).sqrt() * math.sqrt((L - 1) / L)
    out = F.instance_norm(content.reshape(1, N * C, *trailing), weight=scale.reshape(-1),
                          bias=style_mean.reshape(-1), eps=EPS * (L - 1) / L)
    return out.reshape(content.shape)


def _style_statistics(style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    var, mean = torch.var_mean(style, dim=tuple(range(2, style.dim())), keepdim=True, correction=1)
    return mean, (var + EPS).sqrt()


def instance_norm_biased(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """What nn.InstanceNorm code does: the content normalised with its biased variance (the same
    cost as AdaIN, slightly other numbers), then the style's statistics applied."""
    mean, std = _style_statistics(style)
    return F.instance_norm(content, eps=EPS) * std + mean


def group_norm_biased(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """instance_norm_biased through F.group_norm with one group per channel."""
    mean, std = _style_statistics(style)
    return F.group_norm(content, content.shape[1], eps=EPS) * std + mean


# ---- The provider table.


@dataclass(frozen=True)
class Provider:
    name: str
    summary: str
    make: Callable[[torch.device], AdainFn | None]  # the callable on a device; None: not here
    biased: bool = False  # computes the content's biased variance, not the reference's unbiased
    compiled: bool = False  # built with torch.compile: compiles per shape, which takes seconds

    def on(self, device) -> AdainFn | None:
        """The callable on device (a torch.device or its name), or None where it cannot run."""
        return self.make(torch.device(device))


def _allow_recompiles():
    # One compiled function serves every shape and grad mode: let it keep all its graphs rather
    # than fall back to eager after the default 8 (which would flatter adain_ext).
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)


def _probed(build: Callable[[], AdainFn], device: torch.device, name: str) -> AdainFn | None:
    """build() when it builds, runs on device and matches the reference on a small odd shape, else
    None (with the reason on stderr): Triton may fail to import, or a kernel to build, there."""
    try:
        fn = build()
        gen = torch.Generator(device="cpu").manual_seed(0)
        content = torch.randn(2, 3, 9, 7, generator=gen).to(device)
        style = (torch.randn(2, 3, 5, 6, generator=gen) * 2 + 1).to(device)
        error = (fn(content, style).double() - reference.adain(content.double(), style.double()))
        if error.abs().max() < 1e-3:
            return fn
        why = f"max abs error {error.abs().max().item():.2e} against the reference"
    except Exception as exception:  # noqa: BLE001  (no Triton, a kernel that fails to build)
        why = f"{type(exception).__name__}: {exception}".splitlines()[0]
    print(f"bench_harness: {name} is unavailable on {device}: {why}", file=sys.stderr)
    return None


def _adain_ext_cpp(device: torch.device) -> AdainFn | None:
    if backends.REGISTRY["cpp"].why_unavailable(device.type) is not None:
        return None
    return lambda content, style: torch.ops.adain.fused(content, style, 1.0, EPS, True)


def _triton_adain() -> AdainFn:
    ops = backends.ops("triton")
    return lambda content, style: ops.adain(content, style, 1.0, EPS, True)


def _adain_ext_triton(device: torch.device) -> AdainFn | None:
    if backends.REGISTRY["triton"].why_unavailable(device.type) is not None:
        return None
    return _probed(_triton_adain, device, "adain_ext_triton")


def _adain_ext_triton_compiled(device: torch.device) -> AdainFn | None:
    if device.type != "cuda" or backends.REGISTRY["triton"].why_unavailable("cuda") is not None:
        return None  # on CPU the Triton ops are opaque to compile (interpreter): nothing to see
    _allow_recompiles()
    return _probed(lambda: torch.compile(_triton_adain(), fullgraph=True, dynamic=False), device,
                   "adain_ext_triton_compiled")


def _compiled_reference(device: torch.device) -> AdainFn:
    _allow_recompiles()
    return torch.compile(eager_reference, dynamic=False)  # static shapes: one graph per shape


def _always(fn: AdainFn) -> Callable[[torch.device], AdainFn]:
    return lambda device: fn


PROVIDERS: dict[str, Provider] = {p.name: p for p in (
    Provider("adain_ext", "the compiled C++/CUDA kernels (torch.ops.adain.fused)", _adain_ext_cpp),
    Provider("adain_ext_triton", "the Triton kernels (adain_ext.triton), eager", _adain_ext_triton),
    Provider("adain_ext_triton_compiled", "the Triton kernels under torch.compile(fullgraph=True); "
             "CUDA only", _adain_ext_triton_compiled, compiled=True),
    Provider("eager_reference", "the reference AdaIN (the paper's code) in eager PyTorch",
             _always(eager_reference)),
    Provider("compiled_reference", "torch.compile(eager_reference)", _compiled_reference,
             compiled=True),
    Provider("instance_norm_exact", "AdaIN through one F.instance_norm call, rescaled to "
             "unbiased statistics: exact", _always(instance_norm_exact)),
    Provider("instance_norm_biased", "F.instance_norm(content) * style std + style mean: the "
             "content's biased variance", _always(instance_norm_biased), biased=True),
    Provider("group_norm_biased", "instance_norm_biased through F.group_norm(groups=C)",
             _always(group_norm_biased), biased=True),
)}
OURS = "adain_ext"  # the provider the others are compared with
# Whom adain-ext bench and bench_ops.py time adain_ext against by default.
DEFAULT_PEERS = ("eager_reference", "compiled_reference", "instance_norm_exact")


def describe(names) -> str:
    """The providers `names`, one line each with what it times (for a front end's --help)."""
    return "\n".join(f"  {name:<26} {PROVIDERS[name].summary}" for name in names)


def available(device: torch.device, names=None) -> dict[str, AdainFn]:
    """{name: callable} of the providers (all, or `names` in that order) that run on device."""
    found = {}
    for name in (PROVIDERS if names is None else names):
        fn = PROVIDERS[name].on(device)
        if fn is not None:
            found[name] = fn
    return found


# ---- Inputs and runners.


def in_layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """t contiguous, or channels last in any rank (C innermost: channels_last for images,
    channels_last_3d for volumes, (N, T, C) memory for sequences)."""
    if not channels_last:
        return t.contiguous()
    order = [0, *range(2, t.dim()), 1]
    return t.permute(order).contiguous().permute([order.index(d) for d in range(t.dim())])


def make_inputs(shape, device, dtype, channels_last=False, requires_grad=False, seed=0):
    """(content, style) of one shape, the same values on every device for a seed."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    content = in_layout(torch.randn(shape, generator=gen).to(device, dtype), channels_last)
    style = in_layout((torch.randn(shape, generator=gen) * 2 + 1).to(device, dtype), channels_last)
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


def forward_backward_runner(fn, content, style, grad_out):
    """The forward and the backward, a new graph each call (a CUDA graph can capture it whole)."""
    content = content.detach().requires_grad_(True)
    style = style.detach().requires_grad_(True)

    def run():
        torch.autograd.grad(fn(content, style), (content, style), grad_out)
    return run


RUNNERS = {"forward": forward_runner, "backward": backward_runner}
DIRECTIONS = tuple(RUNNERS)


# ---- The timer.

L2_FLUSH_BYTES = 256 * 2**20  # written before each call when asked: above any GPU's L2 cache


def synchronize(device: torch.device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def synchronized(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """fn followed by a synchronize, for a clock outside this module (pytest-benchmark's) that
    must not stop while the device still works."""
    if torch.device(device).type != "cuda":
        return fn

    def call():
        result = fn()
        synchronize(device)
        return result
    return call


def time_call(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 25,
              flush_l2: bool = False) -> float:
    """Median seconds per call of fn: CUDA events around each call on a GPU, perf_counter around
    the call and a synchronize elsewhere. The warm-up covers compilation and the few dozen calls
    the CPU allocator needs to settle after the allocation pattern changes. flush_l2 (CUDA)
    overwrites the L2 cache before each call, so no call reads what the previous one left."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type == "cuda":
        flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device) if flush_l2 else None
        events = []
        for _ in range(repeats):
            if flush is not None:
                flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            events.append((start, end))
        synchronize(device)
        samples = [start.elapsed_time(end) / 1e3 for start, end in events]
    else:
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def calls_within(fn: Callable[[], object], device: torch.device, seconds: float,
                 warmup: int = 2) -> int:
    """About how many calls of fn fit in `seconds` (at least 1), from five timed calls after the
    warm-up (which takes a compiled provider's compilation)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(5):
        fn()
    synchronize(device)
    return max(1, int(seconds / max((time.perf_counter() - t0) / 5, 1e-9)))


def time_graph_replays(fn: Callable[[], object], device: torch.device, warmup: int = 2,
                       calls_per_graph: int = 20, replays: int = 10) -> float:
    """Median seconds per call of fn, captured `calls_per_graph` times into one CUDA graph whose
    replays are timed with CUDA events: for calls whose launch costs more than their work.
    Raises where fn cannot be captured."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls_per_graph):
            fn()
    graph.replay()
    synchronize(device)
    samples = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / calls_per_graph)
    del graph
    return statistics.median(samples)


def measure(shapes, device, dtype, repeats, directions, providers: dict[str, AdainFn],
            channels_last=False, progress=None):
    """Yields (shape, direction, {provider: median seconds}) as each measurement finishes;
    progress, if given, hears progress.show(what) before each timing and progress.step() after."""
    for shape in shapes:
        for direction in directions:
            content, style = make_inputs(shape, device, dtype, channels_last,
                                         requires_grad=direction == "backward")
            timed = {name: RUNNERS[direction](fn, content, style) for name, fn in providers.items()}
            times = {}
            # Two rounds, the second in reverse order, keeping each provider's lower median:
            # whoever runs first after a change of shape pays the allocator's settling (on CPU,
            # up to 1.5x on one provider's median here), so no provider gets a fixed place.
            for names in (list(timed), list(reversed(timed))):
                for name in names:
                    if progress:
                        progress.show(f"{'x'.join(map(str, shape))} {direction}: {name}")
                    t = time_call(timed[name], device, repeats)
                    times[name] = min(times.get(name, t), t)
                    if progress:
                        progress.step()
            yield shape, direction, times


def host_cost(calls: dict[str, Callable[[], object]], calls_per_sample: int = 1000,
              rounds: int = 5) -> dict[str, float]:
    """Seconds per call of each fn, for calls so small that the host's work (Python, dispatch,
    autograd) is what is measured: `calls_per_sample` calls back to back per sample, the providers
    interleaved in `rounds` rounds (each round in another order), each one's best sample kept (on
    a noisy machine the best is the cost; the others are the noise)."""
    best: dict[str, float] = {}
    names = list(calls)
    for name in names:  # warm-up: allocator, first-call lookups
        for _ in range(max(25, calls_per_sample // 10)):
            calls[name]()
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in (order if r % 2 == 0 else order[::-1]):
            fn = calls[name]
            t0 = time.perf_counter()
            for _ in range(calls_per_sample):
                fn()
            per_call = (time.perf_counter() - t0) / calls_per_sample
            best[name] = min(best.get(name, per_call), per_call)
    return best


def write_report(table: str, data: dict, md_path: str | None, json_path: str | None) -> None:
    """Prints a benchmark script's markdown table and writes it and its data where asked, each
    file whole or not at all (a temp file renamed over the name: never written through a
    symlink planted there, and an interrupted run leaves the previous results)."""
    import json

    from adain_ext.style_transfer._output import atomic_output

    print(table)
    for path, text in ((md_path, table), (json_path, json.dumps(data, indent=1))):
        if path:
            with atomic_output(path) as f:
                f.write(text.encode())
