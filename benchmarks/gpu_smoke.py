"""Every op forward and backward once, on every kernel path, in every dtype and through both
backends, against the float64 reference: the GPU check's first step after the build, so that a
wrong or failing launch shows within a minute, one verdict line per case.

    python benchmarks/gpu_smoke.py                       # CUDA: every case, in parallel processes
    python benchmarks/gpu_smoke.py --device cpu --quick  # a few small cases on CPU (CI runs this)
    python benchmarks/gpu_smoke.py --list                # the case names
    python benchmarks/gpu_smoke.py --shapes split_odd --backends triton --dtypes bf16

One line per case, `<verdict> <op>/<backend>/<dtype>/<shape> <max abs err> <max err / tolerance>`:
    ok     every output and gradient within the per-dtype tolerance of tests/cases.py
    BAD    a value outside it (or NaN, or a wrong shape, dtype or device)
    ERROR  the op raised (or its process died or timed out before a verdict)
    OOM    the case ran out of memory (the op's or the float64 reference's): no verdict on the
           kernel, "out of memory" and what the card had free
then `gpu_smoke: N ok, N BAD, N ERROR, N OOM`. Exit status 0 only when every case is ok.

Processes (CUDA): --jobs shards of the ordinary cases, one process per fresh-process shape, and
one process that runs the LARGE_SHAPES one case at a time (a fused fp32 case with its float64
reference peaks at about 27x its input: ~27 GiB for the 2^28-element row, so two at once beside
the other processes' CUDA contexts could exhaust an 80 GB card). Each process gets
OMP_NUM_THREADS=1: the cases' work is on the GPU. GPU_SMOKE_FORCE_OOM=shape,... (this script's
own test) makes those shapes' cases raise an out-of-memory error instead of running.

The ops go through adain_ext.adain / adain_affine / mean_std with autograd (backend "cpp" is
torch.ops.adain.fused / affine / mean_std and their registered backward ops). Shapes are picked
to take each CUDA path of csrc/cuda/launch.cuh on an H200 (132 SMs: a contiguous tensor of
fewer than 264 rows with H*W >= 16384 takes the split path) and the Triton plans of
adain_ext/triton/_common.py. The FRESH_PROCESS_SHAPES have a static plus dynamic shared memory
just above 48 KiB, which needs the kernel's shared-memory opt-in: a missing opt-in fails only
while the kernel has not opted in for a larger launch yet, so each of those shapes runs in a
process of its own.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import math
import os
import subprocess
import sys
import tempfile
import threading
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from cases import TOLERANCES  # the tests' per-dtype (atol, rtol) against float64

import adain_ext
from adain_ext import reference

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
          "fp64": torch.float64}
OPS = ("fused", "affine", "mean_std")
BACKENDS = ("cpp", "triton")
EPS = 1e-5
VERDICTS = ("ok", "BAD", "ERROR", "OOM")


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    content: tuple  # (N, C, H, W) of the tensor the op sees
    style: tuple | None = None  # None: same as content
    layout: str = "contiguous"  # contiguous, channels_last, sliced, sliced_channels_last, strided
    alpha: float = 1.0
    unbiased: bool = True
    dtypes: tuple = tuple(DTYPES)
    backends: tuple = BACKENDS
    why: str = ""


# The paths, for contiguous fp32 on an H200 (launch.cuh names; Triton plan in brackets).
SHAPES = [
    Shape("packed_4x4", (4, 512, 4, 4), why="tiny rows, several per warp [packed rows]"),
    Shape("packed_odd", (3, 100, 7, 9), alpha=0.4, why="L = 63, rows off the 16-byte grid"),
    Shape("rows", (2, 300, 32, 32), why="one block per row, row cached in shared memory"),
    Shape("rows_style_longer", (2, 150, 4, 4), style=(2, 150, 64, 64),
          why="fused: group sized by the longer style row"),
    Shape("cached_rows_64k", (2, 8, 125, 128),
          why="L = 16000: fp32 row cache 64000 B (> 48 KiB, opted in) [two-pass]"),
    Shape("cached_rows_partial", (2, 140, 160, 160),
          why="L = 25600, 280 rows: fp32 row larger than the cache budget [two-pass]"),
    Shape("split", (1, 4, 512, 512), why="few long rows: partials, finalize, apply [split]"),
    Shape("split_odd", (1, 3, 257, 259), alpha=0.6, why="odd L on the split path"),
    Shape("split_style_only", (2, 8, 16, 16), style=(2, 8, 384, 384),
          why="fused with only the style split"),
    Shape("cl_c64", (2, 64, 33, 35), layout="channels_last", why="channels_last, C % 8 == 0"),
    Shape("cl_c5", (2, 5, 33, 65), layout="channels_last", unbiased=False,
          why="channels_last, C % 8 != 0"),
    Shape("cl_c12", (3, 12, 17, 19), layout="channels_last", alpha=0.3,
          why="channels_last, C % 4 == 0 but C % 8 != 0 (16-bit vectors are 8 wide)"),
    Shape("cl_split", (1, 16, 256, 256), layout="channels_last", alpha=0.8,
          why="channels_last, positions split across blocks"),
    Shape("sliced", (2, 3, 7, 9), layout="sliced", why="base[1:]: data off the 16-byte grid"),
    Shape("sliced_cl", (2, 5, 7, 9), layout="sliced_channels_last",
          why="channels_last base[1:], off the 16-byte grid"),
    Shape("strided", (2, 3, 10, 12), layout="strided", why="every other column: neither layout"),
]
# Large enough to cross the hardware's grid limits (grid dimension 1 at most 65535): skipped by
# --quick and on CPU; on CUDA run in one process of their own, one case at a time.
LARGE_SHAPES = [
    Shape("large_cl_2p25", (1, 8, 4096, 8192), layout="channels_last", dtypes=("fp32",),
          why="channels_last rows of 2^25 elements"),
    Shape("large_row_2p28", (1, 1, 16384, 16384), dtypes=("fp32",),
          why="one contiguous row of 2^28 elements"),
]
# Static + dynamic shared memory just above 48 KiB (the dynamic part alone at most 48 KiB): the
# row lengths where a launch needs the opt-in although its dynamic size does not exceed 48 KiB.
# fp16/bf16 forward rows that long take this path only with N*C >= 264 (else they split).
FRESH_PROCESS_SHAPES = [
    Shape("optin_relu4_1", (2, 8, 96, 128), dtypes=("fp32", "fp16", "bf16"), backends=("cpp",),
          why="L = 12288 (VGG relu4_1 of 1024x768): fp32 forward, fp16/bf16 backward"),
    Shape("optin_l11904", (2, 8, 96, 124), dtypes=("fp32", "fp16", "bf16"), backends=("cpp",),
          why="L = 11904: fp32 forward, fp16/bf16 backward, lower ends"),
    Shape("optin_l6000", (2, 8, 60, 100), dtypes=("fp32", "fp64"), backends=("cpp",),
          why="L = 6000: fp32 backward, fp64 forward"),
    Shape("optin_l6144", (2, 8, 64, 96), dtypes=("fp32", "fp64"), backends=("cpp",),
          why="L = 6144: fp32 backward, fp64 forward, upper ends"),
    Shape("optin_l23808", (2, 132, 124, 192), dtypes=("fp16", "bf16"), backends=("cpp",),
          why="L = 23808, 264 rows: fp16/bf16 forward"),
    Shape("optin_l24576", (2, 132, 128, 192), dtypes=("fp16", "bf16"), backends=("cpp",),
          why="L = 24576, 264 rows: fp16/bf16 forward, upper end"),
    Shape("optin_l2970", (2, 8, 54, 55), dtypes=("fp64",), backends=("cpp",),
          why="L = 2970: fp64 backward"),
    Shape("optin_l3072", (2, 8, 48, 64), dtypes=("fp64",), backends=("cpp",),
          why="L = 3072: fp64 backward, upper end"),
]
# --quick: a few small shapes over every op, backend and dtype (the CPU smoke of CI).
QUICK_SHAPES = ("cl_c5", "sliced")
QUICK_FRESH_SHAPES = ("optin_relu4_1",)


@dataclasses.dataclass(frozen=True)
class SmokeCase:
    op: str
    backend: str
    dtype: str
    shape: Shape

    @property
    def name(self) -> str:
        return f"{self.op}/{self.backend}/{self.dtype}/{self.shape.name}"


def all_shapes() -> list[Shape]:
    return SHAPES + LARGE_SHAPES + FRESH_PROCESS_SHAPES


def make_cases(shapes, ops=OPS, backends=BACKENDS, dtypes=tuple(DTYPES)) -> list[SmokeCase]:
    return [SmokeCase(op, backend, dtype, shape)
            for shape in shapes for dtype in shape.dtypes if dtype in dtypes
            for backend in shape.backends if backend in backends for op in ops]


# ---- One case.


def _tensor(shape, layout, dtype, device, gen):
    """A tensor of `shape` in `layout`, values 2 * N(0, 1) + 0.5, drawn in float32 (then cast)."""
    def draw(s):
        return torch.randn(s, generator=gen, device=device).mul_(2).add_(0.5).to(dtype)

    N, C, H, W = shape
    if layout == "contiguous":
        return draw(shape)
    if layout == "channels_last":
        return draw(shape).contiguous(memory_format=torch.channels_last)
    if layout in ("sliced", "sliced_channels_last"):
        fmt = torch.channels_last if layout == "sliced_channels_last" else torch.contiguous_format
        return draw((N + 1, C, H, W)).contiguous(memory_format=fmt)[1:]
    if layout == "strided":
        return draw((N, C, H, 2 * W))[..., ::2]
    raise ValueError(f"unknown layout {layout!r}")


def _inputs(case: SmokeCase, device):
    """(inputs, incoming gradients) of the case's op, from a seed derived from its name."""
    dtype, shape = DTYPES[case.dtype], case.shape
    gen = torch.Generator(device=device).manual_seed(sum(map(ord, case.name)))
    x = _tensor(shape.content, shape.layout, dtype, device, gen)
    N, C = shape.content[:2]
    if case.op == "fused":
        style = _tensor(shape.style or shape.content, shape.layout, dtype, device, gen)
        style = style.mul_(1.5).sub_(1)
        inputs = (x, style)
        grads = (torch.randn(x.shape, generator=gen, device=device).to(dtype),)
    elif case.op == "affine":
        mean = torch.randn((N, C), generator=gen, device=device).to(dtype)
        std = torch.rand((N, C), generator=gen, device=device).mul_(2).add_(0.2).to(dtype)
        inputs = (x, mean, std)
        grads = (torch.randn(x.shape, generator=gen, device=device).to(dtype),)
    else:
        inputs = (x,)
        grads = tuple(torch.randn((N, C, 1, 1), generator=gen, device=device).to(dtype)
                      for _ in range(2))
    return inputs, grads


