"""Small helpers the subcommands share: device/dtype parsing, progress bars, CLI errors and exit
statuses, temp files."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
          "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


class UsageError(Exception):
    """A mistake in the command line (a bad option value, a missing path, an output that would
    overwrite something): one line on stderr, exit status 2 (argparse's own status for its errors)."""


class CommandFailed(Exception):
    """A run that cannot be done as asked although the command line is right: an input that exists
    but cannot be used whole (a corrupt image, a truncated video), a missing optional dependency.
    One line on stderr, exit status 1."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name}: not a device name (use auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name}: these commands run on cpu or cuda devices only")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UsageError(f"--dtype must be one of fp32, fp16, bf16; got {name!r}")
    return DTYPES[name]


class _PlainProgress:
    """What the progress bar degrades to without tqdm: a line every few percent, on stderr."""

    def __init__(self, total: int, desc: str, disable: bool):
        self.total, self.desc, self.disable, self.n, self._shown = total, desc, disable, 0, -1

    def update(self, k: int = 1):
        self.n += k
        step = max(1, self.total // 20)
        if not self.disable and (self.n // step != self._shown or self.n == self.total):
            self._shown = self.n // step
            print(f"{self.desc}: {self.n}/{self.total}", file=sys.stderr, flush=True)

    def set_postfix_str(self, text: str):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(total: int, desc: str, disable: bool = False, initial: int = 0):
    """A tqdm bar when tqdm is installed (the `style` extra), else plain progress lines."""
    try:
        from tqdm import tqdm
    except ImportError:
        bar = _PlainProgress(total, desc, disable)
        bar.n = initial
        return bar
    return tqdm(total=total, desc=desc, disable=disable, initial=initial, dynamic_ncols=True)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def temp_path(path: Path) -> Path:
    """Where `path` is written before the rename that publishes it: hidden, in the same folder
    (so the rename is atomic), named after this process so that remove_stale_temps can tell a
    dead run's leftovers from a live run's file, and ending in path's suffix (the image and video
    writers pick the format from it). Created by open(), so it gets the umask's mode."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_temps(folder: Path, names=None) -> list[Path]:
    """Deletes the temp files (temp_path's pattern) in `folder` whose process is gone (a run
    killed with SIGKILL, or a power cut), only those of `names` when given; returns them."""
    removed = []
    for tmp in Path(folder).glob(".*.*.tmp*"):
        name, _, tail = tmp.name[1:].rpartition(".tmp")
        name, _, pid = name.rpartition(".")
        # tail "" is the checkpoint temp name of earlier versions (.checkpoint.pt.PID.tmp)
        ours = pid.isdigit() and tail in ("", Path(name).suffix)
        if not ours or (names is not None and name not in names):
            continue
        if tmp.is_file() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _exit_on_sigterm(signum, frame):
    # SystemExit unwinds the stack, so every `except BaseException` that removes a temp file runs.
    raise SystemExit(128 + signum)


def run_command(name: str, build_parser, run, argv: list[str] | None) -> int:
    """The body of every `adain-ext <name>` main: parse argv with build_parser() and return
    run(args). A UsageError becomes one line on stderr and exit status 2, a CommandFailed one line
    and status 1, Ctrl-C status 130, never a traceback; SIGTERM ends the run like Ctrl-C (status
    143), removing its temp files."""
    args = build_parser().parse_args(argv)
    previous = None
    if hasattr(signal, "SIGTERM") and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        try:
            previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        return run(args)
    except UsageError as error:
        print(f"adain-ext {name}: error: {error}", file=sys.stderr)
        return 2
    except CommandFailed as error:
        print(f"adain-ext {name}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # temp files are already gone: their writers clean up on any exit
        print(f"adain-ext {name}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
