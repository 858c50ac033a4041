"""The CUDA kernels' source (csrc/cuda) run on the CPU through tools/cuda_emu: every op of every
case in cases.py plus cases that force each kernel path (packed rows, cached rows, split rows,
channels_last), in four dtypes, on an emulated 4-SM device, against the CPU kernels and the
float64 reference; and the affine op with each output activation (relu, leaky_relu), and with its
prologue (noise, noise_weight, bias, pre_activation), forward and backward, on each path, against
the float64 reference.

CI has no GPU; without this, a change to the CUDA host code or kernel indexing would only be
compiled (and its machine code inspected by test_cuda_sass.py) before it reached a GPU. The
emulation runs the real kernel and host code (indexing, masking, reductions and their order,
shared-memory caching, path choice, launch geometry) but not the GPU memory model; see
tools/cuda_emu/run.py. On a machine with a GPU, test_cuda.py runs the kernels themselves.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CUDA_INCLUDE = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"


needs_emulation = pytest.mark.skipif(
    torch.cuda.is_available() or torch.version.cuda is None
    or not (CUDA_INCLUDE / "cuda_runtime_api.h").exists(),
    reason="runs where no GPU is visible (else test_cuda.py runs the real kernels), with a CUDA "
    f"build of torch and the CUDA toolkit headers at {CUDA_INCLUDE} (set CUDA_HOME)")


def _emulate(mode: str):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "cuda_emu" / "run.py"), mode],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    return result, result.stdout[-4000:] + result.stderr[-3000:]


@needs_emulation
def test_cuda_kernel_source_under_emulation():
    result, tail = _emulate("quick")
    assert result.returncode == 0, tail
    assert "cuda_emu: 0 failing case/dtype/device combinations" in result.stdout, tail
    assert result.stdout.count("\nok ") + result.stdout.startswith("ok ") >= 100, tail
    # The affine op's activations on each path (run.py's ACTIVATION_CASES, in four dtypes).
    lines = result.stdout.splitlines()
    assert sum(line.startswith("ok ") and " act_" in line for line in lines) >= 16, tail
    # The affine op's prologue on each path (run.py's PROLOGUE_CASES, in four dtypes).
    assert sum(line.startswith("ok ") and " pro_" in line for line in lines) >= 16, tail


@needs_emulation
def test_cuda_launches_within_hardware_limits_over_a_shape_sweep():
    """Every op's launches over row lengths that cross each geometry threshold (packed rows, a
    block per row, each dtype's 48 KiB shared-memory opt-in with the kernels' static scratch
    counted, the opt-in ceiling, split rows, channels_last), on an emulated tiny device, H100 and
    A100, checked against what the hardware rejects: grid, block size, static + dynamic shared
    memory without the opt-in and above the device's per-block maximum. The launches are not
    executed, so this costs seconds, not the hours the shapes would take under emulation."""
    result, tail = _emulate("sweep")
    assert result.returncode == 0, tail
    assert "cuda_emu sweep: 0 of " in result.stdout, tail
    checked = int(result.stdout.split(" launches checked")[0].split()[-1])
    assert checked > 100_000, tail