def _call(case: SmokeCase, inputs, backend):
    """The op's outputs as a tuple. adain_ext's functions are looked up at call time (a test
    replaces one to check that a wrong result is caught)."""
    s = case.shape
    if case.op == "fused":
        kwargs = {} if backend == "reference" else {"backend": backend}
        fn = reference.adain if backend == "reference" else adain_ext.adain
        return (fn(*inputs, s.alpha, EPS, s.unbiased, **kwargs),)
    if case.op == "affine":
        if backend == "reference":
            return (reference.adain_affine(*inputs, EPS, s.unbiased),)
        return (adain_ext.adain_affine(*inputs, EPS, s.unbiased, backend=backend),)
    if backend == "reference":
        return tuple(reference.mean_std(*inputs, EPS, s.unbiased))
    return tuple(adain_ext.mean_std(*inputs, EPS, s.unbiased, backend=backend))


def _forward_backward(case, inputs, grads, backend):
    leaves = [t.detach().requires_grad_(True) for t in inputs]
    outs = _call(case, leaves, backend)
    input_grads = torch.autograd.grad(outs, leaves, grads)
    return [o.detach() for o in outs], list(input_grads)


def error_vs_tolerance(got: torch.Tensor, want: torch.Tensor, dtype):
    """(max |got - want|, max |got - want| / (atol + rtol |want|)) with the tests' tolerances
    for `dtype`, atol relative to the largest expected entry as in tests/cases.py.
    The second number is <= 1 where every element passes; NaN anywhere counts as infinite."""
    atol, rtol = TOLERANCES[dtype]
    want = want.double().to(got.device)
    largest = want.abs().max().item() if want.numel() else 0.0
    atol *= largest if largest > 0 else 1.0
    diff = (got.double() - want).abs()
    if diff.numel() == 0:
        return 0.0, 0.0
    ratio = diff / (atol + rtol * want.abs())
    return diff.nan_to_num(nan=math.inf).max().item(), ratio.nan_to_num(nan=math.inf).max().item()


