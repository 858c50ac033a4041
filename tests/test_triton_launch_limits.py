"""Every Triton launch fits what a GPU accepts, checked without one.

The interpreter runs any grid, so a launch plan that a GPU rejects (CUDA allows at most 65535
programs on grid axes 1 and 2, 2**31 - 1 on axis 0) passes every interpreted test. Here every
launcher of every op runs on fake cuda:1 tensors (no memory, no kernel) over shapes that cross
every plan threshold, with the kernel start replaced by a recorder: each launch's grid is checked
against the hardware limits, and each must run with the tensor's device made current.
"""
from __future__ import annotations

import contextlib
import importlib
import itertools

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

triton = pytest.importorskip("triton")
T = pytest.importorskip("adain_ext.triton")
# The modules, not the functions adain_ext.triton exports under the same names.
_common, mean_std, affine, fused = (importlib.import_module("adain_ext.triton." + name)
                                    for name in ("_common", "mean_std", "affine", "fused"))

GRID_LIMITS = (2**31 - 1, 65535, 65535)  # cudaDeviceProp.maxGridSize, every GPU since sm_30

# (N, C, H, W) of the content; the style is the same shape unless given.
SHAPES = [
    (2, 4, 1, 2), (3, 5, 7, 9),                      # tiny rows, packed
    (1, 3, 64, 64), (1, 3, 64, 65),                  # pack_tile: 4096 elements
    (2, 3, 128, 128), (2, 3, 128, 129),              # max_tile: 16384, one row per program
    (1, 8, 32, 64), (1, 8, 32, 65), (1, 12, 45, 46),  # channels_last: 8 x 2048
    (1, 3, 256, 256), (1, 2, 1024, 1024),           # split into segments of min_segment or more
    (1, 70000, 2, 2), (1, 65537, 200, 200),          # N*C above 65535, short and long rows
    (256, 512, 32, 32),                              # relu-sized activations, many rows
    (1, 8, 4096, 8192), (1, 16, 6000, 6000),         # 2**25-element rows: 65536+ tiles each
    (1, 1, 16384, 16384), (1, 1, 65536, 65536),      # 2**28 and 2**32 elements in one row
    (1, 3, 6000, 6000),                              # channels_last with fewer than 8 channels
]
STYLES = [None, (1, 1, 3, 5), (1, 1, 8192, 8192)]  # N, C taken from the content
PROGRAMS = [1, 264]  # the interpreter's plan, and an H100's (132 SMs, 2 programs each)
LAYOUTS = ["contiguous", "channels_last"]
ALL_KERNELS = {"_row_stats_kernel", "_merge_stats_kernel", "_mean_std_backward_kernel",
               "_affine_row_kernel", "_affine_apply_kernel", "_affine_backward_row_kernel",
               "_affine_backward_partial_kernel", "_affine_backward_apply_kernel",
               "_fused_row_kernel"}


class _CurrentDevice:
    """Stands in for torch.cuda.device: records which device a launch made current."""

    index = None

    def __init__(self, device):
        self.target = torch.device(device).index

    def __enter__(self):
        self.saved, _CurrentDevice.index = _CurrentDevice.index, self.target

    def __exit__(self, *exc):
        _CurrentDevice.index = self.saved


@pytest.fixture
def recorded_launches(monkeypatch):
    launches = []

    def record(kernel, grid, args, kwargs):
        name = getattr(kernel, "fn", kernel).__name__
        launches.append((name, tuple(grid), _CurrentDevice.index))
        if "num_warps" in kwargs:  # one config (no autotuning): it must hold the widest tile
            tile = _common.largest_tile(kwargs)
            assert kwargs["num_warps"] >= _common.min_warps(tile), (name, kwargs)

    monkeypatch.setattr(_common, "_run", record)
    # launch() would stop at the first bad grid; the sweep lists them all against its own limits.
    monkeypatch.setattr(_common, "check_grid", lambda kernel, grid: None)
    monkeypatch.setattr(torch.cuda, "device", _CurrentDevice)
    return launches


