"""Readers for the data sources; each returns a ``Raw`` set with the image policy already applied.

Spec strings: ``npz:PATH``, ``medmnist:NAME[:SIZE]``, ``folder:PATH``, ``csv:PATH``, ``phantom:blood``.
Every problem with the input is a one-line ``DataError`` naming the file, folder, key or row.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from synthmed.data.config import DataConfig
from synthmed.data.policy import IMAGE_SUFFIXES, describe, fit_array, fit_size, read_image, stack
from synthmed.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass
class Raw:
    """A whole source after the image policy; ``split`` holds the source's own split per image (or None)."""

    images: np.ndarray
    labels: np.ndarray
    ids: list[str]
    classes: list[str]
    split: list[str] | None = None
    groups: list[str] | None = None
    policy: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def parse_spec(spec: str) -> tuple[str, str]:
    kind, sep, rest = spec.partition(":")
    kinds = ("npz", "medmnist", "folder", "csv", "phantom")
    if not sep or kind not in kinds or not rest:
        raise DataError(f"bad data source '{spec}': expected one of npz:PATH, medmnist:NAME[:SIZE], folder:PATH, csv:PATH, phantom:blood")
    return kind, rest


def read_source(cfg: DataConfig) -> Raw:
    kind, rest = parse_spec(cfg.source)
    if kind == "npz":
        return read_npz(Path(rest).expanduser(), cfg)
    if kind == "medmnist":
        return read_npz(medmnist_file(rest, cfg), cfg)
    if kind == "folder":
        return read_folder(Path(rest).expanduser(), cfg)
    if kind == "csv":
        return read_csv(Path(rest).expanduser(), cfg)
    return read_phantom(rest, cfg)


def clean_class_name(name: str) -> str:
    """'immature granulocytes(myelocytes, ...)' -> 'immature granulocytes' (usable as a folder name)."""
    return re.sub(r"\s+", " ", name.split("(")[0]).strip().replace("/", "-") or name


# ------------------------------------------------------------------------------------------------ npz / medmnist


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


def read_npz(path: Path, cfg: DataConfig) -> Raw:
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
    return Raw(images, labels, ids, classes, split, None, describe(cfg.size, cfg.resize, images.shape[3], images.shape[1:3], native), warn)


def _check_images(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[3] not in (1, 3):
        raise DataError(f"{path}: '{key}' must have shape (N, H, W) or (N, H, W, 3), got {x.shape}")
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


# ------------------------------------------------------------------------------------------------ folder


def _list_class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path, base: Path, cfg: DataConfig, warn: list[str]) -> list[Path]:
    files = []
    for p in sorted(folder.rglob("*")):
        if p.is_dir() or any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue  # hidden files (.DS_Store ...) are ignored silently
        if p.suffix.lower() in IMAGE_SUFFIXES:
            files.append(p)
            continue
        msg = f"{p}: not an image file (suffix '{p.suffix}'); skipped"
        if cfg.strict:
            raise DataError(msg.replace("; skipped", "; remove it or drop --strict"))
        warn.append(msg)
    return files


def read_folder(root: Path, cfg: DataConfig) -> Raw:
    """ImageFolder (one subfolder per class), optionally under ``train/ val/ test/``."""
    if not root.is_dir():
        raise DataError(f"folder not found: {root}")
    top = {p.name.lower(): p for p in _list_class_dirs(root)}
    split_dirs = {s: top[s] for s in SPLITS if s in top}
    warn: list[str] = []
    if "train" in split_dirs and set(top) <= set(SPLITS):
        parts = [(s, d) for s, d in split_dirs.items()]
        classes = sorted(p.name for p in _list_class_dirs(split_dirs["train"]))
    elif split_dirs and set(top) <= set(SPLITS):
        raise DataError(f"{root}: has {'/'.join(sorted(split_dirs))} folders but no train/ folder")
    else:
        parts = [("", root)]
        classes = [p.name for p in _list_class_dirs(root)]
    classes = _fixed_classes(cfg, classes, str(root))
    if len(classes) == 0:
        raise DataError(f"{root}: no class subfolders (expected one folder of images per class)")
    if len(classes) < 2:
        raise DataError(f"{root}: only one class ('{classes[0]}'); a classifier needs at least 2 class folders")
    index = {c: i for i, c in enumerate(classes)}
    images, labels, ids, split = [], [], [], []
    native: set[tuple[int, int]] = set()
    for s, d in parts:
        for cdir in _list_class_dirs(d):
            if cdir.name not in index:
                raise DataError(f"{cdir}: class folder '{cdir.name}' is not a class of the train split ({', '.join(classes)})")
            files = _image_files(cdir, root, cfg, warn)
            if not files:
                raise DataError(f"{cdir}: empty class folder (no images)")
            for f in files:
                arr = read_image(f, cfg.max_image_pixels)
                native.add(arr.shape[:2])
                images.append(fit_size(arr, cfg.size, cfg.resize))
                labels.append(index[cdir.name])
                ids.append(f.relative_to(root).as_posix())
                split.append(s)
        if s == "train":
            missing = [c for c in classes if not (d / c).is_dir()]
            if missing:
                raise DataError(f"{d}: class folder '{missing[0]}' is missing")
    arr = stack(images, cfg.size, cfg.channels, warn, str(root))
    policy = describe(cfg.size, cfg.resize, arr.shape[3], arr.shape[1:3], native)
    return Raw(arr, np.asarray(labels, np.int64), ids, classes, split if parts[0][0] else None, None, policy, warn)


