"""What every Triton op shares: launch plans (block sizes, segment and pack thresholds), the one
launch path (grid limits, device guard), layout and dtype rules (the same as the C++ kernels',
csrc/checks.h), scalar passing, and op registration.
"""
import contextlib
import dataclasses
import functools
import math
import os
import struct

import torch
import triton
from torch.library import wrap_triton

from adain_ext._vmap import fold_batch_into_n
from adain_ext.fakes import PER_CHANNEL_ARGS

# Under TRITON_INTERPRET=1 @triton.jit returns an InterpretedFunction that runs on CPU tensors.
# wrap_triton passes it through untraced, and it cannot run on fake tensors, so in that mode the
# ops are registered as opaque custom ops with explicit fake kernels (torch.compile then calls
# them as a black box); on a GPU they are triton_ops that torch.compile traces into.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Multi-config autotuning benchmarks every config on the device: GPU only. The interpreter runs
# each kernel with the one num_warps its plan picks (which it ignores anyway). AUTOTUNE_ENV=0
# gives every kernel that one config on a GPU too: no benchmarking (the GPU test suite would
# otherwise tune about 270 keys, some 6 minutes).
AUTOTUNE_ENV = "ADAIN_EXT_TRITON_AUTOTUNE"
AUTOTUNE = (not INTERPRET and torch.cuda.is_available()
            and os.environ.get(AUTOTUNE_ENV, "1") != "0")
AUTOTUNE_WARPS = (2, 4, 8, 16)
# Arguments a tuned config is keyed on, where a kernel has them (triton adds the dtypes): the
# tiles (which bucket the row lengths and the packing), log2 of the number of rows and of the
# style's row length, the layouts, and whether a statistics pass finishes the rows.
AUTOTUNE_KEY = ["ROWS_BUCKET", "STYLE_BUCKET", "BLOCK_R", "BLOCK_L", "BLOCK_L_STYLE",
                "CHANNELS_LAST", "STYLE_CHANNELS_LAST", "FINALIZE"]


