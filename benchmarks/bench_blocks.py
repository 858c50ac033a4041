"""Block benchmark: AdaIN with the neighbours generators put around it, eager and compiled,
the models' own code against what accelerate() makes of it. fp32; on CPU one thread, or on a GPU
(--device cuda, the GPU check's blocks step).

Blocks (each written the way its model writes it; "IN-mod" = instance_norm(x) * gamma + beta):
  stylegan   rosinality's StyleGAN: noise injection x + w * noise, LeakyReLU(0.2), then IN-mod
  stargan    StarGAN v2's AdainResBlk order: (1 + gamma) * instance_norm(x) + beta, LeakyReLU(0.2)
  munit      MUNIT's Conv2dBlock order: IN-mod, then ReLU(inplace=True)
  adain_vc   AdaIN-VC's decoder (1-D, (N, C, T)): instance_norm(x) * std + mean, then ReLU
  op         adain_ext.adain_affine alone (no neighbours): the op's own cost
Variants of each block:
  eager reference      the block as written
  eager accelerated    accelerate(copy of the block): the AdaIN swapped for adain_ext.adain_affine,
                       the ReLU/LeakyReLU after it (StarGAN v2, MUNIT, AdaIN-VC) its epilogue, the
                       noise injection and LeakyReLU before it (StyleGAN) its prologue
  eager accelerated, neighbours unfused   accelerate(fold_activations=False): those neighbours
                       passes of their own
  compiled reference   torch.compile(the block as written)
  compiled accelerated torch.compile(accelerate(copy of the block))
Modes: forward under no_grad, and forward + backward (gradients of x, gamma, beta, noise weight).
Plus a whole-generator training step (examples/stylegan_like.py, noise "const", its AdaIN written
as F.instance_norm(x) * scale + shift, i.e. impl="instance_norm") against accelerate() of it, eager
and compiled.

Timing: every variant of a block and mode is warmed up (compiled ones compile there), then timed
in --rounds interleaved rounds (a new seeded random order each round), each round's time
bench_harness.time_call's median of --repeats calls; the row's time is the median over the rounds.
Ratios are taken between rows of the same run. The function API is called once eagerly before
anything compiles (see `warm_function_api`), and the graph breaks of each compiled variant are
counted and reported.

    python benchmarks/bench_blocks.py                  # B=8, C=512, 32x32; writes benchmarks/results/blocks_cpu.{json,md}
                                                       # (a partial run, as below, writes only to --json/--md)
    python benchmarks/bench_blocks.py --small          # B=2, C=64, 16x16: a quick run, writes nothing unless asked
    python benchmarks/bench_blocks.py --blocks stylegan,op --no-generator --rounds 3
    python benchmarks/bench_blocks.py --device cuda --blocks stylegan,stargan --json out.json --md out.md
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import adain_ext
from adain_ext import bench_harness
from adain_ext.rewrite import accelerate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
CPU = torch.device("cpu")

VARIANTS = ("eager reference", "eager accelerated", "compiled reference", "compiled accelerated")
# accelerate(fold_activations=False): the activation after the AdaIN (StarGAN v2, MUNIT, AdaIN-VC)
# or the noise injection and activation before it (StyleGAN) passes of their own, as before the
# op had an epilogue and a prologue.
UNFUSED = "eager accelerated, neighbours unfused"
UNFUSED_BLOCKS = ("stylegan", "stargan", "munit", "adain_vc")
MODES = ("forward", "forward+backward")
BLOCKS = ("stylegan", "stargan", "munit", "adain_vc", "op")
BLOCK_TITLES = {
    "stylegan": "StyleGAN (rosinality): `lrelu(x + w*noise)`, then IN-mod",
    "stargan": "StarGAN v2: IN-mod `(1 + gamma)`, then LeakyReLU(0.2)",
    "munit": "MUNIT: IN-mod, then ReLU(inplace)",
    "adain_vc": "AdaIN-VC (1-D): IN-mod, then ReLU",
    "op": "`adain_ext.adain_affine` alone",
    "generator": "StyleGAN-like generator training step",
}


# ---- The blocks, as their models write them (no code copied; the same operations in order).


class StyleGANBlock(nn.Module):
    """rosinality's StyledConvBlock after its conv: NoiseInjection, LeakyReLU(0.2),
    AdaptiveInstanceNorm (an nn.InstanceNorm2d child, then gamma * out + beta)."""

    def __init__(self, channels):
        super().__init__()
        self.noise_weight = nn.Parameter(torch.full((1, channels, 1, 1), 0.1))
        self.lrelu = nn.LeakyReLU(0.2)
        self.norm = nn.InstanceNorm2d(channels)

    def forward(self, x, noise, gamma, beta):
        out = x + self.noise_weight * noise
        out = self.lrelu(out)
        out = self.norm(out)
        return gamma * out + beta


class StarGANBlock(nn.Module):
    """StarGAN v2's AdainResBlk: AdaIN ((1 + gamma) * norm(x) + beta), then LeakyReLU(0.2)."""

    def __init__(self, channels):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.actv = nn.LeakyReLU(0.2)

    def forward(self, x, gamma, beta):
        return self.actv((1 + gamma) * self.norm(x) + beta)


