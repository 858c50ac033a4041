"""`adain-ext bench` as a user meets it: options checked before any work, a table that stays whole,
progress on stderr only, --json kept on Ctrl-C, --plot. Tiny shapes, one repeat, no torch.compile
peer (its compilation alone takes longer than all of these)."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest

from adain_ext import bench, bench_harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--shapes", "1x4x4x4;2x3x3x5", "--repeats", "1", "--peers", "eager_reference,instance_norm_exact"]


def run_cli(*args, env=None, code=None, merge_stderr=False):
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "adain_ext", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=not merge_stderr, text=True, timeout=300,
                          stdout=subprocess.PIPE if merge_stderr else None,
                          stderr=subprocess.STDOUT if merge_stderr else None,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if the bench gets as far as the check: validation must come first."""
    def ran(*args, **kwargs):
        raise AssertionError("the bench started working before it rejected the options")
    monkeypatch.setattr(bench, "check", ran)
    monkeypatch.setattr(bench, "contenders", ran)


BAD_OPTIONS = [
    (["--device", "cuda:7" if bench.torch.cuda.is_available() else "cuda"], "--device"),
    (["--device", "gpu0"], "--device"),
    (["--device", "mps"], "--device"),
    (["--shapes", "1x8"], "--shapes"),
    (["--shapes", "1x8x16x0x4"], "--shapes"),
    (["--shapes", "1x8x16x16;0x8x16x16"], "--shapes"),
    (["--shapes", "1x8x1x1"], "--shapes"),
    (["--repeats", "0"], "--repeats"),
    (["--peers", "eager,fast"], "--peers"),
    (["--peers", "eager_reference,eager_reference"], "--peers"),  # one provider twice
    (["--peers", "adain_ext"], "--peers"),
    (["--json", "missing_dir/x.json"], "--json"),
    (["--json", "."], "--json"),
    (["--plot", "missing_dir/x.png"], "--plot"),
    (["--plot", "chart.bmpx"], "--plot"),
]


