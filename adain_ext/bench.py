"""`adain-ext bench`: checks the fused op against the reference on the available device, then times
it against its peers and prints one table row per shape and direction: each contender's median
milliseconds per call, and beside each peer the speedup of adain_ext over it (the peer's time
divided by adain_ext's: above 1, adain_ext is faster).

The peers are providers of adain_ext/bench_harness.py; --help lists them.

Progress goes to stderr while it runs; messages the libraries print meanwhile are held back and
shown once after the table. Ctrl-C stops the run and still writes --json with what finished.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import re
import signal
import sys
import tempfile
import time
import warnings

import torch

import adain_ext
from adain_ext import bench_harness, reference
from adain_ext.bench_harness import DIRECTIONS, OURS
from adain_ext.env import available_memory

# Whom --peers may name: the default ones first, then the rest of the harness's table.
PEERS = (*bench_harness.DEFAULT_PEERS,
         *(name for name in bench_harness.PROVIDERS if name not in (OURS, *bench_harness.DEFAULT_PEERS)))
# Max abs error of the check against the float64 reference, per dtype.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 2e-1}
# Messages that say nothing about this run: torch.compile imports torch.utils.cpp_extension, which
# logs that it found no CUDA runtime even when nothing here builds or runs CUDA code.
HARMLESS_ON_CPU = ("No CUDA runtime is found",)
# torch's log lines start "W1201 16:29:10.717000 9100 path:line] [0/1] ": the time, process and
# compile id differ on every line, so they are dropped to show each message once.
TORCH_LOG_PREFIX = re.compile(r"^([DIWEC])\d{4} \d\d:\d\d:\d\d\.\d+ \d+ (?=\S+\] )|(?<=\] )\[[\d/]+\] ")


def contenders(device: torch.device, peers=bench_harness.DEFAULT_PEERS) -> dict:
    """{name: callable}: adain_ext where it has kernels for the device, then the peers that run
    there."""
    return bench_harness.available(device, [OURS, *peers])


def check(device: torch.device, dtype: torch.dtype) -> float:
    """Max abs error of the fused op against the float64 reference on a representative shape."""
    content, style = bench_harness.make_inputs((2, 64, 33, 31), device, dtype)
    out = adain_ext.adain(content, style)
    expected = reference.adain(content.double(), style.double())
    return (out.double() - expected).abs().max().item()


class Progress:
    """A one-line status on stderr that rewrites itself, where stderr is a terminal (nothing
    otherwise: in a log the table rows, printed as they finish, already show the progress)."""

    def __init__(self, total: int, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty()
        self.total, self.done, self.started = total, 0, time.perf_counter()

    def show(self, what: str):
        if self.live:
            elapsed = int(time.perf_counter() - self.started)
            self.stream.write(f"\r\033[K[{self.done}/{self.total}] {what}, "
                              f"{elapsed // 60}:{elapsed % 60:02d} elapsed")
            self.stream.flush()

    def step(self):
        self.done += 1

    def clear(self):
        if self.live:
            self.stream.write("\r\033[K")
            self.stream.flush()


def add_result(rows, shape, dtype, channels_last, direction, times):
    if not rows or rows[-1]["shape"] != list(shape):
        rows.append({"shape": list(shape), "dtype": str(dtype).split(".")[-1],
                     "channels_last": channels_last})
    rows[-1].update({f"{direction}:{name}": t for name, t in times.items()})


def speedup_text(ratio: float) -> str:
    """Three significant digits, as far as the column allows (4.43x, 21.1x, 1406x)."""
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.1f}x" if ratio < 100 else f"{ratio:.0f}x"


def shape_text(shape) -> str:
    return "x".join(map(str, shape))


class Table:
    """The two-level header: each contender's name over its columns, the unit under it; each peer
    has a time column and, when adain_ext ran, the speedup of adain_ext over that peer."""

    SHAPE, DIRECTION, TIME, SPEEDUP = 16, 9, 9, 8

    def __init__(self, names):
        self.names = list(names)
        self.ratios = OURS in self.names

    def _group_width(self, name) -> int:
        """The columns' width, or the name's where it is longer (right-aligned under it)."""
        columns = self.TIME + (1 + self.SPEEDUP if self.ratios and name != OURS else 0)
        return max(columns, len(name))

    def header(self) -> str:
        top = [" " * self.SHAPE, " " * self.DIRECTION]
        units = [f"{'shape':<{self.SHAPE}}", f"{'direction':<{self.DIRECTION}}"]
        for name in self.names:
            top.append(f"{name:>{self._group_width(name)}}")
            unit = f"{'ms':>{self.TIME}}"
            if self.ratios and name != OURS:
                unit += f" {'speedup':>{self.SPEEDUP}}"
            units.append(unit.rjust(self._group_width(name)))
        return "  ".join(top).rstrip() + "\n" + "  ".join(units)

    def row(self, shape, direction, times) -> str:
        cells = [f"{shape_text(shape):<{self.SHAPE}}", f"{direction:<{self.DIRECTION}}"]
        for name in self.names:
            cell = f"{times[name] * 1e3:>{self.TIME}.3f}"
            if self.ratios and name != OURS:
                cell += f" {speedup_text(times[name] / times[OURS]):>{self.SPEEDUP}}"
            cells.append(cell.rjust(self._group_width(name)))
        return "  ".join(cells)

    def geomean_row(self, direction, speedups: dict) -> str:
        cells = [f"{'geometric mean':<{self.SHAPE}}", f"{direction:<{self.DIRECTION}}"]
        for name in self.names:
            cell = " " * self.TIME
            if self.ratios and name != OURS:
                cell += f" {speedup_text(speedups[name]):>{self.SPEEDUP}}"
            cells.append(cell.rjust(self._group_width(name)))
        return "  ".join(cells).rstrip()


def geomean(values):
    return math.exp(sum(map(math.log, values)) / len(values))


def geomean_speedups(rows, direction, names) -> dict:
    """{peer: geometric mean over the rows that measured this direction of peer / adain_ext}."""
    measured = [r for r in rows if f"{direction}:{OURS}" in r]
    return {name: geomean([r[f"{direction}:{name}"] / r[f"{direction}:{OURS}"] for r in measured])
            for name in names if name != OURS and measured}


@contextlib.contextmanager
def held_messages(notes: list[str], harmless=()):
    """Holds back what libraries print to sys.stderr (torch's logging writes there) and their
    Python warnings while the table is printed; appends each distinct message once to `notes`."""
    buffer = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(buffer):
        warnings.simplefilter("always")
        try:
            yield
        finally:
            lines = [f"{w.category.__name__}: {w.message}" for w in caught]
            lines += [TORCH_LOG_PREFIX.sub(lambda m: f"{m[1]} " if m[1] else "", line)
                      for line in buffer.getvalue().splitlines()]
            for line in lines:
                if line.strip() and line not in notes and not any(h in line for h in harmless):
                    notes.append(line)


def plot_speedups(rows, names, directions, title: str, path: str):
    """One panel per direction; per shape, a bar per peer with adain_ext's speedup over it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = [name for name in names if name != OURS]
    fig, axes = plt.subplots(1, len(directions), figsize=(5.2 * len(directions), 4.2), sharey=True,
                             squeeze=False)
    width = 0.8 / len(peers)
    for ax, direction in zip(axes[0], directions):
        measured = [r for r in rows if f"{direction}:{OURS}" in r]
        for i, peer in enumerate(peers):
            speedups = [r[f"{direction}:{peer}"] / r[f"{direction}:{OURS}"] for r in measured]
            xs = [j + (i - (len(peers) - 1) / 2) * width for j in range(len(measured))]
            bars = ax.bar(xs, speedups, width, label=peer)
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(measured)), [shape_text(r["shape"]) for r in measured],
                      rotation=20, fontsize=8)
        ax.set_title(direction)
        ax.set_xlabel("shape (N x C x trailing dims)")
    axes[0][0].set_ylabel("speedup: peer time / adain_ext time")
    # One legend under the panels, where it cannot cover a bar.
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, title="peer", fontsize=8, loc="lower center", ncol=len(peers),
               frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _parse_device(text: str) -> tuple[torch.device | None, str]:
    try:
        device = torch.device(text)
    except RuntimeError:
        return None, f"{text!r} is not a device (use cpu, cuda or cuda:N)"
    if device.type not in ("cpu", "cuda"):
        return None, f"{text!r}: adain-ext bench runs on cpu or cuda"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return None, "no CUDA GPU is available here (torch.cuda.is_available() is False); use --device cpu"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return None, f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
    return device, ""