def _features(shape, layout):
    x = torch.empty(shape, device="cuda:1")
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def _launch_every_op(shape, style_shape, layout):
    """Runs every launcher the ops use (forward and backward of mean_std, affine and fused)."""
    N, C = shape[:2]
    x = _features(shape, layout)
    style = _features((N, C, *style_shape[2:]) if style_shape else shape, layout)
    stats = [torch.empty(N, C, device=x.device) for _ in range(4)]
    unbiased = shape[2] * shape[3] > 1
    x_c, channels_last = _common.canonical_layout(x)
    mean_std.row_stats(x_c, channels_last, 1e-5, unbiased)
    mean_std.mean_std_backward(stats[0], stats[1], x, stats[2], stats[3], unbiased)
    affine.affine_forward(x, stats[0], stats[1], 0.5, 1e-5, unbiased)
    affine.affine_backward(torch.empty_like(x), x, *stats[:3], 0.5, unbiased)
    fused.fused_forward(x, style, 0.5, 1e-5, unbiased)


def test_every_launch_grid_fits_cuda_limits(recorded_launches):
    over = []
    with FakeTensorMode():
        for shape, style, layout, programs in itertools.product(SHAPES, STYLES, LAYOUTS, PROGRAMS):
            with T.limits(programs=programs):
                before = len(recorded_launches)
                _launch_every_op(shape, style, layout)
            for name, grid, device in recorded_launches[before:]:
                assert device == 1, f"{name} launched without cuda:1 made current ({shape})"
                if any(n > most for n, most in zip(grid, GRID_LIMITS)):
                    over.append(f"{name} grid {grid}: {shape} {layout} style {style} "
                                f"programs {programs}")
    assert not over, f"{len(over)} launches exceed CUDA's grid limits:\n" + "\n".join(over[:20])
    # The sweep reaches every kernel (so every path) and launches that need more than 65535 tiles.
    assert {name for name, _, _ in recorded_launches} == ALL_KERNELS
    assert max(grid[0] * (grid[1] if len(grid) > 1 else 1)
               for _, grid, _ in recorded_launches) > 65535


def test_launch_rejects_a_grid_cuda_would_reject():
    """The check runs in the interpreter too, before anything starts."""
    x = torch.zeros(1, 1, 2, 2, device="cuda" if torch.cuda.is_available() else "cpu")
    stats = torch.empty(1, device=x.device)
    for grid, axis in (((1, 65536), 1), ((1, 1, 65536), 2), ((2**31, 1), 0)):
        with pytest.raises(RuntimeError, match=f"at most {GRID_LIMITS[axis]} on grid axis {axis}"):
            _common.launch(mean_std._row_stats_kernel, grid, x, stats, stats, 1, 1, 4, 4, 0.0,
                           0.0, 0, FINALIZE=True, UNBIASED=True, CHANNELS_LAST=False, BLOCK_R=1,
                           BLOCK_L=4)


def test_autotune_keeps_only_configs_that_hold_the_tile():
    configs = [triton.Config({}, num_warps=w) for w in (2, 4, 8, 16)]

    def kept(**constexprs):
        return [c.num_warps for c in _common.configs_that_fit(configs, {}, **constexprs)]

    assert kept(BLOCK_R=1, BLOCK_L=16384) == [8, 16]  # spill with 2-4 warps on sm_90
    assert kept(BLOCK_R=8, BLOCK_L=2048) == [8, 16]
    assert kept(BLOCK_R=1, BLOCK_L=64, BLOCK_L_STYLE=16384) == [8, 16]  # the fused style tile
    assert kept(BLOCK_R=4, BLOCK_L=1024) == [2, 4, 8, 16]
    assert kept(BLOCK_R=1, BLOCK_L=65536) == [16]  # none fits: the most warps


def test_cpu_tensors_need_no_device_guard():
    assert isinstance(_common.on_device(torch.device("cpu")), contextlib.nullcontext)
