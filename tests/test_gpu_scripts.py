"""The GPU check's scripts (benchmarks/gpu_check.sh and what it runs), smoke-run on CPU.

A GPU is lent to few sessions, for minutes, and gpu_check.sh gets one run and maybe a rerun: a
script that crashes there wastes the whole lease, and CI never runs the benchmark files otherwise
(they are not under tests/). So every script the GPU check calls runs here on CPU, small, in a
subprocess, and must finish cleanly with its outputs in place. Speed is not checked.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import adain_ext

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
CUDA = torch.cuda.is_available()

pytestmark = pytest.mark.skipif(not adain_ext.HAS_CPP, reason="the compiled extension is not built")


def _run(*args, env=None, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run([*args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_gpu_check_script_is_valid_bash():
    _run("bash", "-n", str(BENCH / "gpu_check.sh"))


@pytest.mark.skipif(CUDA, reason="with a GPU visible the script would run the whole check")
def test_gpu_check_stops_cleanly_without_a_gpu(tmp_path):
    result = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "torch sees no CUDA GPU" in result.stderr
    assert (tmp_path / "env.txt").exists()


def test_gpu_bench_runs_every_provider(tmp_path):
    """The GPU suite's script on CPU with its smallest shapes, the Triton plugin included (the
    interpreter here): every provider, both directions, both layouts, each checked once against
    the reference by the script itself."""
    _run(sys.executable, str(BENCH / "gpu_bench.py"), "--device", "cpu", "--quick",
         "--dtypes", "fp32", "--plugin", "triton_providers", "--out", str(tmp_path))
    report = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert (tmp_path / "gpu_bench.md").read_text().count("|") > 20
    records = report["records"]
    providers = {r["provider"] for r in records}
    assert {"adain_ext", "triton", "eager", "torch.compile", "instance_norm",
            "group_norm"} <= providers
    for provider in providers:
        for direction in ("forward", "backward"):
            for layout in ("contiguous", "channels_last"):
                assert any(r["provider"] == provider and r["direction"] == direction
                           and r["layout"] == layout and r["ms"] > 0 for r in records), \
                    (provider, direction, layout)
    errors = [r["max_err_vs_reference"] for r in records if "max_err_vs_reference" in r]
    assert errors and max(errors) < 1e-3
    summary = report["summary"]
    for direction in ("forward", "backward"):
        assert summary[f"{direction}: speedup vs torch.compile (geomean)"] > 0
        assert summary[f"{direction}: triton / adain_ext time (worst)"] > 0


def test_sanitizer_case_runs(tmp_path):
    result = _run(sys.executable, str(BENCH / "gpu_sanitizer_case.py"), "cpu")
    assert "gpu_sanitizer_case: ok" in result.stdout


def test_application_benchmarks_run():
    """The apps step: the StyleGAN-like generator step and the style-transfer benchmarks."""
    result = _run(sys.executable, str(BENCH / "bench_stylegan.py"), "--device", "cpu",
                  "--resolution", "16", "--batch", "1", "--rounds", "1")
    assert "fused" in result.stdout and "reference" in result.stdout
    _run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-disable",
         str(BENCH / "bench_style_transfer.py"), env={"ADAIN_BENCH_CPU_SIZE": "32"})


def test_op_benchmarks_run():
    _run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-disable",
         str(BENCH / "bench_ops.py"), env={"ADAIN_BENCH_SHAPES": "2x4x8x8", "ADAIN_BENCH_ROUNDS": "1"})
