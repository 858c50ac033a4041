"""A small run of every kernel path, forward and backward, both backends, for compute-sanitizer
(memcheck, racecheck): benchmarks/gpu_check.sh runs it under each tool.

    python benchmarks/gpu_sanitizer_case.py [device] [--set memcheck|racecheck] [--deadline-s S]

device: cuda (default); cpu is a smoke test of this script (three shapes, fp32, the Triton
kernels in the interpreter).

The cases are gpu_smoke.py's on shapes small enough for the sanitizer's slowdown, and each is
checked against the same op run by the C++ CPU kernels in fp32 (fp64 for an fp64 case) on copies
of its inputs: the device runs only the kernels under test and PyTorch's own small ones (input
draws, copies, the gradients' sums), no float64 reference, so the sanitizer has little else to
watch. An fp32 case may be off by twice the fp32 tolerance (both sides carry fp32 rounding); a
16-bit case by its own tolerance.

Two sets, each in the order that finds a bug soonest (every path in fp32 first):
  memcheck   (MEMCHECK_SHAPES) every path: packed tiny rows, rows off the 16-byte grid (odd L),
             one block per row with the row cached in shared memory, split long rows (fewer than
             2 rows per SM), a style split while the content is not, channels_last with C a
             multiple of the vector width and not, misaligned views (base[1:]) in fp32; then
             fp16 where the 16-bit vector width changes the index math, and the fp64 split path
  racecheck  (RACECHECK_SHAPES) the paths whose kernels share data through shared memory
             (cached rows, the split's partials, channels_last's cross-warp sums), fp32 only
3 ops x 2 backends per shape and dtype. --deadline-s: no case starts after that many seconds
from the start, so the run ends in time for the sanitizer to print its verdict on the cases
that ran (the last line says how many of the set that was).
"""
import argparse
import dataclasses
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_smoke  # noqa: E402
from gpu_smoke import Shape  # noqa: E402

import torch  # noqa: E402

F32 = ("fp32",)
MEMCHECK_SHAPES = [
    Shape("san_packed", (4, 64, 4, 4), dtypes=F32),
    Shape("san_odd_rows", (2, 30, 7, 9), alpha=0.6, dtypes=F32),
    Shape("san_cached_rows", (2, 300, 32, 32), dtypes=F32),
    Shape("san_split", (1, 2, 128, 130), dtypes=F32),
    Shape("san_split_style", (2, 4, 8, 8), style=(2, 4, 160, 160), dtypes=F32),
    Shape("san_cl_c16", (2, 16, 12, 12), layout="channels_last", dtypes=F32),
    Shape("san_cl_c5", (1, 5, 33, 17), layout="channels_last", unbiased=False, dtypes=F32),
    Shape("san_sliced", (2, 3, 7, 9), layout="sliced", dtypes=F32),
    Shape("san_sliced_cl", (2, 5, 7, 9), layout="sliced_channels_last", dtypes=F32),
    # 16-bit vectors are 8 wide (fp32: 4): the packed, channels_last and misaligned paths again.
    Shape("san_packed", (4, 64, 4, 4), dtypes=("fp16",)),
    Shape("san_cl_c16", (2, 16, 12, 12), layout="channels_last", dtypes=("fp16",)),
    Shape("san_sliced_cl", (2, 5, 7, 9), layout="sliced_channels_last", dtypes=("fp16",)),
    Shape("san_split", (1, 2, 128, 130), dtypes=("fp64",)),
]
RACECHECK_SHAPES = [
    Shape("san_cached_rows", (2, 30, 32, 32), dtypes=F32),
    Shape("san_split", (1, 2, 128, 130), dtypes=F32),
    Shape("san_split_style", (2, 4, 8, 8), style=(2, 4, 160, 160), dtypes=F32),
    Shape("san_cl_c16", (2, 16, 12, 12), layout="channels_last", dtypes=F32),
]
SETS = {"memcheck": MEMCHECK_SHAPES, "racecheck": RACECHECK_SHAPES}
CPU_SMOKE_SHAPES = ("san_odd_rows", "san_cl_c5", "san_sliced_cl")


def cases(set_name: str, device: str) -> list:
    shapes = SETS[set_name]
    if device == "cpu":
        shapes = [dataclasses.replace(s, dtypes=F32) for s in MEMCHECK_SHAPES
                  if s.name in CPU_SMOKE_SHAPES and s.dtypes == F32]
    return gpu_smoke.make_cases(shapes)


def run_case(case, device: str) -> tuple[str, str]:
    """(verdict, detail) of one case: the op on `device` against the C++ CPU kernels."""
    try:
        inputs, grads = gpu_smoke._inputs(case, device)
        outs, input_grads = gpu_smoke._forward_backward(case, inputs, grads, case.backend)
        if device.startswith("cuda"):
            torch.cuda.synchronize()  # an asynchronous launch error belongs to this case
        ref_dtype = torch.float64 if case.dtype == "fp64" else torch.float32
        on_cpu = [t.cpu().to(ref_dtype) for t in inputs]
        ref_outs, ref_grads = gpu_smoke._forward_backward(
            case, on_cpu, [g.cpu().to(ref_dtype) for g in grads], "cpp")
        dtype = gpu_smoke.DTYPES[case.dtype]
        slack = 2.0 if dtype in (torch.float32, torch.float64) else 1.0
        worst_err, worst_ratio, problems = 0.0, 0.0, []
        for kind, got_list, want_list in (("out", outs, ref_outs), ("grad", input_grads, ref_grads)):
            for i, (got, want) in enumerate(zip(got_list, want_list)):
                if got.shape != want.shape or got.dtype != dtype:
                    problems.append(f"{kind}{i} is {tuple(got.shape)} {got.dtype}")
                    continue
                err, ratio = gpu_smoke.error_vs_tolerance(got.cpu(), want, dtype)
                worst_err, worst_ratio = max(worst_err, err), max(worst_ratio, ratio / slack)
        detail = f"{worst_err:.2e} {worst_ratio:.3f}"
        if problems:
            return "BAD", detail + " " + "; ".join(problems)
        return ("ok" if worst_ratio <= 1.0 and not math.isnan(worst_ratio) else "BAD"), detail
    except Exception as error:  # noqa: BLE001  (reported as the case's verdict)
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return "ERROR", f"{type(error).__name__}: {first}"[:240]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("device", nargs="?", default="cuda")
    parser.add_argument("--set", choices=tuple(SETS), default="memcheck")
    parser.add_argument("--deadline-s", type=float, default=math.inf)
    args = parser.parse_args(argv)
    start = time.time()
    todo = cases(args.set, args.device)
    lines = []
    for case in todo:
        if time.time() - start > args.deadline_s:
            break
        verdict, detail = run_case(case, args.device)
        lines.append(gpu_smoke.verdict_line(verdict, case.name, detail))
        print(lines[-1], flush=True)
    bad = [ln for ln in lines if not ln.startswith("ok")]
    cut = f", {len(todo) - len(lines)} not run: --deadline-s {args.deadline_s:.0f}" \
        if len(lines) < len(todo) else ""
    print(f"gpu_sanitizer_case: {'ok' if not bad else f'{len(bad)} cases not ok'} ({args.device}, "
          f"{args.set}: {len(lines)} of {len(todo)} cases{cut}; {time.time() - start:.0f} s)")
    return 1 if bad else 0


if __name__ == "__main__":
    if "cpu" in sys.argv[1:2]:  # a smoke test of this script: the interpreter runs the Triton
        os.environ.setdefault("TRITON_INTERPRET", "1")  # kernels (before adain_ext.triton loads)
    sys.exit(main())
