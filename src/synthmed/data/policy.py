"""The image policy: read any image file into uint8, then bring every image to one size and channel count.

* ``read_image`` turns a file into a uint8 ``(H, W, 1 | 3)`` array: 16-bit images are scaled (not clipped) to
  8 bits, palette images are expanded, alpha is composited on white, CMYK/YCbCr/LAB become RGB. Corrupt,
  truncated and empty files and decompression bombs raise a one-line ``DataError`` naming the file.
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


def _to_array(im: Image.Image) -> np.ndarray:
    """PIL image (any mode) -> uint8 (H, W, 1 | 3)."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(im).astype(np.int64)
        top = 65535 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
            raise ValueError(f"{mode} image with values outside 0..65535")
        arr = np.rint(arr * (255.0 / top)).astype(np.uint8)
        return arr[:, :, None]
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ValueError("float image contains NaN or inf")
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
        scale = 1.0 if hi <= 1.0 and lo >= 0.0 else (hi - lo or 1.0)
        arr = (arr - (0.0 if scale == 1.0 else lo)) / scale
        return np.rint(np.clip(arr, 0, 1) * 255).astype(np.uint8)[:, :, None]
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


def read_image(path: str | Path, max_pixels: int = 89_478_485) -> np.ndarray:
    """Read one image file as uint8 (H, W, 1 | 3); any problem is a one-line DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with pixel_limit(max_pixels), Image.open(path) as im:
            im.load()
            return np.ascontiguousarray(_to_array(im))
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


def fit_size(arr: np.ndarray, size: int | None, mode: str = "center_crop") -> np.ndarray:
    """Bring one (H, W, C) uint8 image to ``size x size`` with ``mode``; ``size=None`` keeps it as is."""
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
        fill = np.rint(border.mean(axis=0)).astype(np.uint8)
        out = np.empty((s, s, arr.shape[2]), np.uint8)
        out[:] = fill
        top, left = (s - h) // 2, (s - w) // 2
        out[top : top + h, left : left + w] = arr
        arr = out
    if arr.shape[0] == size and arr.shape[1] == size:
        return np.ascontiguousarray(arr)
    im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    shrinking = arr.shape[0] > size or arr.shape[1] > size
    im = im.resize((size, size), Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC)
    out = np.asarray(im)
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
            f"choose one with --set data.size=N"
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
