"""Image reading and writing: always RGB float tensors in [0, 1], files written atomically.

Needs Pillow (`pip install Pillow`, or `pip install 'adain_ext[style]'`). Inputs the reference
crashes on work here: RGBA and palette images with transparency are composited onto white,
grayscale is replicated to three channels, 16-bit and float images are scaled by their range,
and the EXIF orientation is applied.
"""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import torch

from adain_ext.style_transfer._output import atomic_output

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


# Modes whose samples are 8-bit (everything else is resized in float to keep its precision).
_EIGHT_BIT_MODES = ("1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX")


class ImageError(ValueError):
    """An image that cannot be read (missing, corrupt, truncated, unsupported)."""


def _pil():
    try:
        from PIL import Image, ImageOps
    except ImportError as error:
        raise ImportError("reading and writing images needs Pillow: pip install Pillow "
                          "(or pip install 'adain_ext[style]')") from error
    return Image, ImageOps


def _to_rgb_array(img) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] from any Pillow mode."""
    Image, _ = _pil()
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale (Pillow opens it as "I;16" or "I"): convert("RGB") would clip to 255.
        gray = np.asarray(img, dtype=np.float32)
        scale = 65535.0 if img.mode.startswith("I;16") or gray.max(initial=0) > 255 else 255.0
        gray = np.clip(gray / scale, 0, 1)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "F":
        gray = np.asarray(img, dtype=np.float32)
        hi = float(gray.max(initial=0))
        gray = np.clip(gray / (hi if hi > 1 else 1.0), 0, 1)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return np.asarray(img, dtype=np.float32) / 255.0


def open_image(path: str | os.PathLike):
    """The decoded Pillow image (fully read, orientation applied), or ImageError."""
    Image, ImageOps = _pil()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageError(f"cannot read image {path}: {error}") from error
    return _finite(img, path)


def _finite(img, path: Path):
    """A float image (mode F) with NaN or infinite pixels gets them replaced, with one note naming
    the file: NaN and -Inf by 0, +Inf by the brightest finite pixel (else 1). Otherwise a single
    NaN would turn the whole picture into NaN and the output black."""
    if img.mode != "F":
        return img
    Image, _ = _pil()
    values = np.asarray(img, dtype=np.float32)
    bad = ~np.isfinite(values)
    count = int(bad.sum())
    if not count:
        return img
    finite = values[~bad]
    top = float(finite.max()) if finite.size else 1.0
    fixed = np.nan_to_num(values, nan=0.0, posinf=top, neginf=0.0)
    print(f"note: {path}: {count} of {values.size} pixels are NaN or infinite; replaced by 0 "
          "(NaN, -Inf) or the brightest pixel (+Inf)", file=sys.stderr, flush=True)
    return Image.fromarray(fixed.astype(np.float32), "F")


def resized_size(h: int, w: int, size: int) -> tuple[int, int]:
    """(h, w) with the shorter side made `size`, aspect kept: the reference's
    transforms.Resize(size) arithmetic (size <= 0: unchanged)."""
    if size <= 0 or min(h, w) == size:
        return h, w
    return (max(1, int(size * h / w)), size) if w <= h else (size, max(1, int(size * w / h)))


def resize_shorter(img, size: int):
    """The reference's transforms.Resize(size): shorter side to `size`, aspect kept (bilinear)."""
    Image, _ = _pil()
    w, h = img.size
    new_h, new_w = resized_size(h, w, size)
    if (new_h, new_w) == (h, w):
        return img
    return img.resize((new_w, new_h), Image.BILINEAR)


def resize_square(img, size: int):
    """The training transform's Resize((size, size)): both sides to `size` (bilinear)."""
    Image, _ = _pil()
    return img.resize((size, size), Image.BILINEAR)


def resize_shorter_array(rgb: np.ndarray, size: int) -> np.ndarray:
    """resize_shorter for an (H, W, 3) uint8 array (a decoded video frame)."""
    if size <= 0:
        return rgb
    Image, _ = _pil()
    return np.asarray(resize_shorter(Image.fromarray(rgb), size))


def as_8bit(img):
    """img if its samples are 8-bit, else its RGB rendering in 8 bits (16-bit and float images
    scaled to [0, 255], not clipped), for resizing paths that work in 8 bits."""
    if img.mode in _EIGHT_BIT_MODES:
        return img
    Image, _ = _pil()
    return Image.fromarray((_to_rgb_array(img) * 255 + 0.5).astype(np.uint8))


