"""A small run of every kernel path, forward and backward, both backends, for compute-sanitizer
(memcheck, racecheck): benchmarks/gpu_check.sh runs it under each tool.

The cases are gpu_smoke.py's (each also checked against the float64 reference) on shapes small
enough for the sanitizer's slowdown: packed tiny rows, rows off the 16-byte grid (odd L), one
block per row with the row cached in shared memory, split long rows (fewer than 2 rows per SM),
a style that is split while the content is not, channels_last with C a multiple of the vector
width and not, and misaligned views (base[1:]); in fp32, fp16 and (split) fp64, through the CUDA
C++ and the Triton kernels.

    python benchmarks/gpu_sanitizer_case.py [device]    # cuda (default); cpu: a smoke test
"""
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_smoke  # noqa: E402
from gpu_smoke import Shape  # noqa: E402

DEVICE = sys.argv[1] if len(sys.argv) > 1 else "cuda"

# bf16 takes fp16's paths (the same vector width): leaving it out keeps the run inside its limit.
D = ("fp32", "fp16")
SHAPES = [
    Shape("san_packed", (4, 64, 4, 4), dtypes=D),
    Shape("san_odd_rows", (2, 30, 7, 9), alpha=0.6, dtypes=D),
    Shape("san_cached_rows", (2, 300, 32, 32), dtypes=D),
    Shape("san_split", (1, 2, 128, 130), dtypes=D + ("fp64",)),
    Shape("san_split_style", (2, 4, 8, 8), style=(2, 4, 160, 160), dtypes=D),
    Shape("san_cl_c16", (2, 16, 12, 12), layout="channels_last", dtypes=D),
    Shape("san_cl_c5", (1, 5, 33, 17), layout="channels_last", unbiased=False, dtypes=D),
    Shape("san_sliced", (2, 3, 7, 9), layout="sliced", dtypes=D),
    Shape("san_sliced_cl", (2, 5, 7, 9), layout="sliced_channels_last", dtypes=D),
]

if __name__ == "__main__":
    shapes = SHAPES
    if DEVICE == "cpu":  # a smoke test of this script: three shapes the Triton interpreter
        os.environ.setdefault("TRITON_INTERPRET", "1")  # runs in a second, in fp32
        shapes = [dataclasses.replace(s, dtypes=("fp32",)) for s in SHAPES
                  if s.name in ("san_odd_rows", "san_cl_c5", "san_sliced_cl")]
    lines = gpu_smoke.run_here(gpu_smoke.make_cases(shapes), DEVICE)
    bad = [ln for ln in lines if not ln.startswith("ok")]
    print(f"gpu_sanitizer_case: {'ok' if not bad else f'{len(bad)} cases not ok'} ({DEVICE}, "
          f"{len(lines)} cases)")
    sys.exit(1 if bad else 0)