def min_warps(tile: int, prologue: bool = False) -> int:
    """The fewest warps that hold a tile of this many elements without spilling registers: at
    most 64 elements a thread. Measured on sm_90 cubins: [1, 16384] fp32 tiles and [8, 2048]
    channels_last ones spill 40 B-5 KB in most kernels with 4 warps, none with 8 (triton 3.6;
    3.8 spills 4 bytes in one bf16 kernel). tests/triton_compile_check.py compiles every kernel
    at its largest tile with this many warps and rejects more than a few spilled registers.
    The kernels with the affine op's prologue (PROLOGUE: pre, p, noise and m live beside x and g)
    need twice as many, at most 32 elements a thread, and a smaller largest tile (max_tile_of)."""
    return max(1, tile // (1024 if prologue else 2048))


def max_tile_of(max_tile: int, prologue: bool) -> int:
    """The largest tile a launch plan gives one program: half of Limits.max_tile for the kernels
    with the prologue. Their backward at [1, 16384] spills 136-496 B in fp32 with 8 warps (255
    registers a thread) and 72-616 B with 16 (128 registers a thread); rows longer than 8192 take
    the split path there."""
    return max(1, max_tile // 2) if prologue else max_tile


def largest_tile(constexprs: dict) -> int:
    """Elements of the largest [BLOCK_R, BLOCK_L] tile a kernel holds (the fused kernel's style
    tile may be wider than its content tile)."""
    return constexprs["BLOCK_R"] * max(constexprs["BLOCK_L"], constexprs.get("BLOCK_L_STYLE", 0))


def configs_that_fit(configs, named_args, **constexprs):
    """Autotune's early_config_prune: drops the configs whose warps would spill the tile."""
    fewest = min_warps(largest_tile(constexprs), constexprs.get("PROLOGUE") is True)
    return ([c for c in configs if c.num_warps >= fewest]
            or [max(configs, key=lambda c: c.num_warps)])


def kernel(fn):
    """@triton.jit, plus on a GPU @triton.autotune over num_warps keyed on coarse buckets
    (AUTOTUNE_KEY). Never keyed on H*W itself, so a new resolution in a known bucket reuses the
    tuned config and the compiled kernel."""
    jitted = triton.jit(fn)
    if not AUTOTUNE:
        return jitted
    configs = [triton.Config({}, num_warps=w) for w in AUTOTUNE_WARPS]
    return triton.autotune(configs=configs, key=AUTOTUNE_KEY,
                           prune_configs_by={"early_config_prune": configs_that_fit})(jitted)


@dataclasses.dataclass(frozen=True)
class Limits:
    """Plan thresholds, in elements. Tests shrink them to drive tiny shapes down every path."""

    max_tile: int = 16384  # largest tile one program holds: rows this long take one pass
    pack_tile: int = 4096  # short rows are packed several per program up to this many elements
    stream_tile: int = 4096  # tile of the streaming kernels, when rows do not fit one program
    cl_rows: int = 8  # channels_last: at least 8 adjacent channels per tile (a 32-byte sector)
    min_segment: int = 16384  # a row is cut into segments (one program each) no shorter than this
    programs: int | None = None  # programs to aim for; default 2 per SM on a GPU, 1 otherwise


_LIMITS = Limits()


@contextlib.contextmanager
def limits(**changes):
    """Temporarily changes the plan thresholds (tests use it to force split and packed paths)."""
    global _LIMITS
    saved = _LIMITS
    _LIMITS = dataclasses.replace(saved, **changes)
    try:
        yield _LIMITS
    finally:
        _LIMITS = saved


def limits_now() -> Limits:
    return _LIMITS


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _target_programs(device: torch.device) -> int:
    if _LIMITS.programs is not None:
        return _LIMITS.programs
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return 2 * _sm_count(index)
    return 1  # the interpreter runs programs one after another: fewer is faster


@dataclasses.dataclass(frozen=True)
class Plan:
    """How R rows of length L are tiled.

    single_pass: each program holds BLOCK_R whole rows (BLOCK_L >= L): one read of x (the packed
                 and whole-rows paths of docs/design.md).
    otherwise:   a statistics pass over `segments` segments of `segment_len` elements per row
                 (merged exactly with Chan's formula), then an elementwise pass of
                 [BLOCK_R, BLOCK_L] tiles (split rows; one segment when the rows alone fill the
                 device).
    """

    rows: int
    length: int
    block_r: int
    block_l: int
    single_pass: bool
    segments: int
    segment_len: int
    num_warps: int

    @property
    def row_blocks(self) -> int:
        return triton.cdiv(self.rows, self.block_r)

    @property
    def l_blocks(self) -> int:
        return triton.cdiv(self.length, self.block_l)

    def grid(self, pieces: int = 1) -> tuple[int]:
        """`pieces` programs (segments or L tiles) per block of rows, flattened onto grid axis 0
        (decoded in the kernels by welford.row_block_and_piece)."""
        return (self.row_blocks * pieces,)

    @property
    def rows_bucket(self) -> int:
        return size_bucket(self.rows)


def size_bucket(size: int) -> int:
    """log2 of a count, for autotune keys: coarse, so tuned configs carry over between sizes."""
    return min(int(math.log2(max(size, 1))), 30)


def _num_warps(tile: int) -> int:
    for warps, largest in ((1, 256), (2, 1024), (4, 4096), (8, 8192)):
        if tile <= largest:
            return warps
    return 16


def plan(rows: int, length: int, channels_last: bool, device: torch.device,
         prologue: bool = False) -> Plan:
    # int(): under torch.compile with dynamic shapes these are SymInts; block sizes must be
    # concrete, so a traced graph is specialised to its shape (eager calls never recompile).
    rows, length = int(rows), int(length)
    lim = _LIMITS
    if prologue:  # the prologue's kernels hold more per element: a smaller largest tile
        lim = dataclasses.replace(lim, max_tile=max_tile_of(lim.max_tile, True))
    programs = _target_programs(device)
    rows_p2 = triton.next_power_of_2(max(rows, 1))
    # Channels_last rows interleave: a tile must span adjacent channels to read whole sectors.
    min_rows = min(lim.cl_rows, rows_p2) if channels_last else 1
    length_p2 = triton.next_power_of_2(max(length, 1))
    if min_rows * length_p2 <= lim.max_tile:
        block_l = length_p2
        block_r = max(min_rows, min(rows_p2, lim.pack_tile // block_l))
        # Keep the GPU busy: fewer rows per program when there are not enough programs.
        while block_r > min_rows and triton.cdiv(rows, block_r) < programs:
            block_r //= 2
        return Plan(rows, length, block_r, block_l, True, 1, length, _num_warps(block_r * block_l))
    block_r = min_rows
    block_l = max(1, min(length_p2, lim.stream_tile // block_r))
    row_blocks = triton.cdiv(rows, block_r)
    segments = max(1, min(triton.cdiv(programs, row_blocks),
                          length // max(lim.min_segment, block_l)))
    segment_len = triton.cdiv(triton.cdiv(length, segments), block_l) * block_l
    segments = triton.cdiv(length, segment_len)  # whole tiles per segment: the last may be short
    return Plan(rows, length, block_r, block_l, False, segments, segment_len,
                _num_warps(block_r * block_l))


def empty_partials(p: Plan, dtype: torch.dtype, device: torch.device):
    """The two [segment, row] buffers a split-rows pass writes: partial_mean and partial_m2, or
    partial_sum_g and partial_sum_g_dev."""
    return (torch.empty(p.segments, p.rows, dtype=dtype, device=device),
            torch.empty(p.segments, p.rows, dtype=dtype, device=device))


# CUDA's grid limits (maxGridSize, the same on every GPU since compute capability 3.0). The
# interpreter has none, so launch() checks them itself: a plan that would fail on a GPU fails
# every CPU test run too.
MAX_GRID = (2**31 - 1, 65535, 65535)


def check_grid(kernel, grid: tuple) -> None:
    for axis, (programs, most) in enumerate(zip(grid, MAX_GRID)):
        if programs > most:
            name = getattr(getattr(kernel, "fn", kernel), "__name__", str(kernel))
            raise RuntimeError(
                f"adain_ext.triton: {name} would launch a grid of {tuple(grid)} programs; CUDA "
                f"allows at most {most} on grid axis {axis} (limits {MAX_GRID}). This is a launch "
                "plan bug in adain_ext/triton, please report it with the input shape.")


def on_device(device: torch.device):
    """The device a kernel must launch on: Triton launches on the current CUDA device (and its
    current stream), so a cuda:1 tensor needs cuda:1 made current, as the C++ ops' device guard
    does. A no-op for CPU tensors (the interpreter)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def launch(kernel, grid: tuple, *args, **kwargs) -> None:
    """Every Triton launch of the package: the grid checked against CUDA's limits, on the device
    of the first tensor argument."""
    check_grid(kernel, grid)
    device = next(a.device for a in args if isinstance(a, torch.Tensor))
    with on_device(device):
        _run(kernel, grid, args, kwargs)


def _run(kernel, grid, args, kwargs) -> None:
    # wrap_triton lets torch.compile trace into a triton_op's kernels. The interpreter's ops are
    # opaque custom ops (see INTERPRET), so they launch directly: nothing traces them, and some
    # torch versions (2.11) reject the interpreter's function object in wrap_triton.
    (kernel if INTERPRET else wrap_triton(kernel))[grid](*args, **kwargs)


def launch_options(p: Plan, block_l_style: int = 0) -> dict:
    """num_warps for a plain launch: the plan's, or more for the fused kernel's style tile
    [BLOCK_R, block_l_style] when it is the wider one. Autotuned kernels pick their own."""
    if AUTOTUNE:
        return {}
    return {"num_warps": max(p.num_warps, _num_warps(p.block_r * block_l_style))}


def split_scalar(value: float) -> tuple[float, float]:
    """Triton passes Python floats as fp32. float64 rows need alpha and eps to float64 accuracy,
    so each is passed as hi + lo (two fp32 numbers summing to the value to ~48 bits)."""
    hi = _to_fp32(value)  # plain Python: this also runs while torch.compile traces the op
    return hi, _to_fp32(value - hi)


def _to_fp32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


# ---- Layout and dtype rules: shared with the C++ backend's fake kernels.
from adain_ext._layout import (  # noqa: E402,F401
    as_grad_of,
    canonical_layout,
    empty_output,
    empty_stats,
    flat_stat,
    like_layout,
    shaped_like,
    stat_dtype,
    stat_shape_of,
)


def register(name: str, fake):
    """Registers fn as the op adain_triton::<name> with the given fake kernel (see INTERPRET) and
    the vmap rule of every op (the prologue's per-channel arguments passed as they are, as for
    the compiled ops: fakes.PER_CHANNEL_ARGS)."""

    def decorate(fn):
        qualname = f"adain_triton::{name}"
        if INTERPRET:
            op = torch.library.custom_op(qualname, mutates_args=())(fn)
        else:
            op = torch.library.triton_op(qualname, mutates_args=())(fn)
        op.register_fake(fake)
        op.register_vmap(fold_batch_into_n(op, PER_CHANNEL_ARGS.get(name, ())))
        return op

    return decorate