def run_case(case: SmokeCase, device: str) -> tuple[str, str]:
    """(verdict, detail) of one case: forward and backward against the float64 reference.
    detail is "<max abs err> <max err / tolerance>", on BAD also which output was worst (out0,
    out1: outputs; grad0, grad1, ...: gradients of the inputs in argument order)."""
    try:
        if case.shape.name in os.environ.get("GPU_SMOKE_FORCE_OOM", "").split(","):
            raise torch.OutOfMemoryError(  # this script's own test: an OOM, forced, not allocated
                f"CUDA out of memory (forced for {case.shape.name} by GPU_SMOKE_FORCE_OOM)")
        inputs, grads = _inputs(case, device)
        outs, input_grads = _forward_backward(case, inputs, grads, case.backend)
        if device.startswith("cuda"):
            torch.cuda.synchronize()  # an asynchronous launch error belongs to this case
        ref_outs, ref_grads = _forward_backward(
            case, [t.double() for t in inputs], [g.double() for g in grads], "reference")
        return _compare(case, inputs[0], {"out": (outs, ref_outs), "grad": (input_grads, ref_grads)})
    except Exception as error:  # noqa: BLE001  (reported as the case's verdict)
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if is_out_of_memory(error):
            return "OOM", out_of_memory_detail(first, device)
        return "ERROR", f"{type(error).__name__}: {first}"[:240]


