"""File sources: ``folder:PATH`` (ImageFolder, optionally under train/ val/ test/), ``csv:PATH``
(``path,label[,split,group]``) and ``dicom:DIR`` / ``dicom:FILE.csv`` (the same layouts, of DICOM files).

Every file goes through ``load_file`` (PIL images at full depth, or DICOM) and a ``Collector`` (the image policy;
facts only for ``data info``). A folder may mix image files and DICOM files.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path, PurePosixPath

import numpy as np

from synthmed.data.config import DataConfig
from synthmed.data.dicom import DICOM_SUFFIXES, is_dicom_file, read_dicom
from synthmed.data.policy import IMAGE_SUFFIXES, read_pixels
from synthmed.data.raw import SPLITS, Collector, Raw
from synthmed.errors import DataError


def load_file(path: Path, cfg: DataConfig, collector: Collector) -> None:
    """Decode one image or DICOM file and hand it to ``collector``."""
    if path.suffix.lower() not in IMAGE_SUFFIXES and is_dicom_file(path):
        d = read_dicom(path, cfg.max_image_pixels)
        collector.add(d.array, d.value_range, d.mode, d.window, d.invert)
        return
    arr, value_range, mode = read_pixels(path, cfg.max_image_pixels)
    collector.add(arr, value_range, mode)




def _list_class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path, base: Path, cfg: DataConfig, warn: list[str], dicom: bool = False) -> list[Path]:
    files = []
    for p in sorted(folder.rglob("*")):
        if p.is_dir() or any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue  # hidden files (.DS_Store ...) are ignored silently
        suffix = p.suffix.lower()
        if (suffix in DICOM_SUFFIXES or not dicom and suffix in IMAGE_SUFFIXES
                or suffix not in IMAGE_SUFFIXES and is_dicom_file(p)):
            files.append(p)
            continue
        kind = "a DICOM" if dicom else "an image"
        msg = f"{p}: not {kind} file (suffix '{p.suffix}'); skipped"
        if cfg.strict:
            raise DataError(msg.replace("; skipped", "; remove it or drop --strict"))
        warn.append(msg)
    return files


def read_folder(root: Path, cfg: DataConfig, facts_only: bool = False, dicom: bool = False) -> Raw:
    """ImageFolder (one subfolder per class), optionally under ``train/ val/ test/``; ``dicom``: .dcm files only."""
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
    collector = Collector(cfg, facts_only)
    labels, ids, split = [], [], []
    for s, d in parts:
        for cdir in _list_class_dirs(d):
            if cdir.name not in index:
                raise DataError(f"{cdir}: class folder '{cdir.name}' is not a class of the train split ({', '.join(classes)})")
            files = _image_files(cdir, root, cfg, warn, dicom)
            if not files:
                raise DataError(f"{cdir}: empty class folder (no {'DICOM files' if dicom else 'images'})")
            for f in files:
                load_file(f, cfg, collector)
                labels.append(index[cdir.name])
                ids.append(f.relative_to(root).as_posix())
                split.append(s)
        if s == "train":
            missing = [c for c in classes if not (d / c).is_dir()]
            if missing:
                raise DataError(f"{d}: class folder '{missing[0]}' is missing")
    arr, policy, facts = collector.finish(warn, str(root))
    return Raw(arr, np.asarray(labels, np.int64), ids, classes, split if parts[0][0] else None, None, policy, warn, facts)


def _fixed_classes(cfg: DataConfig, found: list[str], what: str) -> list[str]:
    if cfg.classes is None:
        return found
    unknown = [c for c in found if c not in cfg.classes]
    if unknown:
        raise DataError(f"{what}: class '{unknown[0]}' is not in data.classes ({', '.join(cfg.classes)})")
    return list(cfg.classes)


# ------------------------------------------------------------------------------------------------ csv


def read_csv(path: Path, cfg: DataConfig, facts_only: bool = False) -> Raw:
    """Columns ``path,label`` (+ optional ``split``, ``group``); paths relative to the CSV's folder."""
    if not path.is_file():
        raise DataError(f"csv file not found: {path}")
    base = path.parent.resolve()
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            rows = []
            for r in reader:
                if None in r:  # DictReader puts the fields beyond the header under None
                    raise DataError(f"{path} line {reader.line_num}: {len(cols) + len(r[None])} fields but the header "
                                    f"has {len(cols)} ({', '.join(cols)}); quote fields that contain commas")
                rows.append({(k or "").strip(): (v or "").strip() for k, v in r.items()})
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
    collector = Collector(cfg, facts_only)
    for r in rows:
        f = base / r["path"]
        if not f.is_file():
            raise DataError(f"{path}: image not found: {r['path']} (paths are relative to the CSV's folder)")
        load_file(f, cfg, collector)
    arr, policy, facts = collector.finish(warn, str(path))
    labels = np.asarray([index[r["label"]] for r in rows], np.int64)
    ids = [PurePosixPath(r["path"].replace("\\", "/")).as_posix() for r in rows]
    return Raw(arr, labels, ids, classes, [r["split"] for r in rows] if has_split else None,
               [r["group"] for r in rows] if has_group else None, policy, warn, facts)  # fmt: skip
