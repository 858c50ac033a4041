"""The checks the subcommands run on their options before any model loads or any frame is read.

Each failure is a UsageError that names the option and the problem, so the user gets one line
and exit status 2 within a second instead of a traceback after the models have loaded.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from adain_ext.style_transfer import images, models
from adain_ext.style_transfer._runtime import UsageError

# Every 3x3 conv pads by reflection, which needs at least 2 pixels; relu4_1 sits behind the
# ceil-mode pools of ENCODER_POOLS, so the image needs 2**pools + 1 pixels (9) on its shorter side.
MIN_IMAGE_SIDE = 2 ** sum(pool < models.ENCODER_USED for pool in models.ENCODER_POOLS) + 1


def at_least(option: str, value: int, minimum: int) -> int:
    if value < minimum:
        raise UsageError(f"{option}: must be at least {minimum}, got {value}")
    return value


def finite(option: str, value: float, low: float = -math.inf, high: float = math.inf) -> float:
    if not (math.isfinite(value) and low <= value <= high):
        bounds = f" in [{low:g}, {high:g}]" if math.isfinite(low) and math.isfinite(high) else (
            f" >= {low:g}" if math.isfinite(low) else "")
        raise UsageError(f"{option}: must be a finite number{bounds}, got {value}")
    return value


def image_size(option: str, value: int, zero_keeps: bool = True) -> int:
    """A shorter-side option: 0 (keep the size) where allowed, else at least MIN_IMAGE_SIDE."""
    if zero_keeps and value == 0:
        return value
    if value < MIN_IMAGE_SIDE:
        keep = "0 keeps the original size, else " if zero_keeps else ""
        raise UsageError(f"{option}: {value} is below the encoder's smallest side "
                         f"({keep}at least {MIN_IMAGE_SIDE} pixels)")
    return value


def too_small(width: int, height: int) -> bool:
    return min(width, height) < MIN_IMAGE_SIDE


def weights(option: str, text: str) -> list[float] | None:
    """Comma-separated interpolation weights: finite floats (normalised later)."""
    if not text:
        return None
    try:
        values = [float(w) for w in text.split(",")]
    except ValueError:
        raise UsageError(f"{option}: not a comma-separated list of numbers: {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise UsageError(f"{option}: weights must be finite numbers, got {text!r}")
    return values


def input_file(option: str, path: str | os.PathLike, what: str = "file") -> Path:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{option}: {what} not found: {path}")
    if not path.is_file():
        raise UsageError(f"{option}: {path} is not a file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{option}: cannot read {path} (permission denied)")
    return path


def weights_file(option: str, path: str | os.PathLike) -> Path:
    if not Path(path).exists():
        raise UsageError(f"{option}: weights file not found: {path} ({models.WEIGHTS_HINT})")
    return input_file(option, path, "weights file")


def load_weights(option: str, loader, path: str | os.PathLike):
    """loader(path) (models.load_vgg or load_decoder); a file that does not fit is a UsageError."""
    try:
        return loader(path)
    except (FileNotFoundError, models.WeightsError) as error:
        raise UsageError(f"{option}: {error}") from None


def input_dir(option: str, path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{option}: {'not a directory' if path.exists() else 'not found'}: {path}")
    return path


def _writable_folder(option: str, folder: Path) -> None:
    """The folder exists and is writable, or can be created: a missing chain of folders is
    created and removed again (permission bits say nothing for root or a read-only mount)."""
    missing = []
    probe = folder
    while not probe.exists() and probe.parent != probe:
        missing.append(probe)
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{option}: {probe} is a file, so {folder} cannot be a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{option}: cannot write in {probe} (permission denied)")
    created = []
    try:
        for path in reversed(missing):
            path.mkdir()
            created.append(path)
    except OSError as error:
        raise UsageError(f"{option}: cannot create {folder}: {error.strerror}") from None
    finally:
        for path in reversed(created):
            path.rmdir()


def output_dir(option: str, path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option}: {path} is a file, not a folder")
    _writable_folder(option, path)
    return path


def output_file(option: str, path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option}: {path} is a folder; give a file name")
    _writable_folder(option, path.parent)
    return path


def image_extension(option: str, ext: str) -> str:
    """'.png' from 'png' or '.PNG', if Pillow can write that format."""
    from PIL import Image

    ext = ext if ext.startswith(".") else "." + ext
    Image.init()
    fmt = Image.registered_extensions().get(ext.lower())
    if fmt is None or fmt not in Image.SAVE:
        writable = sorted({e for e, f in Image.registered_extensions().items() if f in Image.SAVE
                           and e in images.IMAGE_EXTENSIONS})
        raise UsageError(f"{option}: cannot write {ext} images (use one of {', '.join(writable)})")
    return ext


def backend(option: str, name: str, device: torch.device) -> str:
    """The AdaIN backend `name` can run on `device` here (adain_ext/backends.py says why not)."""
    from adain_ext import functional

    try:
        functional.resolve_backend(name, device)
    except (RuntimeError, ValueError) as error:
        raise UsageError(f"{option} {name}: {error}") from None
    return name


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False