def center_crop(img, size: int):
    w, h = img.size
    if size <= 0 or (w == size and h == size):
        return img
    left, top = round((w - size) / 2.0), round((h - size) / 2.0)
    return img.crop((left, top, left + size, top + size))


def to_tensor(img) -> torch.Tensor:
    """(3, H, W) float32 RGB in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(_to_rgb_array(img).transpose(2, 0, 1)))


def _resize_tensor(x: torch.Tensor, size: int) -> torch.Tensor:
    new = resized_size(*x.shape[-2:], size)
    if new == tuple(x.shape[-2:]):
        return x
    return torch.nn.functional.interpolate(x[None], size=new, mode="bilinear", antialias=True,
                                           align_corners=False)[0].clamp_(0, 1)


def _center_crop_tensor(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = round((h - size) / 2.0), round((w - size) / 2.0)
    return x[:, top : top + size, left : left + size]


def load_image(path: str | os.PathLike, size: int = 0, crop: bool = False) -> torch.Tensor:
    """(3, H, W) RGB float32 in [0, 1]; `size` > 0 resizes the shorter side, `crop` then takes the
    centred size x size square (the reference's test.py transform).

    8-bit images are resized by Pillow like the reference; 16-bit and float images are resized
    in float by torch so their extra precision survives.
    """
    img = open_image(path)
    if img.mode in _EIGHT_BIT_MODES:
        img = resize_shorter(img, size)
        if crop:
            img = center_crop(img, size if size > 0 else min(img.size))
        return to_tensor(img)
    x = _resize_tensor(to_tensor(img), size)
    return _center_crop_tensor(x, size if size > 0 else min(x.shape[-2:])) if crop else x


def load_mask(path: str | os.PathLike) -> torch.Tensor:
    """(1, H, W) float32 in {0, 1}: 1 where the image is brighter than half (foreground)."""
    img = open_image(path)
    gray = _to_rgb_array(img).mean(axis=2)
    return torch.from_numpy((gray > 0.5).astype(np.float32))[None]


def fit_mask(mask: torch.Tensor, size: int = 0, crop: bool = False) -> torch.Tensor:
    """A (1, H, W) mask drawn on the content image, given the content's geometry in a run:
    load_image's shorter-side resize (nearest, so it stays binary) and centre crop."""
    new = resized_size(*mask.shape[-2:], size)
    if new != tuple(mask.shape[-2:]):
        mask = torch.nn.functional.interpolate(mask[None], size=new, mode="nearest")[0]
    return _center_crop_tensor(mask, size if size > 0 else min(new)) if crop else mask


def image_format(ext: str) -> str:
    """Pillow's format name for an extension ('.png' -> 'PNG'); PNG when there is none."""
    Image, _ = _pil()
    Image.init()
    return Image.registered_extensions().get(ext.lower(), "PNG") if ext else "PNG"


def encode_image(image: torch.Tensor, ext: str, quality: int = 95) -> bytes:
    """The file's bytes: a (3, H, W) image clamped to [0, 1], in the format of `ext`."""
    Image, _ = _pil()
    array = (image.detach().float().clamp(0, 1).mul(255).add(0.5).to(torch.uint8)
             .permute(1, 2, 0).cpu().numpy())
    kwargs = {"quality": quality} if ext.lower() in (".jpg", ".jpeg", ".webp") else {}
    buffer = io.BytesIO()
    Image.fromarray(array, "RGB").save(buffer, format=image_format(ext), **kwargs)
    return buffer.getvalue()


def save_image(image: torch.Tensor, path: str | os.PathLike, quality: int = 95,
               overwrite: bool = True) -> None:
    """Writes a (3, H, W) image clamped to [0, 1] atomically (a temp file that no planted
    symlink can redirect, then a rename: _output.atomic_output), mode from the umask. With
    overwrite False an existing `path` is left alone (OutputExists)."""
    path = Path(path)
    data = encode_image(image, path.suffix, quality)
    with atomic_output(path, overwrite=overwrite) as f:
        f.write(data)


def scan_images(root: str | os.PathLike, extensions=IMAGE_EXTENSIONS,
                recursive: bool = True) -> list[Path]:
    """Image files under `root` (sorted, hidden files skipped) whose extension is in `extensions`."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"directory not found: {root}")
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    pattern = "**/*" if recursive else "*"
    files = [p for p in root.glob(pattern)
             if p.is_file() and p.suffix.lower() in exts
             and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return sorted(files)
