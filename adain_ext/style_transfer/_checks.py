"""The checks the subcommands run on their options before any model loads or any frame is read.

Each failure is a UsageError that names the option and the problem, so the user gets one line
and exit status 2 within a second instead of a traceback after the models have loaded.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path

import torch

from adain_ext.env import available_memory
from adain_ext.style_transfer import images, models
from adain_ext.style_transfer._runtime import CommandFailed, UsageError

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
    """loader(path) (models.load_vgg or load_decoder); a file that does not fit is a UsageError,
    one whose numbers are damaged (NaN, Inf) a CommandFailed."""
    try:
        return loader(path)
    except models.DamagedWeights as error:
        raise CommandFailed(f"{option}: {error}") from None
    except (FileNotFoundError, models.WeightsError) as error:
        raise UsageError(f"{option}: {error}") from None
    except ImportError as error:
        raise CommandFailed(f"{option}: {error}") from None


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
        if probe == folder:
            raise UsageError(f"{option}: {folder} is a file, not a folder")
        raise UsageError(f"{option}: {probe} is a file, so {folder} cannot be a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{option}: cannot write in {probe} (permission denied)")
    # Another process (a second rank of the same run) may be probing the same chain: a folder
    # it created meanwhile is as good as ours, and one it already filled is left in place.
    created = []
    try:
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                if path.is_dir():
                    continue
                raise
            created.append(path)
    except OSError as error:
        raise UsageError(f"{option}: cannot create {folder}: {error.strerror}") from None
    finally:
        for path in reversed(created):
            try:
                path.rmdir()
            except OSError:
                pass


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
    if fmt is None or fmt not in Image.SAVE or not _writes_rgb(fmt):
        writable = sorted({e for e, f in Image.registered_extensions().items() if f in Image.SAVE
                           and e in images.IMAGE_EXTENSIONS})
        raise UsageError(f"{option}: cannot write {ext} images (use one of {', '.join(writable)})")
    return ext


def _writes_rgb(fmt: str) -> bool:
    """Whether Pillow's writer for `fmt` takes an RGB image (the registry also lists writers for
    1-bit or palette images only, and stubs that need a plugin: .xbm, .msp, .palm, .blp, .h5)."""
    from PIL import Image

    try:
        Image.new("RGB", (MIN_IMAGE_SIDE, MIN_IMAGE_SIDE)).save(io.BytesIO(), format=fmt)
    except Exception:  # noqa: BLE001  (each plugin raises its own types)
        return False
    return True


def backend(option: str, name: str, device: torch.device) -> str:
    """The AdaIN backend `name` can run on `device` here (adain_ext/backends.py says why not)."""
    from adain_ext import functional

    try:
        functional.resolve_backend(name, device)
    except (RuntimeError, ValueError) as error:
        raise UsageError(f"{option} {name}: {error}") from None
    return name


def _identity(path: Path):
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


def not_an_input(option: str, output: Path, inputs: dict[str, list[Path]]) -> None:
    """UsageError if `output` is the same file (same inode, through any link or symlink) as one
    of `inputs` ({option: paths}): writing it would destroy that input."""
    mine = _identity(output)
    if mine is None:
        return
    for input_option, paths in inputs.items():
        for path in paths:
            if path is not None and _identity(Path(path)) == mine:
                raise UsageError(f"{option}: {output} is the same file as {input_option} {path}; "
                                 "writing it would destroy that input (choose another output)")


# Values held per image pixel at the network's peak, a lower bound: the full-resolution layers
# (relu1_1 and the decoder's last block) keep a 64-channel input and output, padded.
PEAK_VALUES_PER_PIXEL = 128


def fits_memory(option: str, what: str, pixels: int, dtype: torch.dtype, device: torch.device,
                factor: float = 1.0) -> None:
    """UsageError before any work if `pixels` (all images of a batch) surely cannot fit: the
    network's lower-bound peak (times `factor`, e.g. for training's saved activations) exceeds
    the memory available on `device`."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    need = pixels * PEAK_VALUES_PER_PIXEL * itemsize * factor
    available = available_memory(device)
    if available is not None and need > available:
        raise UsageError(f"{option}: {what} would need about {need / 2**30:,.0f} GiB of memory, more "
                         f"than the {available / 2**30:.1f} GiB available on {device.type}; "
                         f"choose a smaller {option}")


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False
