"""The `adain-ext` console script: `adain-ext COMMAND [options]`."""
from __future__ import annotations

import contextlib
import importlib
import os
import sys

# command -> (module, function, one-line help). Modules load only when their command runs.
COMMANDS = {
    "bench": ("adain_ext.bench", "main", "check the fused op and time it against its peers"),
    "env": ("adain_ext.env", "main",
            "print versions, build configuration and usable backends (for bug reports)"),
    "stylize": ("adain_ext.style_transfer.stylize", "main",
                "stylize images (the PyTorch reference test.py options)"),
    "video": ("adain_ext.style_transfer.video", "main", "stylize a video frame by frame (needs PyAV)"),
    "train": ("adain_ext.style_transfer.train", "main",
              "train a decoder (the reference train.py options; torchrun for DDP)"),
    "export": ("adain_ext.style_transfer.export", "main",
               "write the style-transfer network as one ONNX file (needs onnx, onnxscript)"),
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        import torch

        import adain_ext

        print(f"adain-ext {adain_ext.__version__} (torch {torch.__version__})")
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: adain-ext [--version] COMMAND [options]\n\ncommands:")
        for name, (_, _, help_text) in COMMANDS.items():
            print(f"  {name:<10} {help_text}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nadain-ext: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module, function, _ = COMMANDS[argv[0]]
    with stdout_closed_quietly():
        status = getattr(importlib.import_module(module), function)(argv[1:]) or 0
        sys.stdout.flush()
        return status
    return 128 + 13  # SIGPIPE's status, as for a tool the signal ends


@contextlib.contextmanager
def stdout_closed_quietly():
    """`adain-ext env | head`: a reader that stops early ends the output quietly (the block is
    left, main returns 141 as a tool killed by SIGPIPE would), never a BrokenPipeError traceback,
    neither here nor when Python flushes stdout at exit."""
    try:
        yield
    except BrokenPipeError:
        try:  # later writes and the flush at exit go nowhere
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass


if __name__ == "__main__":
    sys.exit(main())