def is_out_of_memory(error: BaseException) -> bool:
    """torch's OutOfMemoryError, or an allocator's RuntimeError that says it ran out of memory."""
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(error, oom) or (isinstance(error, RuntimeError)
                                      and "out of memory" in str(error).lower())


def out_of_memory_detail(first_line: str, device: str) -> str:
    """The OOM verdict's detail: "out of memory", not a kernel failure, and the card's state."""
    free = ""
    if device.startswith("cuda"):
        try:
            torch.cuda.empty_cache()
            free_b, total_b = torch.cuda.mem_get_info()
            free = f" ({free_b / 2**30:.1f} of {total_b / 2**30:.1f} GiB free after it)"
        except Exception:  # noqa: BLE001  (a broken context: the message says enough)
            pass
    return f"out of memory{free}, no verdict on the kernel: {first_line}"[:240]


def _compare(case, x, results) -> tuple[str, str]:
    dtype = DTYPES[case.dtype]
    worst_err, worst_ratio, worst, problems = 0.0, 0.0, "", []
    for kind, (got_list, want_list) in results.items():
        for i, (got, want) in enumerate(zip(got_list, want_list)):
            if got.shape != want.shape or got.dtype != dtype or got.device != x.device:
                problems.append(f"{kind}{i} is {tuple(got.shape)} {got.dtype} {got.device}")
                continue
            err, ratio = error_vs_tolerance(got, want, dtype)
            worst_err = max(worst_err, err)
            if ratio > worst_ratio or not worst:
                worst_ratio, worst = ratio, f"{kind}{i}"
    detail = f"{worst_err:.2e} {worst_ratio:.3f}"
    if problems:
        return "BAD", detail + " " + "; ".join(problems)
    if worst_ratio <= 1.0:
        return "ok", detail
    return "BAD", f"{detail} worst: {worst}"


