"""Array sources: ``npz:PATH`` (MedMNIST layout) and ``medmnist:NAME[:SIZE]`` (found, or downloaded and MD5-checked)."""

from __future__ import annotations

import hashlib
import os
import re
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from synthmed.data.config import DataConfig
from synthmed.data.policy import describe, fit_array
from synthmed.data.raw import SPLITS, Raw, array_facts
from synthmed.errors import DataError


def clean_class_name(name: str) -> str:
    """'immature granulocytes(myelocytes, ...)' -> 'immature granulocytes' (usable as a folder name)."""
    return re.sub(r"\s+", " ", name.split("(")[0]).strip().replace("/", "-") or name




_INFO_CACHE: dict[str, dict] = {}


def _medmnist_info() -> dict:
    """``medmnist.info.INFO`` without importing the medmnist package (whose __init__ pulls in torch)."""
    if "info" in _INFO_CACHE:
        return _INFO_CACHE["info"]
    import importlib.util

    info: dict = {}
    try:
        spec = importlib.util.find_spec("medmnist")
        locs = list(spec.submodule_search_locations or []) if spec else []
        if locs and (Path(locs[0]) / "info.py").is_file():
            mod_spec = importlib.util.spec_from_file_location("_synthmed_medmnist_info", Path(locs[0]) / "info.py")
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
            info = dict(module.INFO)
    except Exception:  # noqa: BLE001 - fall back to the package import
        info = {}
    if not info:
        try:
            from medmnist.info import INFO as info  # type: ignore[no-redef]
        except ImportError:  # pragma: no cover - medmnist is a dependency
            info = {}
    _INFO_CACHE["info"] = info
    return info


def read_npz(path: Path, cfg: DataConfig, facts_only: bool = False) -> Raw:
    """MedMNIST layout ``{train,val,test}_{images,labels}``; images (N,H,W) or (N,H,W,3)."""
    if not path.is_file():
        raise DataError(f"npz file not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
        keys = set(data.files)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"{path}: not a readable .npz file ({' '.join(str(err).split())})") from None
    imgs, labs, ids, split = [], [], [], []
    for s in SPLITS:
        for k in (f"{s}_images", f"{s}_labels"):
            if k not in keys:
                raise DataError(f"{path}: missing key '{k}' (expected train/val/test _images and _labels; found {sorted(keys)})")
        try:
            x, y = data[f"{s}_images"], data[f"{s}_labels"]
        except (ValueError, OSError, zipfile.BadZipFile) as err:
            raise DataError(f"{path}: cannot read '{s}_images'/'{s}_labels' ({' '.join(str(err).split())})") from None
        x = _check_images(path, f"{s}_images", x)
        y = _check_labels(path, f"{s}_labels", y)
        if len(x) != len(y):
            raise DataError(f"{path}: length mismatch, '{s}_images' has {len(x)} images but '{s}_labels' has {len(y)} labels")
        imgs.append(x)
        labs.append(y)
        ids += [f"{s}/{i:05d}" for i in range(len(x))]
        split += [s] * len(x)
    shapes = {x.shape[1:] for x in imgs if len(x)}
    if len(shapes) > 1:
        raise DataError(f"{path}: splits have different image shapes {sorted(shapes)}")
    labels = np.concatenate(labs)
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    stem = re.sub(r"_\d+$", "", path.stem.lower())
    info = _medmnist_info().get(stem)
    if info is not None and info.get("task") == "multi-class":
        names = [clean_class_name(info["label"][str(i)]) for i in range(len(info["label"]))]
        if n_classes > len(names):
            raise DataError(f"{path}: label {n_classes - 1} out of range for {stem} ({len(names)} classes)")
        classes = names
    else:
        classes = [f"class_{i}" for i in range(n_classes)]
    warn: list[str] = []
    images = np.concatenate([x for x in imgs])
    native = {images.shape[1:3]}
    images = fit_array(images, cfg.size, cfg.resize, cfg.channels, warn, str(path))
    policy = describe(cfg.size, cfg.resize, images.shape[3], images.shape[1:3], native)
    facts = array_facts(images) if facts_only else None
    return Raw(None if facts_only else images, labels, ids, classes, split, None, policy, warn, facts)