def _parse_shapes(text: str) -> tuple[list | None, str]:
    shapes = []
    for item in text.split(";"):
        try:
            shape = tuple(int(v) for v in item.strip().split("x"))
        except ValueError:
            shape = ()
        if len(shape) < 3 or min(shape) < 1:
            return None, (f"{item!r} is not NxCx... (at least three positive integers joined by x: "
                          "NxCxT, NxCxHxW, NxCxDxHxW)")
        if math.prod(shape[2:]) < 2:
            return None, (f"{item!r}: each (n, c) row needs at least 2 elements (the unbiased "
                          "variance divides by L - 1)")
        shapes.append(shape)
    return shapes, ""


def _unwritable(path: str) -> str:
    """Why a file cannot be written at `path` ("" when it can), checked before the run so that
    the run is not lost at its end."""
    if os.path.isdir(path):
        return f"{path!r} is a folder"
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        return f"folder {folder!r} does not exist"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return f"{path!r} is not writable"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot write in folder {folder!r}"
    return ""


def _plot_problem(path: str) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        return "needs matplotlib: pip install 'adain_ext[plot]' (or pip install matplotlib)"
    formats = Figure().canvas.get_supported_filetypes()
    extension = os.path.splitext(path)[1].lstrip(".").lower()
    if extension not in formats:
        return f"{path!r}: the file name must end in one of .{', .'.join(sorted(formats))}"
    return _unwritable(path)