def verdict_line(verdict: str, case_name: str, detail: str) -> str:
    return f"{verdict:<5} {case_name} {detail}"


def run_here(cases, device) -> list[str]:
    """Runs cases in this process, printing each verdict line as it comes."""
    lines = []
    for case in cases:
        verdict, detail = run_case(case, device)
        line = verdict_line(verdict, case.name, detail)
        print(line, flush=True)
        lines.append(line)
    return lines


# ---- Processes: shards of the ordinary cases, one process per fresh-process shape.


def shard(cases, i: int, n: int) -> list[SmokeCase]:
    """The i-th of n shards: every n-th (shape, dtype, backend) group, whole, so that the ops
    of a group, which share their backward kernels, compile them in one process."""
    groups = {}
    for case in cases:
        groups.setdefault((case.shape.name, case.dtype, case.backend), []).append(case)
    return [case for group in list(groups.values())[i::n] for case in group]


def _child_command(args, extra):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--device", args.device,
           "--ops", ",".join(args.ops), "--backends", ",".join(args.backends),
           "--dtypes", ",".join(args.dtypes)]
    return cmd + (["--quick"] if args.quick else []) + extra


def plan_jobs(args, shard_cases, fresh_shapes, large_cases=()) -> list[tuple[list, list]]:
    """(command, cases) of every worker process: `--jobs` shards of shard_cases, one process per
    fresh shape, and one process for all of large_cases, which it runs one at a time."""
    jobs = []
    shards = max(1, min(args.jobs, len(shard_cases)))
    if shard_cases:  # each shard worker makes the same list from the same shapes, then its part
        names = ",".join(dict.fromkeys(case.shape.name for case in shard_cases))
        for i in range(shards):
            jobs.append((_child_command(args, ["--shapes", names, "--shard", f"{i}/{shards}"]),
                         shard(shard_cases, i, shards)))
    for shape in fresh_shapes:
        cases = make_cases([shape], args.ops, args.backends, args.dtypes)
        if cases:
            jobs.append((_child_command(args, ["--shapes", shape.name]), cases))
    if large_cases:
        names = ",".join(dict.fromkeys(case.shape.name for case in large_cases))
        jobs.append((_child_command(args, ["--shapes", names]), list(large_cases)))
    return jobs


def run_children(args, shard_cases, fresh_shapes, large_cases=()) -> list[str]:
    """Runs the workers of plan_jobs all at once, passing each verdict line on as it comes (a run
    killed midway keeps what was printed). A case a worker did not report (it died, or ran past
    --timeout) gets an ERROR line."""
    jobs = plan_jobs(args, shard_cases, fresh_shapes, large_cases)
    lock = threading.Lock()
    lines = []

    def emit(line):
        with lock:
            print(line, flush=True)
            lines.append(line)

    def run(job):
        cmd, cases = job
        with tempfile.TemporaryFile(mode="w+") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT,
                                    env=dict(os.environ, OMP_NUM_THREADS="1"))
            timer = threading.Timer(args.timeout, proc.kill)
            timer.start()
            reported = set()
            for line in proc.stdout:
                line = line.rstrip("\n")
                if line.split(" ", 1)[0] in VERDICTS:
                    reported.add(line.split()[1])
                    emit(line)
            rc = proc.wait()
            timed_out = timer.finished.is_set()  # set once the timer fired (before cancel)
            timer.cancel()
            err.seek(0)
            tail = (err.read().strip().splitlines() or [""])[-1][:200]
        why = (f"worker killed after {args.timeout:.0f} s" if timed_out
               else f"worker exited with status {rc} {tail}")
        for case in cases:
            if case.name not in reported:
                emit(verdict_line("ERROR", case.name, f"no verdict: {why}".strip()))

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        list(pool.map(run, jobs))
    return lines


# ---- Command line.