def _fixed_classes(cfg: DataConfig, found: list[str], what: str) -> list[str]:
    if cfg.classes is None:
        return found
    unknown = [c for c in found if c not in cfg.classes]
    if unknown:
        raise DataError(f"{what}: class '{unknown[0]}' is not in data.classes ({', '.join(cfg.classes)})")
    return list(cfg.classes)


# ------------------------------------------------------------------------------------------------ csv


def read_csv(path: Path, cfg: DataConfig) -> Raw:
    """Columns ``path,label`` (+ optional ``split``, ``group``); paths relative to the CSV's folder."""
    if not path.is_file():
        raise DataError(f"csv file not found: {path}")
    base = path.parent.resolve()
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: not a readable UTF-8 CSV ({' '.join(str(err).split())})") from None
    for need in ("path", "label"):
        if need not in cols:
            raise DataError(f"{path}: missing column '{need}' (found {', '.join(cols) or 'none'}; need path,label[,split,group])")
    has_split, has_group = "split" in cols, "group" in cols
    seen: dict[str, int] = {}
    for n, r in enumerate(rows, start=2):  # line numbers as in an editor (header = line 1)
        p = r["path"]
        where = f"{path} line {n}"
        if not p:
            raise DataError(f"{where}: empty path")
        if not r["label"]:
            raise DataError(f"{where}: empty label for '{p}'")
        pp = PurePosixPath(p.replace("\\", "/"))
        if pp.is_absolute() or re.match(r"^[A-Za-z]:", p) or ".." in pp.parts:
            raise DataError(f"{where}: path '{p}' must be relative to the CSV folder without '..' (absolute or escaping paths are refused)")
        key = pp.as_posix()
        if key in seen:
            raise DataError(f"{where}: duplicate path '{p}' (first on line {seen[key]})")
        seen[key] = n
        if has_split and r["split"] not in SPLITS:
            raise DataError(f"{where}: split '{r['split']}' is not one of train, val, test")
        if has_group and not r["group"]:
            raise DataError(f"{where}: empty group for '{p}'")
    if not rows:
        raise DataError(f"{path}: no rows")
    train_labels = [r["label"] for r in rows if not has_split or r["split"] == "train"]
    found = sorted(set(train_labels), key=lambda s: (0, int(s), "") if s.lstrip("-").isdigit() else (1, 0, s))
    if cfg.classes is not None:
        for n, r in enumerate(rows, start=2):
            if r["label"] not in cfg.classes:
                raise DataError(f"{path} line {n}: unknown label '{r['label']}' (data.classes: {', '.join(cfg.classes)})")
        classes = list(cfg.classes)
    else:
        classes = found
        for n, r in enumerate(rows, start=2):
            if r["label"] not in classes:
                raise DataError(f"{path} line {n}: unknown label '{r['label']}' in split '{r.get('split')}' (not among the train labels: {', '.join(classes)})")
    if len(classes) < 2:
        raise DataError(f"{path}: only one class ('{classes[0]}'); a classifier needs at least 2")
    index = {c: i for i, c in enumerate(classes)}
    warn: list[str] = []
    images, native = [], set()
    for r in rows:
        f = base / r["path"]
        if not f.is_file():
            raise DataError(f"{path}: image not found: {r['path']} (paths are relative to the CSV's folder)")
        arr = read_image(f, cfg.max_image_pixels)
        native.add(arr.shape[:2])
        images.append(fit_size(arr, cfg.size, cfg.resize))
    arr = stack(images, cfg.size, cfg.channels, warn, str(path))
    labels = np.asarray([index[r["label"]] for r in rows], np.int64)
    ids = [PurePosixPath(r["path"].replace("\\", "/")).as_posix() for r in rows]
    policy = describe(cfg.size, cfg.resize, arr.shape[3], arr.shape[1:3], native)
    return Raw(arr, labels, ids, classes, [r["split"] for r in rows] if has_split else None,
               [r["group"] for r in rows] if has_group else None, policy, warn)  # fmt: skip


# ------------------------------------------------------------------------------------------------ phantom


def read_phantom(rest: str, cfg: DataConfig) -> Raw:
    from synthmed.data.phantom import make_phantom

    if rest != "blood":
        raise DataError(f"unknown phantom 'phantom:{rest}': the only phantom is phantom:blood")
    p = cfg.phantom
    size = cfg.size if cfg.size is not None and 28 <= cfg.size <= 128 else p.size
    images, labels, classes = make_phantom(p.n_classes, p.n_per_class, size, p.seed)
    warn: list[str] = []
    images = fit_array(images, cfg.size, cfg.resize, cfg.channels, warn, "phantom:blood")
    ids = [f"phantom/{i:05d}" for i in range(len(labels))]
    policy = describe(cfg.size, cfg.resize, images.shape[3], images.shape[1:3], {(size, size)})
    return Raw(images, labels, ids, classes, None, None, policy, warn)