class MUNITBlock(nn.Module):
    """MUNIT's Conv2dBlock after its conv: the AdaIN norm, then ReLU(inplace=True)."""

    def __init__(self, channels):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x, gamma, beta):
        return self.activation(self.norm(x) * gamma + beta)


class AdaINVCBlock(nn.Module):
    """AdaIN-VC's decoder layer: InstanceNorm1d, append_cond (x * std + mean from one (N, 2C)
    condition), then ReLU."""

    def __init__(self, channels):
        super().__init__()
        self.norm_layer = nn.InstanceNorm1d(channels, affine=False)
        self.act = nn.ReLU()

    def forward(self, x, cond):
        p = cond.size(1) // 2
        mean, std = cond[:, :p], cond[:, p:]
        out = self.norm_layer(x)
        out = out * std.unsqueeze(dim=2) + mean.unsqueeze(dim=2)
        return self.act(out)


class OpAlone(nn.Module):
    """adain_ext.adain_affine alone, with the semantics accelerate() gives IN-mod (biased
    variance, eps 1e-5): its reference is the IN-mod it replaces, with no neighbours."""

    def __init__(self, fused: bool):
        super().__init__()
        self.fused = fused

    def forward(self, x, gamma, beta):
        if self.fused:
            return adain_ext.adain_affine(x, beta, gamma, 1e-5, False)
        return F.instance_norm(x) * gamma + beta


@dataclass
class Case:
    """One block: its reference and accelerated modules and inputs (grad flags as in training)."""
    reference: nn.Module
    accelerated: nn.Module
    inputs: tuple  # tensors; floating ones other than `noise` require grad in forward+backward
    no_grad_inputs: tuple = ()  # indices of inputs that never require grad (noise)


def _accelerated(module: nn.Module) -> nn.Module:
    """accelerate() of a copy, refusing a block it left alone (then the row would lie)."""
    fused = accelerate(copy.deepcopy(module))
    if not any(hasattr(type(m), "adain_fused_code") for m in fused.modules()):
        raise RuntimeError(f"accelerate() left {type(module).__name__} alone")
    return fused


def make_case(block: str, batch: int, channels: int, size: int, seed: int = 0,
              device: torch.device = CPU) -> Case:
    """The block's modules and inputs on `device` (drawn on the CPU: the same values anywhere)."""
    case = _make_case(block, batch, channels, size, seed)
    if device.type == "cpu":
        return case
    reference = case.reference.to(device)
    accelerated = OpAlone(True) if block == "op" else _accelerated(reference)
    return Case(reference, accelerated, tuple(t.to(device) for t in case.inputs),
                case.no_grad_inputs)


def _make_case(block: str, batch: int, channels: int, size: int, seed: int) -> Case:
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    N, C = batch, channels
    x = randn(N, C, size, size)
    gamma, beta = randn(N, C, 1, 1) * 0.2 + 1, randn(N, C, 1, 1) * 0.2
    if block == "stylegan":
        ref = StyleGANBlock(C)
        return Case(ref, _accelerated(ref), (x, randn(N, 1, size, size), gamma, beta), (1,))
    if block == "stargan":
        ref = StarGANBlock(C)
        return Case(ref, _accelerated(ref), (x, gamma - 1, beta))
    if block == "munit":
        ref = MUNITBlock(C)
        return Case(ref, _accelerated(ref), (x, gamma, beta))
    if block == "adain_vc":  # the same element count as the images: T = size * size
        ref = AdaINVCBlock(C)
        cond = torch.cat([randn(N, C) * 0.2, randn(N, C) * 0.2 + 1], dim=1)
        return Case(ref, _accelerated(ref), (randn(N, C, size * size), cond))
    if block == "op":
        return Case(OpAlone(False), OpAlone(True), (x, gamma, beta))
    raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")


