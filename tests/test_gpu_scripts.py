"""The GPU check's scripts (benchmarks/gpu_check.sh and what it runs), smoke-run on CPU.

A GPU is lent to few sessions, for minutes, and gpu_check.sh gets one run and maybe a rerun: a
script that crashes there wastes the whole lease, and CI never runs the benchmark files otherwise
(they are not under tests/). So every script the GPU check calls runs here on CPU, small, in a
subprocess, and must finish cleanly with its outputs in place. Speed is not checked.

gpu_check.sh itself runs here with stand-ins for python3 and compute-sanitizer that fail or hang:
it must still name every step's failure in summary.md, leave at most 8 files, and leave a summary
when it is killed midway.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
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


# ---- gpu_check.sh's bookkeeping, with stand-ins for python3 and compute-sanitizer.

# Stands in for python3 and compute-sanitizer: records its pid, then hangs when its arguments
# match $FAKE_HANG_ON (an extended regex); succeeds when they match $FAKE_OK_ON; answers the
# environment step's script (`python3 -`) with $FAKE_ENV_FILE's lines; else prints $FAKE_SAYS
# and fails. Every call also prints the OMP_NUM_THREADS it got.
STUB = """#!/usr/bin/env bash
echo $$ >>"$FAKE_PIDS"
echo "fake: OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}" >&2
if [ -n "${FAKE_HANG_ON:-}" ] && [[ "$*" =~ $FAKE_HANG_ON ]]; then
  echo "fake: hanging on $*"
  sleep 300 &
  echo $! >>"$FAKE_PIDS"
  wait
fi
if [ -n "${FAKE_OK_ON:-}" ] && [[ "$*" =~ $FAKE_OK_ON ]]; then
  echo "fake: ok $*"
  exit 0
fi
if [ "${1:-}" = - ] && [ -n "${FAKE_ENV_FILE:-}" ]; then
  cat "$FAKE_ENV_FILE"
  exit 0
fi
echo "${FAKE_SAYS:-fake: refusing} $*" >&2
exit 3
"""
STEPS = ("build", "smoke", "tests", "triton", "bench", "apps", "probe")


def _fake_env(tmp_path, **overrides):
    stub = tmp_path / "stub.sh"
    stub.write_text(STUB)
    stub.chmod(0o755)
    env = dict(os.environ, PYTHON=str(stub), COMPUTE_SANITIZER=str(stub),
               REPORT_PYTHON=sys.executable, GPU_CHECK_FAKE_GPU="1", AUX_TIMEOUT="5",
               FAKE_PIDS=str(tmp_path / "pids"), TMPDIR=str(tmp_path),
               GPU_PREBUILT=str(tmp_path / "no-prebuilt"))
    env.pop("OUT", None)
    env.update(overrides)
    return env


def _rows(summary: str) -> dict:
    """summary.md's step table: name -> status."""
    table = summary.split("| step | status | seconds | limit | note |\n|---|---|---|---|---|\n")[1]
    rows = {}
    for line in table.split("\n\n")[0].splitlines():
        cells = [c.strip() for c in line.split("|")]
        rows[cells[1]] = cells[2]
    return rows


def _assert_returnable(out: Path):
    """What the GPU machine gives back: at most 8 files, no deeper than 2 folders below out."""
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 0 < len(files) <= 8, files
    assert all(len(p.relative_to(out).parts) <= 3 for p in files), files
    assert (out / "summary.md").exists() and (out / "logs.tar.gz").exists()


def _assert_no_stub_left(tmp_path):
    def running_stub(pid):  # alive, not a zombie, and still the stand-in or its sleep
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return False
        return "zombie" not in status and ("stub.sh" in cmdline or "sleep" in cmdline)

    pids = (tmp_path / "pids").read_text().split() if (tmp_path / "pids").exists() else []
    alive = [pid for pid in pids if running_stub(pid)]
    assert not alive, f"processes of the steps still running: {alive}"