def _check_images(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[3] not in (1, 3):
        raise DataError(f"{path}: '{key}' must have shape (N, H, W) or (N, H, W, 3), got {x.shape}")
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise DataError(f"{path}: '{key}' has empty images (shape {x.shape}); images must be at least 1x1 pixel")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind == "f":
        if not np.isfinite(x).all():
            raise DataError(f"{path}: '{key}' contains NaN or inf")
        lo, hi = float(x.min(initial=0)), float(x.max(initial=0))
        if lo >= 0 and hi <= 1.0:
            return np.rint(x * 255).astype(np.uint8)
        if lo >= 0 and hi <= 255:
            return np.rint(x).astype(np.uint8)
        raise DataError(f"{path}: '{key}' float values outside [0, 1] and [0, 255] (min {lo:g}, max {hi:g})")
    if x.dtype.kind in "iu":
        if x.min(initial=0) < 0 or x.max(initial=0) > 255:
            raise DataError(f"{path}: '{key}' is {x.dtype} with values outside 0..255; save images as uint8")
        return x.astype(np.uint8)
    raise DataError(f"{path}: '{key}' has unsupported dtype {x.dtype} (expected uint8)")


def _check_labels(path: Path, key: str, y: np.ndarray) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{path}: '{key}' must have shape (N,) or (N, 1), got {y.shape} (multi-label is not supported)")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise DataError(f"{path}: '{key}' contains NaN or inf")
        if not (y == np.round(y)).all():
            raise DataError(f"{path}: '{key}' has non-integer labels")
    elif y.dtype.kind not in "iub":
        raise DataError(f"{path}: '{key}' has unsupported dtype {y.dtype} (expected integers)")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise DataError(f"{path}: '{key}' has a negative label ({int(y.min())})")
    if len(y) and y.max() > 10_000:
        raise DataError(f"{path}: '{key}' has label {int(y.max())}, out of range")
    return y


def data_root(cfg: DataConfig) -> Path:
    return Path(cfg.root or os.environ.get("SYNTHMED_DATA") or "~/.synthmed/data").expanduser()


def is_offline() -> bool:
    return any(os.environ.get(k, "") not in ("", "0") for k in ("HF_HUB_OFFLINE", "SYNTHMED_OFFLINE"))


def medmnist_file(rest: str, cfg: DataConfig) -> Path:
    """Find (or download and MD5-verify) ``NAME[_SIZE].npz`` under the data root."""
    name, _, size_text = rest.partition(":")
    name = name.lower()
    info = _medmnist_info().get(name)
    if info is None:
        close = [k for k in _medmnist_info() if k.startswith(name[:4])]
        raise DataError(f"unknown MedMNIST dataset '{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    size = 28
    if size_text:
        if not size_text.isdigit() or int(size_text) not in (28, 64, 128, 224):
            raise DataError(f"bad MedMNIST size '{size_text}' in 'medmnist:{rest}': use 28, 64, 128 or 224")
        size = int(size_text)
    suffix = "" if size == 28 else f"_{size}"
    fname = f"{name}{suffix}.npz"
    url, md5 = info.get(f"url{suffix}"), info.get(f"MD5{suffix}")
    root = data_root(cfg)
    path = root / fname
    if path.is_file():
        return path
    if is_offline() or not url:
        raise DataError(f"{fname} not found and offline: download it from {url} and put it at {path} (or set data.root)")
    try:
        _download(url, path, md5)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - any network failure is the same advice
        raise DataError(f"could not download {fname} ({err.__class__.__name__}: {' '.join(str(err).split())}); "
                        f"download it from {url} and put it at {path}") from None
    return path


def _download(url: str, path: Path, md5: str | None) -> None:
    from synthmed.io import atomic_open

    h = hashlib.md5()
    with urllib.request.urlopen(url, timeout=60) as resp, atomic_open(path, "wb") as fh:  # noqa: S310
        while block := resp.read(1 << 20):
            h.update(block)
            fh.write(block)
        if md5 and h.hexdigest() != md5:
            raise DataError(f"downloaded {path.name} has MD5 {h.hexdigest()}, expected {md5}; not saved, try again")