@pytest.mark.parametrize("argv, option", BAD_OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_option_is_one_line_before_any_work(argv, option, no_work, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if option == "--plot":
        pytest.importorskip("matplotlib")
    with pytest.raises(SystemExit) as exited:
        bench.main(argv)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"adain-ext bench: error: {option}"), err
    assert os.listdir(tmp_path) == []  # nothing created on the way


def test_plot_without_matplotlib_says_what_to_install(no_work, capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(SystemExit) as exited:
        bench.main(["--plot", str(tmp_path / "chart.png")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--plot" in err and "adain_ext[plot]" in err, err


def test_plot_without_kernels_for_the_device_is_refused(no_work, capsys, monkeypatch, tmp_path):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(bench.adain_ext._extension, "has_kernel", lambda device_type: False)
    with pytest.raises(SystemExit) as exited:
        bench.main(["--plot", str(tmp_path / "chart.png")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("adain-ext bench: error: --plot: adain_ext has no"), err


def test_cli_rejects_cuda_without_gpu_in_one_line():
    if bench.torch.cuda.is_available():
        pytest.skip("a GPU is present: --device cuda is valid here")
    result = run_cli("bench", "--device", "cuda", "--json", "missing_dir/x.json")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "--device" in result.stderr and "Traceback" not in result.stderr


# Libraries that speak during the run, planted: a Python warning, a torch log line (torch's
# handlers write to sys.stderr), a direct print to stderr; each at every timed call.
NOISY_BENCH = """
import logging, sys, warnings
from adain_ext import bench, bench_harness
timed = bench_harness.time_call
def noisy_time_call(*args, **kwargs):
    warnings.warn("planted library warning")
    logging.getLogger("torch._inductor").warning("planted torch log line")
    print("planted stderr print", file=sys.stderr)
    return timed(*args, **kwargs)
bench_harness.time_call = noisy_time_call
sys.exit(bench.main(sys.argv[1:]))
"""


def table_lines(output: str) -> list[str]:
    """The header's two lines through the last geometric-mean row."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("shape "))
    end = max(i for i, line in enumerate(lines) if line.startswith("geometric mean"))
    return lines[start - 1:end + 1]


def test_table_reads_whole_and_library_messages_come_once_after_it(tmp_path):
    result = run_cli(*FAST, "--json", str(tmp_path / "r.json"), code=NOISY_BENCH, merge_stderr=True)
    assert result.returncode == 0, result.stdout
    table = table_lines(result.stdout)
    top, units, *rows = table
    assert top.split() == ["adain_ext", "eager_reference", "instance_norm_exact"]
    assert units.split() == ["shape", "direction", "ms", "ms", "speedup", "ms", "speedup"]
    # Nothing but table rows between the header and the end, even with stderr merged in.
    speedup = r"\d+(\.\d+)?x"
    timed_row = rf"\d+x\d+x\d+x\d+\s+(forward|backward)\s+\d+\.\d+(\s+\d+\.\d+\s+{speedup}){{2}}"
    geomean_row = rf"geometric mean\s+(forward|backward)(\s+{speedup}){{2}}"
    for row in rows:
        assert re.fullmatch(timed_row, row) or re.fullmatch(geomean_row, row), f"not a table row: {row!r}"
    assert len(rows) == 2 * 2 + 2
    after = result.stdout.split(table[-1], 1)[1]
    for planted in ("planted library warning", "planted torch log line", "planted stderr print"):
        assert result.stdout.count(planted) == 1 and planted in after, result.stdout

    # Each speedup cell is that peer's time over adain_ext's, as the JSON holds them.
    results = json.loads((tmp_path / "r.json").read_text())
    row = results["rows"][0]
    cells = rows[0].split()
    ours = row["forward:adain_ext"]
    assert float(cells[2]) == pytest.approx(ours * 1e3, abs=6e-4)
    for i, peer in enumerate(["eager_reference", "instance_norm_exact"]):
        assert float(cells[3 + 2 * i]) == pytest.approx(row[f"forward:{peer}"] * 1e3, abs=6e-4)
        shown = float(cells[4 + 2 * i].rstrip("x"))
        assert shown == pytest.approx(row[f"forward:{peer}"] / ours, rel=6e-3, abs=6e-3)


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_goes_to_a_terminal_stderr_only(monkeypatch, capsys):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert bench.main(FAST + ["--no-backward"]) == 0
    out = capsys.readouterr().out
    progress = terminal.getvalue()
    # 2 shapes x 1 direction x 3 contenders x 2 passes.
    assert "[0/12] 1x4x4x4 forward: adain_ext" in progress and "[11/12] 2x3x3x5 forward" in progress
    assert progress.endswith("\r\033[K")  # the status line is erased at the end
    assert "\r" not in out and "elapsed" not in out


def test_ctrl_c_writes_the_json_of_what_finished(monkeypatch, tmp_path, capsys):
    timed, calls = bench_harness.time_call, []

    def interrupted_time_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 7:  # the first shape's forward (3 contenders x 2 passes) has finished
            raise KeyboardInterrupt
        return timed(*args, **kwargs)

    monkeypatch.setattr(bench_harness, "time_call", interrupted_time_call)
    path = tmp_path / "partial.json"
    try:
        status = bench.main(FAST + ["--json", str(path)])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped adain-ext bench without writing the JSON")
    assert status == 130
    results = json.loads(path.read_text())
    assert results["interrupted"] is True
    assert len(results["rows"]) == 1
    assert sorted(results["rows"][0]) == ["channels_last", "dtype", "forward:adain_ext",
                                          "forward:eager_reference", "forward:instance_norm_exact",
                                          "shape"]
    assert "what finished" in capsys.readouterr().err


def test_plot_draws_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "speedups.png"
    rows = [{"shape": [1, 4, 4, 4], "forward:adain_ext": 1.0, "forward:eager_reference": 3.0,
             "backward:adain_ext": 2.0, "backward:eager_reference": 3.0}]
    bench.plot_speedups(rows, ["adain_ext", "eager_reference"], ["forward", "backward"], "test",
                        str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_peers_are_the_harness_names(no_work):
    args = bench.parse_args(["--peers", "eager_reference,instance_norm_exact"])
    assert args.peers == ["eager_reference", "instance_norm_exact"]
    assert bench.parse_args([]).peers == list(bench_harness.DEFAULT_PEERS)