def check_case(case: Case):
    """The accelerated block's output and gradients match the reference's (float32 tolerance)."""
    outs, grads = [], []
    for module in (case.reference, case.accelerated):
        leaves = _leaves(case)
        out = module(*leaves)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device)
        grads.append(torch.autograd.grad(out, _grad_targets(module, leaves, case), g))
        outs.append(out.detach())
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=1e-4)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def _leaves(case: Case) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_(i not in case.no_grad_inputs)
            for i, t in enumerate(case.inputs)]


def _grad_targets(module, leaves, case) -> list[torch.Tensor]:
    return [t for i, t in enumerate(leaves) if i not in case.no_grad_inputs] + \
        [p for p in module.parameters() if p.requires_grad]


# ---- Runners (results dropped each call, as bench_harness's runners do).


def forward_call(module, case: Case) -> Callable[[], None]:
    inputs = tuple(t.detach() for t in case.inputs)

    def run():
        with torch.no_grad():
            module(*inputs)
    return run


def forward_backward_call(module, case: Case) -> Callable[[], None]:
    leaves = _leaves(case)
    targets = _grad_targets(module, leaves, case)
    out_shape = module(*[t.detach() for t in leaves]).shape
    grad_out = torch.randn(out_shape, generator=torch.Generator().manual_seed(2)).to(
        leaves[0].device)

    def run():
        # No clone of the inputs: no block writes its inputs in place (MUNIT's inplace ReLU writes
        # the modulation's fresh output), and a 16 MB copy per call would add the same ~2-4 ms to
        # every row, hiding the blocks' own differences.
        torch.autograd.grad(module(*leaves), targets, grad_out)
    return run


def _compiled(module: nn.Module) -> nn.Module:
    return torch.compile(module, dynamic=False)


def warm_function_api(device: torch.device = CPU):
    """One eager call of adain_ext's function API before anything is compiled. Its first call
    in a process picks the backend in Python code that Dynamo cannot trace, so a model compiled
    before any eager call breaks its graph there (noted in the results, not hidden: the compiled
    variants' graph breaks are counted)."""
    x = torch.randn(2, 3, 4, 4, device=device)
    adain_ext.adain_affine(x, torch.zeros(2, 3, device=device), torch.ones(2, 3, device=device),
                           1e-5, False)


def _graph_breaks() -> int:
    return sum(torch._dynamo.utils.counters["graph_break"].values())


def time_interleaved(calls: dict[str, Callable[[], None]], rounds: int, repeats: int,
                     warmup: int = 2, device: torch.device = CPU) -> dict[str, dict]:
    """{name: {"ms": median over rounds, "rounds_ms": [...], "graph_breaks": n}}: each call
    warmed up (compiling there), then `rounds` rounds in a new seeded random order each, each
    round timed by bench_harness.time_call (median of `repeats` calls)."""
    breaks = {}
    for name, call in calls.items():
        before = _graph_breaks()
        for _ in range(warmup):
            call()
        breaks[name] = _graph_breaks() - before
    samples: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    # A new random order each round (seeded): a fixed rotation kept one variant right after the
    # eager reference, whose 16 MB temporaries leave caches and TLB cold, in most rounds, and
    # that variant measured up to 1.5 ms slower than in isolation.
    order_rng = random.Random(0)
    for _ in range(rounds):
        for name in order_rng.sample(names, len(names)):
            samples[name].append(
                1e3 * bench_harness.time_call(calls[name], device, repeats, warmup=1))
    return {name: {"ms": statistics.median(s), "rounds_ms": [round(v, 3) for v in s],
                   "graph_breaks": breaks[name]} for name, s in samples.items()}


def bench_block(block: str, batch: int, channels: int, size: int, rounds: int, repeats: int,
                log=print, device: torch.device = CPU) -> list[dict]:
    case = make_case(block, batch, channels, size, device=device)
    check_case(case)
    modules = {"eager reference": case.reference, "eager accelerated": case.accelerated}
    if block in UNFUSED_BLOCKS:
        modules[UNFUSED] = accelerate(copy.deepcopy(case.reference), fold_activations=False)
    rows = []
    for mode in MODES:
        # a compiled module per mode: no_grad and grad mode are two graphs each anyway
        variants = {**modules, "compiled reference": _compiled(case.reference),
                    "compiled accelerated": _compiled(case.accelerated)}
        make = forward_call if mode == "forward" else forward_backward_call
        t0 = time.perf_counter()
        times = time_interleaved({v: make(m, case) for v, m in variants.items()}, rounds, repeats,
                                 device=device)
        for variant in times:
            rows.append({"block": block, "variant": variant, "mode": mode, **times[variant]})
        log(f"{block} {mode}: " + ", ".join(f"{v} {t['ms']:.2f} ms" for v, t in times.items())
            + f" ({time.perf_counter() - t0:.0f} s)")
    return rows


