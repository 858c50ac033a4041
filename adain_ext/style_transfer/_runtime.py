"""Small helpers the subcommands share: device/dtype parsing, progress bars, CLI errors."""
from __future__ import annotations

import sys

import torch

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
          "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


class UsageError(Exception):
    """A user error: the CLI prints the message (no traceback) and exits with status 1."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
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


def run_command(name: str, build_parser, run, argv: list[str] | None) -> int:
    """The body of every `adain-ext <name>` main: parse argv with build_parser() and return
    run(args); a UsageError (a user's mistake: missing file, bad option value) becomes one line on
    stderr and exit status 1 instead of a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as error:
        print(f"adain-ext {name}: error: {error}", file=sys.stderr)
        return 1