# Tensors of a shape's size alive at once while a shape is timed (content, style, output, their
# gradients and the peers' temporaries): a lower bound, for the memory check before the run.
TENSORS_PER_SHAPE = 6


def _too_big(shapes, device: torch.device, dtype: torch.dtype) -> str:
    """Why a shape cannot fit the device's memory ("" when all can), before anything runs."""
    available = available_memory(device)
    if available is None:
        return ""
    itemsize = torch.empty((), dtype=dtype).element_size()
    for shape in shapes:
        need = math.prod(shape) * itemsize * TENSORS_PER_SHAPE
        if need > available:
            return (f"{shape_text(shape)} would need about {need / 2**30:,.0f} GiB of memory, more than "
                    f"the {available / 2**30:.1f} GiB available on {device.type}")
    return ""


def write_json(results: dict, path: str) -> None:
    """Writes the results atomically (a temp file in the same folder, then a rename): a reader
    never sees half a file, and a run stopped at any point leaves the rows that finished."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)[:200]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(results, f, indent=1)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class _Terminated(Exception):
    """SIGTERM, raised in the main thread so that the finished rows are still written."""


def _on_sigterm(signum, frame):
    raise _Terminated()


class _OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors as one line naming the option, exit status 2 (argparse's status), without the
    usage block that would bury the line."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv):
    """The arguments, every one checked before anything heavy runs: a mistake costs one line and
    exit status 2, not a traceback after the run (or a lost --json at its end)."""
    parser = _OneLineErrorParser(prog="adain-ext bench", description=__doc__,
                                 epilog="peers (--peers; the first three by default):\n"
                                 + bench_harness.describe(PEERS),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    parser.add_argument("--shapes", default=None,
                        help="semicolon-separated shapes, NxCxT, NxCxHxW or NxCxDxHxW (default: the device's benchmark shapes)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per contender (median)")
    default_peers = ",".join(bench_harness.DEFAULT_PEERS)
    parser.add_argument("--peers", default=default_peers,
                        help=f"comma-separated peers to time adain_ext against, listed below "
                        f"(default: {default_peers})")
    parser.add_argument("--no-backward", dest="backward", action="store_false")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--plot", help="draw the speedups per shape and direction to this image "
                        "(PNG, SVG, PDF; needs matplotlib: the `plot` extra)")
    args = parser.parse_args(argv)

    args.device, problem = _parse_device(args.device)
    if problem:
        parser.error(f"--device: {problem}")
    if args.shapes:
        args.shapes, problem = _parse_shapes(args.shapes)
        if problem:
            parser.error(f"--shapes: {problem}")
    else:
        args.shapes = bench_harness.default_shapes(args.device)
    if args.repeats < 1:
        parser.error(f"--repeats: must be at least 1, got {args.repeats}")
    if problem := _too_big(args.shapes, args.device, getattr(torch, args.dtype)):
        parser.error(f"--shapes: {problem}")
    given = [p.strip() for p in args.peers.split(",") if p.strip()]
    args.peers = given
    if any(name not in PEERS for name in given) or len(set(given)) != len(given):
        parser.error(f"--peers: choose from {', '.join(PEERS)}, each once (got {','.join(given)})")
    if args.json and (problem := _unwritable(args.json)):
        parser.error(f"--json: {problem}")
    if args.plot and (problem := _plot_problem(args.plot)):
        parser.error(f"--plot: {problem}")
    if args.plot and not adain_ext._extension.has_kernel(args.device.type):
        parser.error(f"--plot: adain_ext has no {args.device.type} kernels here (see adain-ext env), "
                     "so there are no speedups to draw")
    if args.json and args.plot and os.path.abspath(args.json) == os.path.abspath(args.plot):
        parser.error("--json and --plot name the same file")
    return args


def _bench(args, results: dict, terminal, on_row=lambda: None) -> int:
    """The check, then the table, row by row into results["rows"]; 1 if the check fails."""
    device, dtype = args.device, getattr(torch, args.dtype)
    directions = DIRECTIONS if args.backward else DIRECTIONS[:1]
    print(f"backend 'auto' resolves to {adain_ext.resolve_backend('auto', device)!r}")
    error = check(device, dtype)
    ok = error <= TOLERANCE[dtype]
    print(f"check: fused op vs float64 reference, max abs error {error:.2e} "
          f"({'ok' if ok else 'MISMATCH'})")
    results["check_max_abs_error"] = error
    if not ok:
        return 1
    runners = contenders(device, args.peers)
    results["contenders"] = list(runners)
    for name in args.peers:
        if name not in runners:
            print(f"{name} does not run on {device.type} here: left out")
    table = Table(runners)
    print("\nmedian milliseconds per call; speedup = the peer's time / adain_ext's time "
          "(above 1: adain_ext is faster)\n")
    print(table.header(), flush=True)
    progress = Progress(len(args.shapes) * len(directions) * len(runners) * 2, terminal)
    try:
        for shape, direction, times in bench_harness.measure(args.shapes, device, dtype, args.repeats, directions,
                                                             runners, args.channels_last, progress):
            add_result(results["rows"], shape, dtype, args.channels_last, direction, times)
            on_row()
            progress.clear()
            print(table.row(shape, direction, times), flush=True)
    finally:
        progress.clear()
    if OURS in runners:
        for direction in directions:
            print(table.geomean_row(direction, geomean_speedups(results["rows"], direction, runners)))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    device = args.device
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    results = {"adain_ext": adain_ext.__version__, "device": machine, "device_type": device.type,
               "dtype": args.dtype, "torch": torch.__version__, "repeats": args.repeats, "rows": []}
    print(f"adain-ext bench on {device.type} ({machine}), {args.dtype}, torch {torch.__version__}")
    notes: list[str] = []
    terminal = sys.stderr  # progress goes here; held_messages swaps sys.stderr for a buffer
    on_row = (lambda: write_json(results, args.json)) if args.json else (lambda: None)
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread
        pass
    status = 1
    try:
        with held_messages(notes, HARMLESS_ON_CPU if device.type == "cpu" else ()):
            status = _bench(args, results, terminal, on_row)
    except (KeyboardInterrupt, _Terminated) as stop:
        status = 130 if isinstance(stop, KeyboardInterrupt) else 128 + signal.SIGTERM
        results["interrupted"] = True
        print("\ninterrupted: the rows above are what finished", file=sys.stderr)
    except BaseException as error:  # a later shape failed: the finished rows are still written
        results["failed"] = f"{type(error).__name__}: {error}".splitlines()[0]
        if args.json:
            write_json(results, args.json)
            print(f"wrote {args.json} (the measurements that finished before the error)",
                  file=sys.stderr)
        raise
    finally:  # also before a traceback: the held messages may explain it
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if notes:
            print(f"\nmessages from the libraries during the run ({len(notes)}, each shown once):",
                  file=sys.stderr)
            for line in notes:
                print(f"  {line}", file=sys.stderr)
    if args.json:
        write_json(results, args.json)
        print(f"wrote {args.json}" + (" (the measurements that finished)" if status in (130, 143) else ""))
    if args.plot and status == 0:
        title = (f"adain_ext speedup over its peers: {device.type} ({machine}), {args.dtype}, "
                 f"torch {torch.__version__.split('+')[0]}")
        directions = DIRECTIONS if args.backward else DIRECTIONS[:1]
        plot_speedups(results["rows"], results["contenders"], directions, title, args.plot)
        print(f"wrote {args.plot}")
    return status