# ---- The whole generator.


def _stylegan_like():
    spec = importlib.util.spec_from_file_location(
        "stylegan_like", os.path.join(ROOT, "examples", "stylegan_like.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR_CONFIGS = {
    "full": dict(resolution=32, batch=4, z_dim=128, w_dim=128, mapping_layers=4,
                 channel_base=2048, channel_max=256),
    "small": dict(resolution=16, batch=2, z_dim=32, w_dim=32, mapping_layers=2,
                  channel_base=256, channel_max=32),
}


def bench_generator(config: dict, rounds: int, repeats: int, log=print,
                    device: torch.device = CPU) -> list[dict]:
    sg = _stylegan_like()
    config = dict(config)
    batch = config.pop("batch")
    torch.manual_seed(0)
    reference = sg.Generator(noise_mode="const", impl="instance_norm", **config).to(device)
    accelerated = accelerate(copy.deepcopy(reference))
    z = torch.randn(batch, reference.z_dim, generator=torch.Generator().manual_seed(3)).to(device)

    def step_of(g):
        params = [p for p in g.parameters() if p.requires_grad]

        def run():
            torch.autograd.grad(g(z).square().mean(), params)
        return run

    variants = {"eager reference": reference, "eager accelerated": accelerated,
                "compiled reference": _compiled(reference),
                "compiled accelerated": _compiled(accelerated)}
    t0 = time.perf_counter()
    times = time_interleaved({v: step_of(g) for v, g in variants.items()}, rounds, repeats,
                             device=device)
    log("generator training step: " + ", ".join(f"{v} {times[v]['ms']:.1f} ms" for v in VARIANTS)
        + f" ({time.perf_counter() - t0:.0f} s)")
    return [{"block": "generator", "variant": v, "mode": "forward+backward", **times[v]}
            for v in VARIANTS]


# ---- The table.


def ratios(rows: list[dict]) -> list[dict]:
    """Per block and mode: eager reference / eager accelerated (above 1: accelerate() helps),
    compiled reference / compiled accelerated, and compiled reference / eager accelerated."""
    at = {(r["block"], r["mode"], r["variant"]): r["ms"] for r in rows}
    out = []
    for block in dict.fromkeys(r["block"] for r in rows):
        for mode in MODES:
            if (block, mode, "eager reference") not in at:
                continue
            t = {v: at[block, mode, v] for v in VARIANTS}
            out.append({"block": block, "mode": mode,
                        "eager": t["eager reference"] / t["eager accelerated"],
                        "compiled": t["compiled reference"] / t["compiled accelerated"],
                        "compiled_ref_over_eager_acc":
                            t["compiled reference"] / t["eager accelerated"],
                        # the neighbours in the op (epilogue, prologue) against passes of their own
                        "epilogue": (at[block, mode, UNFUSED] / t["eager accelerated"]
                                     if (block, mode, UNFUSED) in at else None)})
    return out


def markdown(result: dict) -> str:
    """The results as markdown: one row per block and variant, forward and forward + backward
    in ms, then the ratios (reference time / accelerated time: above 1, accelerate() is faster)."""
    rows = result["rows"]
    at = {(r["block"], r["mode"], r["variant"]): r for r in rows}
    blocks = list(dict.fromkeys(r["block"] for r in rows))
    lines = [f"Blocks on {result.get('device', 'cpu').upper()}: {result['machine']}",
             f"fp32, {result['shape_note']}; median of {result['rounds']} interleaved rounds "
             f"(each the median of {result['repeats']} calls), ms"
             + (f"; load average (1 min) {result['load_average']['before'][0]} before, "
                f"{result['load_average']['after'][0]} after" if "load_average" in result else ""),
             "",
             "| block | variant | forward (no_grad) | forward + backward |", "|---|---|---|---|"]

    def cell(block, mode, variant):
        r = at.get((block, mode, variant))
        if r is None:
            return "-"
        text = f"{r['ms']:.2f}"
        if r.get("graph_breaks"):
            text += f" ({r['graph_breaks']} graph breaks)"
        return text

    for block in blocks:
        for variant in (*VARIANTS, UNFUSED):
            if (block, "forward+backward", variant) not in at:
                continue
            lines.append(f"| {BLOCK_TITLES.get(block, block)} | {variant} | "
                         f"{cell(block, 'forward', variant)} | "
                         f"{cell(block, 'forward+backward', variant)} |")
    lines += ["", "Speedups of accelerate() (the reference's time / the accelerated time; "
              "below 1: slower), same run:", "",
              "| block | mode | eager | compiled | compiled reference / eager accelerated "
              "| neighbours unfused / fused (eager) |",
              "|---|---|---|---|---|---|"]
    for r in ratios(rows):
        lines.append(f"| {BLOCK_TITLES.get(r['block'], r['block'])} | {r['mode']} | "
                     f"{r['eager']:.2f}x | {r['compiled']:.2f}x | "
                     f"{r['compiled_ref_over_eager_acc']:.2f}x | "
                     + (f"{r['epilogue']:.2f}x |" if r.get("epilogue") else "- |"))
    return "\n".join(lines) + "\n"


def machine(device: torch.device = CPU) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        try:
            import triton
            triton_version = triton.__version__
        except ImportError:
            triton_version = "none"
        return (f"{props.name} ({props.total_memory / 2**30:.0f} GiB), driver CUDA "
                f"{torch.version.cuda}, torch {torch.__version__}, triton {triton_version}, "
                f"Python {platform.python_version()}, adain_ext "
                f"{getattr(adain_ext, '__version__', '?')}")
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:  # the vectors adain_ext's CPU kernels were built for (setup.py), beside ATen's own
        from adain_ext._build_config import CONFIG
        ours = CONFIG.get("CPU vectors", "?")
    except ImportError:
        ours = "?"
    return (f"{cpu}, {os.cpu_count()} cores, one thread (ATen {torch.backends.cpu.get_cpu_capability()}"
            f", adain_ext {ours} kernels), torch {torch.__version__}, Python {platform.python_version()}, "
            f"adain_ext {getattr(adain_ext, '__version__', '?')}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true",
                        help="B=2, C=64, 16x16 and a small generator: a quick run")
    parser.add_argument("--blocks", default=",".join(BLOCKS),
                        help=f"comma-separated, from {','.join(BLOCKS)}")
    parser.add_argument("--no-generator", action="store_true")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="cpu: one thread; cuda: the current GPU (timed with CUDA events)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3, help="calls per round")
    parser.add_argument("--json", help="default: benchmarks/results/blocks_cpu.json (a full run: "
                        "every block and the generator); a partial run writes only where told")
    parser.add_argument("--md", help="default: benchmarks/results/blocks_cpu.md (a full run)")
    args = parser.parse_args(argv)
    blocks = [b for b in args.blocks.split(",") if b]
    unknown = set(blocks) - set(BLOCKS)
    if unknown or args.rounds < 1 or args.repeats < 1:
        parser.error(f"unknown blocks {sorted(unknown)}" if unknown
                     else "--rounds and --repeats must be >= 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if not adain_ext.HAS_CPP:  # accelerate()'s rows would time the reference as adain_ext
        parser.error("adain_ext's compiled extension is not built here (pip install -e ., or the "
                     "GPU check's build step: --only build,blocks)")
    # Only a full CPU run replaces the committed results; any other writes where it is told.
    if (device.type == "cpu" and not args.small and set(blocks) == set(BLOCKS)
            and not args.no_generator):
        args.json = args.json or os.path.join(RESULTS, "blocks_cpu.json")
        args.md = args.md or os.path.join(RESULTS, "blocks_cpu.md")
    if device.type == "cpu":
        torch.set_num_threads(1)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    warm_function_api(device)
    load_before = os.getloadavg()
    batch, channels, size = (2, 64, 16) if args.small else (8, 512, 32)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    rows = []
    for block in blocks:
        rows += bench_block(block, batch, channels, size, args.rounds, args.repeats, log, device)
    config = GENERATOR_CONFIGS["small" if args.small else "full"]
    if not args.no_generator:
        rows += bench_generator(config, args.rounds, args.repeats, log, device)
    result = {
        "device": device.type,
        "machine": machine(device),
        "shape_note": (f"B={batch}, C={channels}, {size}x{size} (AdaIN-VC: T={size * size}); "
                       f"generator: {config}"),
        "rounds": args.rounds, "repeats": args.repeats,
        "rows": rows, "ratios": ratios(rows),
        "load_average": {"before": [round(v, 2) for v in load_before],
                         "after": [round(v, 2) for v in os.getloadavg()]},
    }
    bench_harness.write_report(markdown(result), result, args.md, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
