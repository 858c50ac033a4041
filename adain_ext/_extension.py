"""Loads the compiled extension (adain_ext._C) if it was built; importing it registers the ops.

Importing adain_ext never fails because a compiler was missing at install time: without _C the
"auto" backend falls back to the pure-PyTorch reference, with one warning.
"""
from __future__ import annotations

import warnings

import torch

# The oldest torch this package is built and tested with (CI tests 2.11.0, the pinned 2.14.1 and
# 2.15.0; pyproject.toml declares the same floor). Older releases lack parts of the torch.library
# API the ops register through, and would fail deep inside; say so here instead.
MIN_TORCH = (2, 11)


def _release(version: str) -> tuple[int, int]:
    major, minor = version.split("+")[0].split(".")[:2]
    return int(major), int(minor)


if _release(torch.__version__) < MIN_TORCH:
    raise ImportError(
        f"adain_ext needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]}, found torch {torch.__version__}: "
        f"pip install 'torch>={MIN_TORCH[0]}.{MIN_TORCH[1]}'")

try:
    from adain_ext import _C  # noqa: F401  (import runs the TORCH_LIBRARY registrations)

    HAS_CPP = True
    IMPORT_ERROR: Exception | None = None
except ImportError as error:  # not built, or built against another torch
    HAS_CPP = False
    IMPORT_ERROR = error
    warnings.warn(
        f"adain_ext: the compiled extension could not be loaded ({error}); backend='auto' falls "
        "back to the pure-PyTorch reference. Build it with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )


def _kernel_device_types() -> frozenset:
    if not HAS_CPP:
        return frozenset()
    return frozenset(
        device for device, key in (("cpu", "CPU"), ("cuda", "CUDA"))
        if torch._C._dispatch_has_kernel_for_dispatch_key("adain::_fused_forward", key)
    )


# Looked up once: torch.compile traces has_kernel() as a plain set lookup.
KERNEL_DEVICE_TYPES = _kernel_device_types()


def has_kernel(device_type: str) -> bool:
    """True when the compiled ops have kernels for this device type ("cpu" or "cuda")."""
    return device_type in KERNEL_DEVICE_TYPES


# Debug hook (tests): the kernel path the last CUDA op took, csrc/cuda/launch.cuh LaunchPath.
CUDA_PATHS = ("none", "packed", "rows", "rows_partial_cache", "split", "channels_last")


def last_cuda_launch() -> dict:
    """Path and geometry of the most recent CUDA op of this process: {"path", "launches", "grid",
    "block", "smem", "segments"} (segments: pieces per row). Raises RuntimeError where the CUDA
    kernels were not built."""
    if not hasattr(torch.ops.adain, "_cuda_last_launch"):
        raise RuntimeError("adain_ext._C was built without CUDA kernels")
    path, launches, grid, block, smem, segments = torch.ops.adain._cuda_last_launch()
    return {"path": CUDA_PATHS[path], "launches": launches, "grid": grid, "block": block,
            "smem": smem, "segments": segments}
