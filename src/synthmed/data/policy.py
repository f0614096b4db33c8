"""The image policy: read any image file into uint8, then bring every image to one size and channel count.

* ``read_pixels`` reads a file at full depth: 8-bit images as uint8 ``(H, W, 1 | 3)`` (palette expanded, alpha
  composited on white, CMYK/YCbCr/LAB as RGB); 16-bit, 32-bit and float images as float32 ``(H, W, 1)``, kept deep
  through resizing until ``quantize`` maps a value window (``value_window``: ``data.window``, else
  ``data.intensity``) to 0..255. ``read_image`` = read + quantize with the type's range. Corrupt, truncated and
  empty files and decompression bombs raise a one-line ``DataError`` naming the file.
* ``fit_size`` applies ``data.size`` with ``data.resize``: ``center_crop`` (centre square, then resize),
  ``resize`` (squash to square) or ``pad`` (pad to square with the mean border colour, then resize).
* ``unify_channels`` makes a list of images share one channel count (``data.channels``; ``auto`` keeps
  grayscale as 1 channel and promotes a grayscale/RGB mix to RGB with a warning).

The resulting policy is recorded in ``RealData.image_policy`` so synthetic images get the same field of view.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile

from synthmed.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm", ".pbm"}


@contextlib.contextmanager
def pixel_limit(max_pixels: int) -> Iterator[None]:
    """Temporarily set PIL's decompression-bomb limit and make its warning an error."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = int(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _composite_on_white(im: Image.Image, mode: str) -> Image.Image:
    """Blend an image with alpha onto a white background; ``mode`` is ``L`` or ``RGB``."""
    rgba = im.convert("LA" if mode == "L" else "RGBA")
    bg = Image.new(rgba.mode, rgba.size, (255, 255) if mode == "L" else (255, 255, 255, 255))
    return Image.alpha_composite(bg.convert("RGBA"), rgba.convert("RGBA")).convert(mode)


DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _deep_array(im: Image.Image) -> tuple[np.ndarray, tuple[float, float]]:
    """A >8-bit PIL image -> float32 (H, W, 1) and the value range that maps to 0..255 by default (``range``)."""
    mode = im.mode
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise ValueError("float image contains NaN or inf")
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
        rng = (0.0, 1.0) if lo >= 0.0 and hi <= 1.0 else (lo, hi if hi > lo else lo + 1.0)
        return arr[:, :, None], rng
    arr = np.asarray(im).astype(np.int64)
    if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
        raise ValueError(f"{mode} image with values outside 0..65535")
    top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
    return arr.astype(np.float32)[:, :, None], (0.0, top)


def _to_array(im: Image.Image) -> np.ndarray:
    """PIL image (any 8-bit mode) -> uint8 (H, W, 1 | 3)."""
    mode = im.mode
    if mode == "P":
        has_alpha = "transparency" in im.info or im.palette is not None and im.palette.mode == "RGBA"
        im = _composite_on_white(im, "RGB") if has_alpha else im.convert("RGB")
        arr = np.asarray(im)
        if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
            return np.ascontiguousarray(arr[:, :, :1])  # a grey palette is a grayscale image
        return np.ascontiguousarray(arr)
    if mode in ("1", "L"):
        return np.asarray(im.convert("L"))[:, :, None]
    if mode in ("LA", "La"):
        return np.asarray(_composite_on_white(im, "L"))[:, :, None]
    if mode in ("RGBA", "RGBa", "PA"):
        return np.asarray(_composite_on_white(im, "RGB"))
    return np.asarray(im.convert("RGB"))  # RGB, CMYK, YCbCr, LAB, HSV


def read_pixels(path: str | Path, max_pixels: int = 89_478_485) -> tuple[np.ndarray, tuple[float, float] | None, str]:
    """Read one image file at full depth: ``(array, value_range, mode)``.

    8-bit images: uint8 (H, W, 1 | 3) and ``None``. 16-bit / 32-bit integer and float images: float32 (H, W, 1)
    and the range that ``intensity: range`` maps to 0..255 (0..65535 for 16-bit): they keep their depth until
    ``quantize`` (after resizing and windowing). Any problem is a one-line DataError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with pixel_limit(max_pixels), Image.open(path) as im:
            im.load()
            if im.mode in DEEP_MODES:
                arr, rng = _deep_array(im)
                return np.ascontiguousarray(arr), rng, im.mode
            return np.ascontiguousarray(_to_array(im)), None, im.mode
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(
            f"{path}: image too large, above data.max_image_pixels={max_pixels} (possible decompression bomb); "
            f"raise the limit with --set data.max_image_pixels=N only if you trust the file"
        ) from None
    except Image.UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (corrupt or unknown format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        reason = " ".join(str(err).split()) or err.__class__.__name__
        raise DataError(f"{path}: corrupt or truncated image ({reason})") from None


def value_window(arr: np.ndarray, value_range: tuple[float, float], window: Sequence[float] | None,
                 intensity: str = "range") -> tuple[float, float]:
    """The (low, high) values mapped to 0 and 255 for a deep image.

    ``window`` = [center, width] wins (DICOM convention: low = center - width/2); else ``intensity``: ``range``
    (the type's range), ``minmax`` (this image's min..max) or ``percentile`` (its 0.5th..99.5th percentiles).
    """
    if window is not None:
        center, width = float(window[0]), max(float(window[1]), 1e-6)
        return center - width / 2, center + width / 2
    if intensity == "minmax":
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
    elif intensity == "percentile":
        lo, hi = (float(v) for v in np.percentile(arr, [0.5, 99.5]))
    else:
        lo, hi = value_range
    return lo, (hi if hi > lo else lo + 1.0)


def quantize(arr: np.ndarray, low: float, high: float) -> np.ndarray:
    """Deep (float) pixels -> uint8: ``low`` -> 0, ``high`` -> 255, clipped outside."""
    scaled = (arr.astype(np.float64) - low) / (high - low)
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def read_image(path: str | Path, max_pixels: int = 89_478_485) -> np.ndarray:
    """Read one image file as uint8 (H, W, 1 | 3); deep images map their type's range to 0..255 (16-bit: /257)."""
    arr, rng, _ = read_pixels(path, max_pixels)
    return arr if rng is None else quantize(arr, *rng)


