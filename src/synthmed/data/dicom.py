"""DICOM files (pydicom): pixel values in modality units, windowed to 8 bits after resizing.

``read_dicom(path)`` returns the pixels and how to window them:

* grayscale (MONOCHROME1/2): float32 ``(H, W, 1)`` with RescaleSlope/RescaleIntercept applied (e.g. CT in
  Hounsfield units); the header's first WindowCenter/WindowWidth (``data.window`` overrides it); the value range
  of the stored bits (BitsStored, signed or not) for ``data.intensity: range``; MONOCHROME1 is inverted after
  windowing so that high values are dark, as a viewer shows them;
* colour (RGB, YBR_*; pydicom converts YBR to RGB): 8-bit uint8 ``(H, W, 3)``; deeper colour is scaled by its range.

Compressed transfer syntaxes decode through pydicom's plugins (Pillow covers JPEG baseline and JPEG 2000; JPEG-LS
and others need ``pylibjpeg`` / ``python-gdcm``); without one the error names the file and the transfer syntax.
Multi-frame files are refused (export the frames as separate files).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthmed.errors import DataError

DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}


@dataclass
class DicomPixels:
    """Decoded pixels and how to bring them to 8 bits (``value_range`` None: already uint8)."""

    array: np.ndarray
    value_range: tuple[float, float] | None
    mode: str
    window: tuple[float, float] | None = None
    invert: bool = False


def is_dicom_file(path: Path) -> bool:
    """A DICOM suffix, or the 'DICM' magic at byte 128 (DICOM files often have no suffix)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _first(value: object) -> float | None:
    """The first number of a (possibly multi-valued) DICOM element, or None."""
    if value is None:
        return None
    try:
        seq = list(value) if not isinstance(value, (str, bytes)) and hasattr(value, "__iter__") else [value]
        return float(seq[0]) if seq else None
    except (TypeError, ValueError):
        return None


def _decode_error(path: Path, ds: object, err: Exception) -> DataError:
    try:
        uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        compressed = uid is not None and bool(getattr(uid, "is_compressed", False))
    except Exception:  # noqa: BLE001 - a garbled transfer syntax is just not a known compressed one
        uid, compressed = None, False
    if compressed:
        return DataError(
            f"{path}: compressed transfer syntax '{uid.name}' ({uid}) and no installed decoder can read it; "
            f"install one (pip install pylibjpeg pylibjpeg-libjpeg, or python-gdcm) or decompress the file"
        )
    reason = " ".join(str(err).split()) or err.__class__.__name__
    return DataError(f"{path}: cannot decode the DICOM pixel data ({reason[:200]})")


def read_dicom(path: str | Path, max_pixels: int = 89_478_485) -> DicomPixels:
    """Read one DICOM file; any problem is a one-line DataError naming the file."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"DICOM file not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise DataError(f"{path}: not a DICOM file (no DICM header)") from None
    except Exception as err:  # noqa: BLE001 - pydicom raises many types for broken files
        reason = " ".join(str(err).split()) or err.__class__.__name__
        raise DataError(f"{path}: not a readable DICOM file ({reason[:200]})") from None
    try:
        return _decode(path, ds, max_pixels)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - pydicom parses elements lazily: a damaged header fails on access
        reason = " ".join(str(err).split()) or err.__class__.__name__
        raise DataError(f"{path}: not a readable DICOM file ({reason[:200]})") from None


def _header_int(path: Path, ds: object, name: str, default: int) -> int:
    """An integer header element (US or IS); a non-integer value is a one-line DataError naming it."""
    value = None
    try:
        value = getattr(ds, name, None)
        if value is None or str(value).strip() == "":
            return default
        number = float(value)
        if not number.is_integer():
            raise ValueError(name)
        return int(number)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{path}: DICOM header {name}={str(value)[:40]!r} is not an integer") from None


def _decode(path: Path, ds: object, max_pixels: int) -> DicomPixels:
    if "PixelData" not in ds:  # type: ignore[operator]
        raise DataError(f"{path}: DICOM file without pixel data (a report or structured data?)")
    rows, cols = _header_int(path, ds, "Rows", 0), _header_int(path, ds, "Columns", 0)
    if rows * cols > max_pixels:
        raise DataError(f"{path}: image too large ({rows}x{cols}), above data.max_image_pixels={max_pixels}")
    frames = _header_int(path, ds, "NumberOfFrames", 1)
    if frames > 1:
        raise DataError(f"{path}: multi-frame DICOM ({frames} frames) is not supported; export the frames as separate files")
    bits = _header_int(path, ds, "BitsStored", 0) or _header_int(path, ds, "BitsAllocated", 8) or 8
    if not 1 <= bits <= 64:
        raise DataError(f"{path}: DICOM header BitsStored={bits} is outside 1..64")
    try:
        pixels = ds.pixel_array  # type: ignore[attr-defined]
    except Exception as err:  # noqa: BLE001 - missing decoder plugins raise RuntimeError/NotImplementedError/...
        raise _decode_error(path, ds, err) from None
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    mode = f"DICOM {photometric} {bits}-bit"
    if photometric.startswith("MONOCHROME"):
        return _grayscale(path, ds, np.asarray(pixels), bits, mode, invert=photometric == "MONOCHROME1")
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_422"):
        arr = np.asarray(pixels)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise DataError(f"{path}: {photometric} pixel data of shape {arr.shape}, expected (rows, columns, 3)")
        if arr.dtype == np.uint8:
            return DicomPixels(np.ascontiguousarray(arr), None, mode)
        top = float(2**bits - 1)
        return DicomPixels(np.rint(np.clip(arr / top, 0, 1) * 255).astype(np.uint8), None, mode)
    raise DataError(f"{path}: photometric interpretation '{photometric}' is not supported (use MONOCHROME1/2 or RGB)")


def _grayscale(path: Path, ds: object, stored: np.ndarray, bits: int, mode: str, invert: bool) -> DicomPixels:
    if stored.ndim != 2:
        raise DataError(f"{path}: grayscale pixel data of shape {stored.shape}, expected (rows, columns)")
    slope = _first(getattr(ds, "RescaleSlope", None))
    intercept = _first(getattr(ds, "RescaleIntercept", None))
    slope = 1.0 if slope is None else slope
    intercept = 0.0 if intercept is None else intercept
    values = stored.astype(np.float64) * slope + intercept
    if not np.isfinite(values).all():
        raise DataError(f"{path}: pixel values are not finite after RescaleSlope/RescaleIntercept")
    signed = int(getattr(ds, "PixelRepresentation", 0) or 0) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    ends = sorted((low * slope + intercept, high * slope + intercept))
    center = _first(getattr(ds, "WindowCenter", None))
    width = _first(getattr(ds, "WindowWidth", None))
    usable = center is not None and width is not None and math.isfinite(center) and math.isfinite(width) and width > 0
    window = (center, width) if usable else None  # a missing or nonsensical header window falls back to intensity
    return DicomPixels(values.astype(np.float32)[:, :, None], (float(ends[0]), float(ends[1])), mode, window, invert)


__all__ = ["DICOM_SUFFIXES", "DicomPixels", "is_dicom_file", "read_dicom"]