@pytest.mark.skipif(CUDA, reason="with a GPU visible the script would run the whole check")
def test_gpu_check_stops_cleanly_without_a_gpu(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), str(out)], cwd=ROOT,
                            env=dict(os.environ, PYTHON=sys.executable, AUX_TIMEOUT="60"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "torch sees no CUDA GPU" in result.stderr
    _assert_returnable(out)
    assert "sees no CUDA GPU" in (out / "summary.md").read_text()


def test_gpu_check_reports_every_step_failing_or_timing_out(tmp_path):
    """Every step fails (the stand-in python3 exits 3) or runs past its limit (the pytest steps
    get SIGINT, the others SIGTERM): each is named with its failure in summary.md, its log is in
    logs.tar.gz, nothing of it keeps running, and at most 8 files come back."""
    out = tmp_path / "out"
    limits = " ".join(f"{s}=2" for s in STEPS + ("memcheck", "racecheck"))
    env = _fake_env(tmp_path, STEP_TIMEOUTS=limits, FAKE_HANG_ON="test_cuda.py|gpu_bench")
    result = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), str(out)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    _assert_returnable(out)
    summary = (out / "summary.md").read_text()
    rows = _rows(summary)
    assert [s for s in STEPS if s in rows] == list(STEPS), summary
    for step in STEPS:
        expected = "TIMEOUT" if step in ("tests", "bench") else "FAILED (rc 3)"
        assert rows[step] == expected, (step, summary)
        assert f"### {step}: last lines of {step}.log" in summary
    assert rows["memcheck"] == rows["racecheck"] == "SKIPPED"
    assert "blocks" not in rows  # an optional step: only when --only names it
    assert "fake: refusing" in summary and "finished" in summary
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {f"{s}.log" for s in STEPS} | {"env.txt"} <= names
    _assert_no_stub_left(tmp_path)
    assert not list(tmp_path.glob("gpu_check.*")), "the work folder was left behind"


def test_gpu_check_runs_the_block_benchmark_only_when_asked(tmp_path):
    """--only blocks runs bench_blocks.py on the GPU (StyleGAN, StarGAN v2, the op alone), its
    tables into the archive; an unknown step is refused in one line."""
    out = tmp_path / "out"
    env = _fake_env(tmp_path, FAKE_OK_ON="bench_blocks.py --device cuda")
    result = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--only", "blocks", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    summary = (out / "summary.md").read_text()
    rows = _rows(summary)
    assert rows.get("blocks") == "ok", summary
    assert not {"smoke", "tests", "bench", "apps"} & set(rows), summary
    with tarfile.open(out / "logs.tar.gz") as tar:
        log = tar.extractfile("./blocks.log").read().decode()
    assert "--blocks stylegan,stargan,op --no-generator" in log
    _assert_returnable(out)
    refused = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--only", "blockz", str(out)],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 64 and "unknown step 'blockz'" in refused.stderr
    _assert_no_stub_left(tmp_path)