def fit_size(arr: np.ndarray, size: int | None, mode: str = "center_crop") -> np.ndarray:
    """Bring one (H, W, C) image (uint8, or float32 deep pixels) to ``size x size``; ``size=None`` keeps it."""
    if size is None:
        return arr
    h, w = arr.shape[:2]
    if mode == "center_crop" and h != w:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        arr = arr[top : top + s, left : left + s]
    elif mode == "pad" and h != w:
        s = max(h, w)
        border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]]).reshape(-1, arr.shape[2])
        mean = border.mean(axis=0)
        fill = np.rint(mean).astype(np.uint8) if arr.dtype == np.uint8 else mean.astype(arr.dtype)
        out = np.empty((s, s, arr.shape[2]), arr.dtype)
        out[:] = fill
        top, left = (s - h) // 2, (s - w) // 2
        out[top : top + h, left : left + w] = arr
        arr = out
    if arr.shape[0] == size and arr.shape[1] == size:
        return np.ascontiguousarray(arr)
    shrinking = arr.shape[0] > size or arr.shape[1] > size
    method = Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC
    if arr.dtype != np.uint8:  # deep pixels: resize each channel in float ('F' mode), quantize later
        planes = [np.asarray(Image.fromarray(np.ascontiguousarray(arr[:, :, c], np.float32)).resize((size, size), method))
                  for c in range(arr.shape[2])]
        return np.stack(planes, axis=-1)
    im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    out = np.asarray(im.resize((size, size), method))
    return out[:, :, None] if out.ndim == 2 else out


def to_gray(arr: np.ndarray) -> np.ndarray:
    """RGB (..., 3) uint8 -> (..., 1) with ITU-R 601 luma (as PIL's convert('L'))."""
    if arr.shape[-1] == 1:
        return arr
    y = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
    return np.rint(y).astype(np.uint8)[..., None]


def unify_channels(images: Sequence[np.ndarray], channels: Any, warn: list[str], what: str) -> int:
    """Decide the channel count for ``images`` (each (H, W, 1 | 3)); records a warning for a mix."""
    present = {int(a.shape[-1]) for a in images}
    if channels in (1, 3):
        return int(channels)
    if present == {1}:
        return 1
    if present == {1, 3}:
        n_gray = sum(1 for a in images if a.shape[-1] == 1)
        warn.append(f"{what}: {n_gray} grayscale and {len(images) - n_gray} RGB images; promoting all to RGB")
    return 3


def set_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """One (..., C) uint8 array to ``channels`` (1 -> 3 repeats, 3 -> 1 uses luma)."""
    if arr.shape[-1] == channels:
        return arr
    if channels == 3:
        return np.repeat(arr, 3, axis=-1)
    return to_gray(arr)


def stack(images: Sequence[np.ndarray], size: int | None, channels: Any, warn: list[str], what: str) -> np.ndarray:
    """Stack already-sized images into (N, H, W, C); differing native sizes need ``data.size``."""
    if len(images) == 0:
        raise DataError(f"{what}: no images")
    shapes = {a.shape[:2] for a in images}
    if len(shapes) > 1:
        some = ", ".join(f"{h}x{w}" for h, w in sorted(shapes)[:3])
        raise DataError(
            f"{what}: images have different sizes ({some}{', ...' if len(shapes) > 3 else ''}); "
            f"this stage needs one size: set data.size (--set data.size=N)"
        )
    c = unify_channels(images, channels, warn, what)
    return np.stack([set_channels(a, c) for a in images])


def fit_array(images: np.ndarray, size: int | None, mode: str, channels: Any, warn: list[str], what: str) -> np.ndarray:
    """Apply the policy to an (N, H, W, C) array (array sources)."""
    if size is not None and images.shape[1:3] != (size, size):
        images = np.stack([fit_size(a, size, mode) for a in images]) if len(images) else images
    c = unify_channels([images[:1]], channels, warn, what) if len(images) else images.shape[3]
    return set_channels(images, c)


def describe(size: int | None, mode: str, channels: int, out_hw: tuple[int, int], native: set[tuple[int, int]]) -> dict[str, Any]:
    """The ``image_policy`` record: what synthetic images must match."""
    return {
        "size": [int(out_hw[0]), int(out_hw[1])],
        "channels": int(channels),
        "resize": mode if size is not None else "none",
        "native_sizes": sorted([int(h), int(w)] for h, w in native)[:8],
        "dtype": "uint8",
    }