def _csv(value, allowed):
    items = [v for v in value.split(",") if v]
    unknown = sorted(set(items) - set(allowed))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(allowed)}")
    return items


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true",
                        help=f"only the shapes {', '.join(QUICK_SHAPES + QUICK_FRESH_SHAPES)}")
    parser.add_argument("--shapes", type=lambda v: _csv(v, [s.name for s in all_shapes()]),
                        help="comma-separated shape names (see --list)")
    parser.add_argument("--ops", type=lambda v: _csv(v, OPS), default=list(OPS))
    parser.add_argument("--backends", type=lambda v: _csv(v, BACKENDS), default=list(BACKENDS))
    parser.add_argument("--dtypes", type=lambda v: _csv(v, DTYPES), default=list(DTYPES))
    parser.add_argument("--jobs", type=int, default=None,
                        help="processes for the ordinary cases, run alongside one per fresh-process "
                             "shape (default: CPUs up to 16 on CUDA; 1 on CPU: in this process)")
    parser.add_argument("--timeout", type=float, default=90.0,
                        help="seconds per worker process before its missing cases are ERRORs")
    parser.add_argument("--list", action="store_true", help="print the case names and exit")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shard", default=None, help=argparse.SUPPRESS)  # i/n of the cases
    args = parser.parse_args(argv)

    cuda = args.device.startswith("cuda")
    if args.shapes:
        chosen = [s for s in all_shapes() if s.name in args.shapes]
    elif args.quick:
        chosen = [s for s in all_shapes() if s.name in QUICK_SHAPES + QUICK_FRESH_SHAPES]
    else:  # on CPU the ordinary shapes only: the large ones take minutes there
        chosen = all_shapes() if cuda else list(SHAPES)
    fresh = [s for s in chosen if s in FRESH_PROCESS_SHAPES]
    ordinary = make_cases([s for s in chosen if s not in FRESH_PROCESS_SHAPES],
                          args.ops, args.backends, args.dtypes)
    large = [case for case in ordinary if case.shape in LARGE_SHAPES]
    if args.quick:
        fresh = [dataclasses.replace(s, dtypes=s.dtypes[:1]) for s in fresh]
    if args.list:
        for case in ordinary + make_cases(fresh, args.ops, args.backends, args.dtypes):
            where = ("own process" if case.shape in fresh else
                     "large-shape process" if case in large else "shared process")
            print(f"{case.name} ({where}): {case.shape.why}")
        return 0

    if cuda and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA GPU visible (use --device cpu for a smoke test of this script)",
              file=sys.stderr)
        return 2
    if not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before adain_ext.triton is imported
    if args.jobs is None:  # on CUDA: every process, shards and the others, on a core of its own
        cpus = min(16, os.cpu_count() or 1)
        args.jobs = max(1, cpus - len(fresh) - (1 if large else 0)) if cuda else 1

    start = time.time()
    if args.worker:
        if args.shard:  # a shard of the ordinary cases
            i, n = (int(v) for v in args.shard.split("/"))
            cases = shard([case for case in ordinary if case not in large], i, n)
        else:  # the shapes given, fresh-process ones included: this is their fresh process
            cases = ordinary + make_cases(fresh, args.ops, args.backends, args.dtypes)
        lines = run_here(cases, args.device)
        return 0 if all(ln.startswith("ok") for ln in lines) else 1

    where = torch.cuda.get_device_name() if cuda else "cpu"
    shared = [case for case in ordinary if case not in large]
    print(f"gpu_smoke: {len(shared)} cases + {len(fresh)} fresh-process shapes + {len(large)} "
          f"large-shape cases on {where}, {args.jobs} worker(s)", flush=True)
    if args.jobs <= 1:  # the ordinary cases here, then the large ones, beside the fresh shapes'
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            children = pool.submit(run_children, args, [], fresh)
            lines = run_here(shared + large, args.device)
            lines += children.result()
    else:
        lines = run_children(args, shared, fresh, large)
    counts = {v: sum(ln.split(" ", 1)[0] == v for ln in lines) for v in VERDICTS}
    print(f"gpu_smoke: {counts['ok']} ok, {counts['BAD']} BAD, {counts['ERROR']} ERROR, "
          f"{counts['OOM']} OOM in {time.time() - start:.0f} s ({args.device})", flush=True)
    return 0 if counts["ok"] == len(lines) else 1


if __name__ == "__main__":
    sys.exit(main())
