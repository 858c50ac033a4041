"""The CUDA kernels' source (csrc/cuda) run on the CPU through tools/cuda_emu: every op of every
case in cases.py plus cases that force each kernel path (packed rows, cached rows, split rows,
channels_last), in four dtypes, on an emulated 4-SM device, against the CPU kernels and the
float64 reference.

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


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="a GPU is visible: test_cuda.py runs the real CUDA kernels")
@pytest.mark.skipif(torch.version.cuda is None,
                    reason="a CPU-only torch has no CUDA headers to build the emulation against")
@pytest.mark.skipif(not (CUDA_INCLUDE / "cuda_runtime_api.h").exists(),
                    reason=f"no CUDA toolkit headers at {CUDA_INCLUDE} (set CUDA_HOME)")
def test_cuda_kernel_source_under_emulation():
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "cuda_emu" / "run.py"), "quick"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    tail = result.stdout[-4000:] + result.stderr[-3000:]
    assert result.returncode == 0, tail
    assert "cuda_emu: 0 failing case/dtype/device combinations" in result.stdout, tail
    assert result.stdout.count("\nok ") + result.stdout.startswith("ok ") >= 100, tail