def test_gpu_check_killed_mid_step_still_leaves_a_summary(tmp_path):
    out = tmp_path / "out"
    env = _fake_env(tmp_path, FAKE_HANG_ON="gpu_smoke")
    proc = subprocess.Popen(["bash", str(BENCH / "gpu_check.sh"), str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            summary = out / "summary.md"
            if summary.exists() and "| smoke | RUNNING" in summary.read_text():
                break
            time.sleep(0.2)
        else:
            pytest.fail("the smoke step never started")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143
    _assert_returnable(out)
    summary = (out / "summary.md").read_text()
    assert _rows(summary)["smoke"] == "KILLED (SIGTERM)", summary
    assert "killed by SIGTERM during smoke" in summary
    _assert_no_stub_left(tmp_path)


def test_gpu_check_skips_the_sanitizer_when_the_runtime_refuses_the_device(tmp_path):
    out = tmp_path / "out"
    env = _fake_env(tmp_path, FAKE_SAYS="========= Error: Device not supported")
    result = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--only", "sanitizer", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    summary = (out / "summary.md").read_text()
    rows = _rows(summary)
    assert set(rows) == {"probe", "memcheck", "racecheck"}, summary
    assert set(rows.values()) == {"SKIPPED"}
    assert "refused the device: ========= Error: Device not supported" in summary


def test_gpu_check_runs_given_test_ids_in_place_of_the_test_files(tmp_path):
    out = tmp_path / "out"
    ids = tmp_path / "last_failed.txt"
    ids.write_text("# from an earlier run\ntests/test_cuda.py::test_a[odd-float32]\n"
                   "tests/test_triton.py::test_b\n")
    env = _fake_env(tmp_path)
    result = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--quick", "--only-tests-file",
                             str(ids), str(out)], cwd=ROOT, env=dict(env, SKIP_BUILD="1"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    summary = (out / "summary.md").read_text()
    assert list(_rows(summary)) == ["smoke", "tests"], summary
    with tarfile.open(out / "logs.tar.gz") as tar:
        log = tar.extractfile("./tests.log").read().decode()
    assert log.rstrip().endswith(
        "tests/test_cuda.py::test_a[odd-float32] tests/test_triton.py::test_b"), log


# ---- The prebuilt extension (.ci/gpu_machine_stack.sh gpu-prebuilt) on the GPU machine.

FAKE_MACHINE = """versions: NVIDIA H100 80GB HBM3 (132 SMs, sm_90, driver 580.00); python 3.12.3, torch 2.11.0+cu130 (CUDA 13.0), triton 3.6.0, nvcc V13.0.88, setuptools 81.0.0, numpy 2.5.2
capability: 9.0
python_abi: 3.12
torch_release: 2.11.0
torch_cuda: 13.0
xdist: True
pytest_timeout: True
"""
PREBUILT_SO = "_C.cpython-312-x86_64-linux-gnu.so"


def _checkout_copy(tmp_path) -> Path:
    """A checkout whose adain_ext/ gpu_check.sh may write into: this one's benchmarks/, a csrc/
    and a setup.py of its own (the prebuilt file's sources), an empty adain_ext/."""
    repo = tmp_path / "repo"
    shutil.copytree(BENCH, repo / "benchmarks",
                    ignore=shutil.ignore_patterns("results", "__pycache__"))
    (repo / "csrc").mkdir()
    (repo / "csrc" / "adain.cpp").write_text("// the kernels\n")
    (repo / "setup.py").write_text("# the build\n")
    (repo / "adain_ext").mkdir()
    return repo


def _prebuilt(repo: Path, **fields) -> Path:
    """.gpu-prebuilt/ as gpu-prebuilt writes it, for this checkout's sources and the fake
    machine, with `fields` changed in its manifest."""
    folder = repo / ".gpu-prebuilt"
    folder.mkdir()
    (folder / PREBUILT_SO).write_bytes(b"\x7fELF a stand-in")
    (folder / "_build_config.py").write_text("CONFIG = {}\n")
    sources = subprocess.run(["bash", str(repo / "benchmarks" / "gpu_check.sh"), "--source-hash"],
                             capture_output=True, text=True, check=True).stdout.strip()
    manifest = dict(python_abi="3.12", torch_release="2.11.0", torch_cuda="13.0",
                    cuda_archs="9.0", sources=sources, file=PREBUILT_SO, built="by the test")
    manifest.update(fields)
    (folder / "manifest.txt").write_text("".join(f"{k}: {v}\n" for k, v in manifest.items()))
    return folder


def _run_check_in(repo: Path, tmp_path, *args, **env):
    env_file = tmp_path / "machine.txt"
    env_file.write_text(FAKE_MACHINE)
    env = _fake_env(tmp_path, FAKE_ENV_FILE=str(env_file), FAKE_OK_ON="has_kernel",
                    GPU_PREBUILT=".gpu-prebuilt", **env)
    result = subprocess.run(["bash", str(repo / "benchmarks" / "gpu_check.sh"), *args,
                             str(tmp_path / "out")], cwd=repo, env=env, capture_output=True,
                            text=True, timeout=120)
    summary = (tmp_path / "out" / "summary.md").read_text()
    with tarfile.open(tmp_path / "out" / "logs.tar.gz") as tar:
        logs = {Path(m.name).name: tar.extractfile(m).read().decode()
                for m in tar.getmembers() if m.isfile()}
    return result, summary, logs


def test_gpu_check_loads_a_matching_prebuilt_extension(tmp_path):
    """The manifest matches the machine and the checkout: _C is copied into adain_ext/ and checked
    to load, nothing is built; the tests run with workers x OpenMP threads = the cores."""
    repo = _checkout_copy(tmp_path)
    _prebuilt(repo)
    result, summary, logs = _run_check_in(repo, tmp_path, "--only", "build,tests",
                                          GPU_CHECK_CORES="16")
    assert "refused" not in result.stdout, result.stdout
    rows = _rows(summary)
    assert rows["build"] == "ok", summary
    assert "prebuilt .gpu-prebuilt/" + PREBUILT_SO in summary
    assert (repo / "adain_ext" / PREBUILT_SO).read_bytes() == b"\x7fELF a stand-in"
    assert "setup.py" not in logs["build.log"] and "has_kernel" in logs["build.log"]
    # 8 xdist workers (half the 16 cores) x 2 OpenMP threads each.
    assert " -n 8 " in logs["tests.log"] and "OMP_NUM_THREADS=2" in logs["tests.log"], logs["tests.log"]
    assert "setuptools 81.0.0, numpy 2.5.2" in summary


@pytest.mark.parametrize("change, why", [
    ({"torch_release": "2.10.0"}, "built for torch_release 2.10.0, this machine has 2.11.0"),
    ({"python_abi": "3.11"}, "built for python_abi 3.11, this machine has 3.12"),
    ({"cuda_archs": "8.0;8.6"}, "built for CUDA archs 8.0;8.6, this GPU is sm_90"),
    ({"sources": "0123456789abcdef"}, "built from other csrc/ or setup.py"),
])
def test_gpu_check_refuses_a_mismatched_prebuilt_extension_and_builds(tmp_path, change, why):
    """A prebuilt _C for another torch, Python, GPU or source: one line says why, nothing is
    copied, and the build on the machine runs instead (the stand-in python3 fails it)."""
    repo = _checkout_copy(tmp_path)
    _prebuilt(repo, **change)
    result, summary, logs = _run_check_in(repo, tmp_path, "--only", "build")
    refusals = [ln for ln in result.stdout.splitlines() if ln.startswith("gpu_check: prebuilt")]
    assert len(refusals) == 1 and refusals[0].startswith(
        "gpu_check: prebuilt adain_ext/_C refused, building here instead: "), result.stdout
    assert why in refusals[0], refusals[0]
    assert not (repo / "adain_ext" / PREBUILT_SO).exists()
    assert "fake: refusing setup.py build_ext --inplace" in logs["build.log"]
    assert _rows(summary)["build"] == "FAILED (rc 3)", summary
    assert "prebuilt refused: " + why in summary


# ---- The smoke step.


def test_smoke_passes_on_cpu():
    result = _run(sys.executable, str(BENCH / "gpu_smoke.py"), "--device", "cpu", "--quick")
    lines = result.stdout.splitlines()
    verdicts = [ln for ln in lines if ln.split(" ", 1)[0] in ("ok", "BAD", "ERROR")]
    assert verdicts and all(ln.startswith("ok ") for ln in verdicts), result.stdout
    names = {ln.split()[1] for ln in verdicts}
    for op in ("fused", "affine", "mean_std"):
        for backend in ("cpp", "triton"):
            for dtype in ("fp32", "fp16", "bf16", "fp64"):
                assert f"{op}/{backend}/{dtype}/cl_c5" in names
        assert f"{op}/cpp/fp32/optin_relu4_1" in names  # the one run in a process of its own
    assert f"gpu_smoke: {len(verdicts)} ok, 0 BAD, 0 ERROR" in lines[-1]


def test_smoke_reports_a_large_shape_out_of_memory_as_such(tmp_path):
    """The large shapes' group runs out of memory (forced): its cases say "out of memory" with
    verdict OOM, never BAD or a kernel ERROR, and the other cases still get their verdicts."""
    result = subprocess.run(
        [sys.executable, str(BENCH / "gpu_smoke.py"), "--device", "cpu", "--jobs", "2",
         "--shapes", "sliced,large_cl_2p25,large_row_2p28", "--ops", "fused", "--backends", "cpp",
         "--dtypes", "fp32"], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1", GPU_SMOKE_FORCE_OOM="large_cl_2p25,large_row_2p28"))
    lines = result.stdout.splitlines()
    assert result.returncode == 1, result.stdout + result.stderr
    verdicts = {ln.split()[1]: ln for ln in lines if ln.split(" ", 1)[0] in ("ok", "BAD", "ERROR", "OOM")}
    assert verdicts["fused/cpp/fp32/sliced"].startswith("ok ")
    for shape in ("large_cl_2p25", "large_row_2p28"):
        line = verdicts[f"fused/cpp/fp32/{shape}"]
        assert line.startswith("OOM ") and "out of memory" in line and "no verdict on the kernel" in line, line
    assert "gpu_smoke: 1 ok, 0 BAD, 0 ERROR, 2 OOM" in lines[-1], result.stdout


def _benchmark_script(name: str):
    """A script of benchmarks/ imported as a module (they import their siblings by name)."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture
def smoke():
    gpu_smoke = _benchmark_script("gpu_smoke")
    shape = gpu_smoke.Shape("t", (2, 3, 5, 7), style=(2, 3, 4, 4), alpha=0.7)
    return gpu_smoke, shape


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_smoke_flags_a_wrong_forward_or_backward(smoke, monkeypatch, dtype):
    gpu_smoke, shape = smoke
    case = gpu_smoke.SmokeCase("fused", "cpp", dtype, shape)
    assert gpu_smoke.run_case(case, "cpu")[0] == "ok"
    right = adain_ext.adain

    def one_element_off(*args, **kwargs):  # a kernel that gets one output element wrong
        out = right(*args, **kwargs)
        return out + torch.zeros_like(out).flatten().index_fill(0, torch.tensor([17]), 1.0).view_as(out)

    def gradient_off(*args, **kwargs):  # right forward, gradients twice what they should be
        out = right(*args, **kwargs)
        out.register_hook(lambda g: g * 2)
        return out

    def raises(*args, **kwargs):
        raise RuntimeError("CUDA error: invalid argument\nmore")

    for planted, verdict in ((one_element_off, "BAD"), (gradient_off, "BAD"), (raises, "ERROR")):
        monkeypatch.setattr(adain_ext, "adain", planted)
        got, detail = gpu_smoke.run_case(case, "cpu")
        assert got == verdict, (planted.__name__, detail)
    assert detail == "RuntimeError: CUDA error: invalid argument"


def test_smoke_runs_the_large_shapes_one_at_a_time_in_one_process(smoke):
    """No shard of the ordinary cases holds a large shape: they all go to one process of their
    own, which runs them one after the other (two at once could exhaust the card)."""
    gpu_smoke, _ = smoke
    args = gpu_smoke.argparse.Namespace(device="cuda", ops=list(gpu_smoke.OPS),
                                        backends=list(gpu_smoke.BACKENDS), dtypes=list(gpu_smoke.DTYPES),
                                        quick=False, jobs=7)
    cases = gpu_smoke.make_cases(gpu_smoke.SHAPES + gpu_smoke.LARGE_SHAPES)
    large = [c for c in cases if c.shape in gpu_smoke.LARGE_SHAPES]
    shared = [c for c in cases if c not in large]
    jobs = gpu_smoke.plan_jobs(args, shared, gpu_smoke.FRESH_PROCESS_SHAPES, large)
    holding = [cases_ for _, cases_ in jobs if set(cases_) & set(large)]
    assert holding == [large], "the large cases are split over several processes"
    assert len(jobs) == 7 + len(gpu_smoke.FRESH_PROCESS_SHAPES) + 1
    cmd = next(cmd for cmd, cases_ in jobs if cases_ == large)
    assert cmd[cmd.index("--shapes") + 1] == "large_cl_2p25,large_row_2p28"


def test_smoke_error_measure(smoke):
    gpu_smoke, _ = smoke
    want = torch.tensor([1.0, -2.0, 100.0], dtype=torch.float64)
    atol, rtol = gpu_smoke.TOLERANCES[torch.float32]
    assert gpu_smoke.error_vs_tolerance(want.float(), want, torch.float32) == (0.0, 0.0)
    err, ratio = gpu_smoke.error_vs_tolerance(want.float() + torch.tensor([0, 0, 1.0]), want,
                                              torch.float32)
    assert err == 1.0 and ratio == pytest.approx(1.0 / (atol * 100 + rtol * 100))  # atol x max|want|
    nan = torch.tensor([1.0, float("nan"), 100.0])
    assert gpu_smoke.error_vs_tolerance(nan, want, torch.float32)[1] == float("inf")


# ---- The summary's sections.


def test_report_gpu_check_sections(tmp_path):
    """report.py gpu-check: counts and failed node ids from JUnit XML (written to
    failed_tests.txt for the --quick rerun), each benchmark ratio beside its target."""
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    (out / "junit-tests.xml").write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_cuda" name="test_ok[a-b]" time="2.5"/>'
        '<testcase classname="tests.test_cuda" name="test_bad[odd-float32]" time="0.1">'
        '<failure message="AssertionError: 3 != 4">trace</failure></testcase>'
        '<testcase classname="tests.test_cuda" name="test_skip"><skipped message="x"/></testcase>'
        '<testcase time="0.000"/></testsuite></testsuites>')
    (work / "triton.log").write_text("FAILED tests/test_triton.py::test_t[x] - Timeout >60.0s\n")
    (out / "gpu_bench.json").write_text(json.dumps({
        "meta": {"device_name": "NVIDIA H200", "copy_gbs": 4300.0, "configs": 4, "seconds": 30},
        "summary": {"forward: speedup vs compiled_reference (geomean)": 1.2,
                    "forward: min % of copy bandwidth, shapes >= 64 MB": 85.0},
        "records": [{"provider": "adain_ext", "shape": [1, 2, 3, 4], "dtype": "fp32",
                     "layout": "contiguous", "ms": 0.1, "direction": "forward"}]}))
    (work / "apps.log").write_text("device: NVIDIA H200\n  fused             10.0 ms\n"
                                   "  reference         14.0 ms   fused is 1.40x faster\n")
    (work / "style_transfer.json").write_text(json.dumps({"benchmarks": [
        {"group": g, "extra_info": {"provider": p}, "stats": {"mean": t}}
        for g, p, t in (("stylize cuda 8x512", "reference", 0.9),
                        ("stylize cuda 8x512", "adain_ext-fp32", 0.6),
                        ("stylize cuda 8x512", "adain_ext-fp16", 0.2),
                        ("train-step cuda 8x256", "reference", 0.3),
                        ("train-step cuda 8x256", "adain_ext-bf16", 0.25))]}))
    result = _run(sys.executable, str(BENCH / "report.py"), "gpu-check", "--work", str(work),
                  "--out", str(out))
    text = result.stdout
    assert "| tests | 1 | 1 | 0 | 1 |" in text
    assert "| triton | no junit-triton.xml: from the log | 1 failed | | |" in text
    assert "| forward: speedup vs compiled_reference (geomean) | 1.2 | >= 1.5 | **no** |" in text
    assert "| forward: min % of copy bandwidth, shapes >= 64 MB | 85 | >= 80 | yes |" in text
    assert "| StyleGAN step: fused speedup over reference | 1.40 | >= 1.3 | yes |" in text
    assert ("| stylize cuda 8x512: adain_ext-fp16 over reference (adain_ext-fp32 1.50, "
            "adain_ext-fp16 4.50) | 4.50 | >= 3 | yes |") in text
    assert "| train-step cuda 8x256: adain_ext-bf16 over reference" in text
    assert "| 1.20 | >= 1.5 | **no** |" in text
    assert "1 of 4 configurations measured" in text
    assert (out / "failed_tests.txt").read_text().split() == [
        "tests/test_cuda.py::test_bad[odd-float32]", "tests/test_triton.py::test_t[x]"]


def test_gpu_bench_runs_every_provider(tmp_path):
    """The GPU suite's script on CPU with its smallest shapes, the Triton providers included (the
    interpreter here): every provider, both directions, both layouts, each checked once against
    the reference by the script itself."""
    _run(sys.executable, str(BENCH / "gpu_bench.py"), "--device", "cpu", "--quick",
         "--dtypes", "fp32", "--out", str(tmp_path))
    report = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert (tmp_path / "gpu_bench.md").read_text().count("|") > 20
    records = report["records"]
    providers = {r["provider"] for r in records}
    assert {"adain_ext", "adain_ext_triton", "eager_reference", "compiled_reference",
            "instance_norm_biased", "group_norm_biased"} <= providers
    for provider in providers:
        for direction in ("forward", "backward"):
            for layout in ("contiguous", "channels_last"):
                assert any(r["provider"] == provider and r["direction"] == direction
                           and r["layout"] == layout and r["ms"] > 0 for r in records), \
                    (provider, direction, layout)
    errors = [r["max_err_vs_reference"] for r in records if "max_err_vs_reference" in r]
    assert errors and max(errors) < 1e-3
    # 5 quick shapes (a 3-D and a 5-D among them) x 2 layouts.
    assert report["meta"]["configs_done"] == report["meta"]["configs"] == 10
    summary = report["summary"]
    for direction in ("forward", "backward"):
        assert summary[f"{direction}: speedup vs compiled_reference (geomean)"] > 0
        assert summary[f"{direction}: adain_ext_triton / adain_ext time (worst)"] > 0


# gpu_bench run with one more provider in the harness's table that kills its process when it is first called, as the
# step's time limit would while that provider runs.
KILLER_RUN = """import os
import signal
import sys

import gpu_bench
from adain_ext import bench_harness


def _killed(content, style):
    os.kill(os.getpid(), signal.SIGKILL)


bench_harness.PROVIDERS["killed_here"] = bench_harness.Provider(
    "killed_here", "kills its process", lambda device: _killed)
sys.exit(gpu_bench.main(sys.argv[1:]))
"""


def test_gpu_bench_leaves_each_provider_in_the_json_when_killed(tmp_path):
    """The JSON is written after every provider: a run killed while it times the second
    provider of its first configuration leaves the first one's records. The compiled provider
    named first waits until the eager ones are done, so it has none."""
    (tmp_path / "killer_run.py").write_text(KILLER_RUN)
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(BENCH)]))
    result = subprocess.run(
        [sys.executable, str(tmp_path / "killer_run.py"), "--device", "cpu", "--quick", "--dtypes",
         "fp32", "--layouts", "contiguous", "--providers",
         "compiled_reference,adain_ext,killed_here", "--out", str(tmp_path / "out")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "gpu_bench.json").read_text())
    got = {(r["provider"], r["direction"]) for r in report["records"]}
    assert got == {("adain_ext", "forward"), ("adain_ext", "backward")}, report["records"]
    assert report["meta"]["compiled_providers"] == ["compiled_reference"]


def test_gpu_bench_reports_compile_time_apart(tmp_path):
    """The compiled provider runs after the eager ones, compiles once per configuration and
    direction (compile_s, apart from its timed ms) and reuses those graphs for the timing."""
    _run(sys.executable, str(BENCH / "gpu_bench.py"), "--device", "cpu", "--quick",
         "--dtypes", "fp32", "--layouts", "contiguous", "--shapes", "2x8x16x16,4x16x256",
         "--providers", "compiled_reference,adain_ext", "--out", str(tmp_path))
    report = json.loads((tmp_path / "gpu_bench.json").read_text())
    providers = [r["provider"] for r in report["records"]]
    assert providers == ["adain_ext"] * 4 + ["compiled_reference"] * 4, providers
    compiled = [r for r in report["records"] if r["provider"] == "compiled_reference"]
    assert all(r["compile_s"] > 0 and r["ms"] > 0 for r in compiled), compiled
    meta = report["meta"]
    assert meta["compiled_configs_done"] == 2
    assert meta["compile_seconds"] >= sum(r["compile_s"] for r in compiled)
    assert "compilation" in (tmp_path / "gpu_bench.md").read_text()


@pytest.fixture
def gpu_bench():
    return _benchmark_script("gpu_bench")


def test_gpu_bench_providers_are_the_harness_names(gpu_bench):
    """--providers takes the suite's providers and any other of the harness's table."""
    assert gpu_bench._provider("adain_ext_triton_compiled").compiled
    assert gpu_bench._provider("instance_norm_exact").name == "instance_norm_exact"
    assert gpu_bench._provider("no_such_provider") is None


def test_gpu_bench_times_the_gpu_with_the_harness_timer(gpu_bench, monkeypatch):
    """On a GPU (faked here): CUDA-graph replays for small calls, falling back to CUDA events with
    the L2 cache flushed when a call cannot be captured; events with the flush for large calls."""
    from adain_ext import bench_harness

    calls = []

    def graph_replays(fn, device):
        calls.append("graph")
        raise RuntimeError("operation not permitted when stream is capturing")

    def events(fn, device, repeats, warmup, flush_l2):
        calls.append(("events", repeats, flush_l2))
        return 2e-3

    monkeypatch.setattr(bench_harness, "time_graph_replays", graph_replays)
    monkeypatch.setattr(bench_harness, "time_call", events)
    monkeypatch.setattr(bench_harness, "calls_within", lambda fn, device, seconds: 7)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("sync"))
    assert gpu_bench.time_ms(lambda: None, "cuda", quick=True, graph=True) == (2.0, "cuda-events")
    assert calls == ["graph", "sync", ("events", 7, True)]
    calls.clear()
    assert gpu_bench.time_ms(lambda: None, "cuda", quick=True, graph=False) == (2.0, "cuda-events")
    assert calls == [("events", 7, True)]


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
