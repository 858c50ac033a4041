"""Small helpers the subcommands share: device/dtype parsing, progress bars, CLI errors and exit
statuses (the output files themselves: _output.py)."""
from __future__ import annotations

import signal
import sys

import torch

from adain_ext.style_transfer._output import OutputError, OutputExists, remove_stale_temps  # noqa: F401

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
    except (CommandFailed, OutputError) as error:
        print(f"adain-ext {name}: error: {error}", file=sys.stderr)
        return 1
    except OutputExists as error:
        print(f"adain-ext {name}: error: {error.filename} exists (pass --overwrite to replace it)",
              file=sys.stderr)
        return 2
    except MemoryError:
        print(f"adain-ext {name}: error: out of memory (choose smaller sizes or batches)",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # temp files are already gone: their writers clean up on any exit
        print(f"adain-ext {name}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
