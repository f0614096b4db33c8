"""Fuzzed data-source readers (issue 17 part 4; harness in fuzz_common.py): random bytes, damaged images of every
writable PIL format and mode, huge declared dimensions, odd npz arrays, odd CSV rows and folders with odd names.

Every case loads (``load_data``, or ``read_source(facts_only=True)`` as ``data info`` does) or raises a one-line
``DataError``; any other exception is a bug.
"""

from __future__ import annotations

import io
import struct
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from fuzz_common import (EXT, WRITABLE, cfg_kw_st, count, data_cfg, fuzz, image_bytes, load_one, load_source,
                         read_or_error)
from hypothesis import given
from hypothesis import strategies as st

from synthmed.data.policy import read_pixels
from synthmed.data.sources import read_source
from synthmed.errors import DataError


SUFFIXES = [".png", ".jpg", ".jpeg", ".tif", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".dcm", "", ".txt", ".PNG"]


@fuzz(120)
@given(blob=st.binary(max_size=300), prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a",
                                                            b"BM", b"II*\x00", b"RIFF\x00\x00\x00\x00WEBP", b"P5\n",
                                                            b"\x00" * 128 + b"DICM"]),
       suffix=st.sampled_from(SUFFIXES), kw=cfg_kw_st, facts_only=st.booleans())
def test_random_bytes_files(blob: bytes, prefix: bytes, suffix: str, kw: dict, facts_only: bool) -> None:
    count("random_bytes")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"img{suffix}"
        path.write_bytes(prefix + blob)
        load_one(path, data_cfg(**kw), facts_only)


# (format, mode) pairs PIL can write; the reader must take any of them, intact or damaged.



@fuzz(200)
@given(fm=st.sampled_from(WRITABLE), w=st.integers(1, 20), h=st.integers(1, 20), seed=st.integers(0, 2**16),
       damage=st.sampled_from(["none", "truncate", "flip", "splice"]), where=st.floats(0, 1),
       flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=6),
       kw=cfg_kw_st, facts_only=st.booleans(), wrong_ext=st.booleans())
def test_damaged_images(fm: tuple[str, str], w: int, h: int, seed: int, damage: str, where: float,
                        flips: list[tuple[float, int]], kw: dict, facts_only: bool, wrong_ext: bool) -> None:
    count("damaged_images")
    data = bytearray(image_bytes(*fm, w, h, seed))
    if damage == "truncate":
        data = data[: int(len(data) * where)]
    elif damage == "flip":
        for pos, val in flips:
            data[min(int(pos * len(data)), len(data) - 1)] = val
    elif damage == "splice":
        cut = int(len(data) * where)
        data = data[:cut] + bytes(v for _, v in flips) + data[cut:]
    suffix = ".jpg" if wrong_ext and fm[0] == "PNG" else ".png" if wrong_ext else EXT[fm[0]]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"x{suffix}"
        path.write_bytes(bytes(data))
        load_one(path, data_cfg(**kw), facts_only)


def _png_with_size(width: int, height: int, bit_depth: int, colour: int) -> bytes:
    raw = image_bytes("PNG", "L", 4, 4, 0)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return raw[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + raw[8 + 25:]


@fuzz(60)
@given(width=st.integers(0, 2**31 - 1) | st.integers(1, 5000), height=st.integers(0, 2**31 - 1) | st.integers(1, 5000),
       bit_depth=st.sampled_from([1, 2, 4, 8, 16, 3]), colour=st.sampled_from([0, 2, 3, 4, 6, 5]))
def test_huge_declared_dimensions(width: int, height: int, bit_depth: int, colour: int) -> None:
    count("huge_dims")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.png"
        path.write_bytes(_png_with_size(width, height, bit_depth, colour))
        read_or_error(read_pixels, path, 1_000_000)


NPZ_KEYS = [f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels")]
DTYPES = ["uint8", "int8", "int16", "uint16", "int64", "uint64", "float16", "float32", "float64", "bool", "complex64",
          "<U2", "datetime64[s]", "object"]


def _odd_array(draw: st.DrawFn, shape: tuple[int, ...]) -> np.ndarray:
    dtype = draw(st.sampled_from(DTYPES))
    value = draw(st.sampled_from([0, 1, 7, 255, 256, -1, 0.5, 1e9, float("nan"), float("inf"), 20_000]))
    if dtype == "object":
        arr = np.empty(shape, dtype=object)
        arr[...] = value
        return arr
    if dtype.startswith(("<U", "datetime")) or not (np.isfinite(value) or dtype.startswith(("float", "complex"))):
        return np.zeros(shape, dtype=dtype)
    with np.errstate(all="ignore"):
        return np.full(shape, value).astype(dtype)


@st.composite
def npz_arrays(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """A valid MedMNIST-layout set (3 classes), then 0-3 mutations: drop/add keys, odd dtypes, shapes and values."""
    n, hw = draw(st.integers(0, 12)), draw(st.sampled_from([(4, 4), (3, 5), (1, 1), (0, 4)]))
    ch = draw(st.sampled_from([(), (1,), (3,)]))
    rng = np.random.default_rng(draw(st.integers(0, 99)))
    out = {}
    for split in ("train", "val", "test"):
        out[f"{split}_images"] = rng.integers(0, 256, (n, *hw, *ch), dtype=np.uint8)
        out[f"{split}_labels"] = (np.arange(n) % 3).reshape(-1, 1)
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(NPZ_KEYS + ["images", "x", "é"]))
        what = draw(st.sampled_from(["drop", "dtype", "shape", "value"]))
        old = out.get(key, np.zeros((n,), np.uint8))
        if what == "drop":
            out.pop(key, None)
        elif what == "dtype":
            out[key] = _odd_array(draw, old.shape)
        elif what == "shape":
            out[key] = _odd_array(draw, tuple(draw(st.lists(st.integers(0, 4), max_size=5))))
        elif old.size and old.dtype.kind in "biuf":
            new = old.astype(np.float64)
            new.flat[draw(st.integers(0, old.size - 1))] = draw(st.sampled_from([-1, 3, 255, 1e9, float("nan"), 0.5]))
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[key] = new if draw(st.booleans()) else new.astype(old.dtype)
    return out


@fuzz(150)
@given(arrays=npz_arrays(), stem=st.sampled_from(["x", "bloodmnist", "organamnist_64"]), kw=cfg_kw_st,
       facts_only=st.booleans(), truncate=st.sampled_from([None, 0.1, 0.5, 0.95]))
def test_npz(arrays: dict[str, np.ndarray], stem: str, kw: dict, facts_only: bool, truncate: float | None) -> None:
    count("npz")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{stem}.npz"
        np.savez(path, **arrays)
        if truncate is not None:
            path.write_bytes(path.read_bytes()[: int(path.stat().st_size * truncate)])
        load_source(data_cfg(f"npz:{path}", **kw), facts_only)


# ------------------------------------------------------------------------------------------------ csv / folder

name_st = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=12) \
    .filter(lambda s: s not in (".", "..") and len(s.encode()) < 60)


def _write_assets(root: Path) -> None:
    (root / "img").mkdir()
    for i in range(4):
        (root / "img" / f"a{i}.png").write_bytes(image_bytes("PNG", "RGB", 6, 6, i))
        (root / "img" / f"g{i}.png").write_bytes(image_bytes("PNG", "L", 6 + i % 2, 6, i))
    (root / "img" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "img" / "note.txt").write_text("not an image")


path_st = st.one_of(st.sampled_from([f"img/a{i}.png" for i in range(4)] + [f"img/g{i}.png" for i in range(4)]),
                    st.sampled_from(["img/bad.png", "img/note.txt", "img/missing.png", "../img/a0.png", "/etc/passwd",
                                     "C:\\x.png", "img/../img/a1.png", "img//a2.png", "./img/a3.png", "img", "",
                                     "\\\\server\\share.png", "img/a0.png\x00"]),
                    name_st)
row_st = st.fixed_dictionaries({"path": path_st, "label": st.sampled_from(["a", "b", "c", "", " a", "0", "1"]) | name_st,
                                "split": st.sampled_from(["train", "val", "test", "", "TRAIN", "dev"]),
                                "group": st.sampled_from(["p1", "p2", ""])})


@st.composite
def csv_rows(draw: st.DrawFn) -> list[dict[str, str]]:
    """Valid rows (2 classes, unique paths, splits) then 0-3 mutated cells, appended or dropped rows."""
    n = draw(st.integers(2, 8))
    names = [f"img/a{i}.png" for i in range(4)] + [f"img/g{i}.png" for i in range(0, 4, 2)]
    rows = [{"path": names[i % len(names)] if i < len(names) else f"img/./a{i % 4}.png", "label": "ab"[i % 2],
             "split": ("train", "train", "val", "test")[i % 4] if i >= 2 else "train", "group": f"p{i}"}
            for i in range(n)]
    for _ in range(draw(st.integers(0, 3))):
        what = draw(st.sampled_from(["cell", "append", "drop"]))
        if what == "append":
            rows.append(draw(row_st))
        elif what == "drop" and rows:
            rows.pop(draw(st.integers(0, len(rows) - 1)))
        elif rows:
            row = rows[draw(st.integers(0, len(rows) - 1))]
            field = draw(st.sampled_from(sorted(row)))
            row[field] = draw(row_st)[field]
    return rows


@fuzz(120)
@given(rows=csv_rows(),
       cols=st.sampled_from([("path", "label"), ("path", "label", "split"), ("path", "label", "group"),
                             ("label", "path", "split", "group"), ("path",), ("file", "label"), ()]),
       extra=st.sampled_from(["", "", "", "\n", "\n,,,\n", '\n"unterminated', "\nx,y,z,w,v,u", "\ufeff", "\x00"]),
       kw=cfg_kw_st, classes=st.sampled_from([None, None, ["a", "b"], ["a", "b", "c"]]), facts_only=st.booleans())
def test_csv(rows: list[dict], cols: tuple, extra: str, kw: dict, classes: list | None, facts_only: bool) -> None:
    count("csv")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write_assets(root)
        buf = io.StringIO()
        buf.write(",".join(cols) + "\n")
        for r in rows:
            cells = [r.get(c, r["path"]) for c in cols]
            buf.write(",".join('"' + v.replace('"', '""') + '"' if "," in v else v for v in cells) + "\n")
        (root / "list.csv").write_text(buf.getvalue() + extra, encoding="utf-8")
        load_source(data_cfg(f"csv:{root / 'list.csv'}", classes=classes, **kw), facts_only)


file_kind_st = st.sampled_from(["rgb", "gray", "other_size", "bad", "txt", "hidden", "dir", "dicom_garbage"])


VALID_CLASSES = {"a": [("x", "rgb"), ("y", "rgb")], "b": [("x", "rgb"), ("y", "rgb")]}


@fuzz(80)
@given(extra=st.dictionaries(name_st, st.lists(st.tuples(name_st, file_kind_st), max_size=3), max_size=3),
       base=st.booleans(), splits=st.sampled_from([(), (), ("train",), ("train", "val"), ("val",), ("train", "val", "test")]),
       dicom=st.sampled_from([False, False, True]), kw=cfg_kw_st, facts_only=st.booleans())
def test_folder(extra: dict, base: bool, splits: tuple, dicom: bool, kw: dict, facts_only: bool) -> None:
    count("folder")
    classes = {**(VALID_CLASSES if base else {}), **extra}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        for split in splits or ("",):
            for cname, files in classes.items():
                cdir = root / split / cname
                try:
                    cdir.mkdir(parents=True, exist_ok=True)
                except OSError:  # a name this filesystem refuses: nothing to read
                    continue
                for i, (fname, kind) in enumerate(files):
                    f = cdir / (f".{fname}" if kind == "hidden" else f"{i}{fname[:8]}.png")
                    try:
                        if kind == "dir":
                            f.mkdir(exist_ok=True)
                        elif kind in ("bad", "txt", "dicom_garbage"):
                            f.write_bytes({"bad": b"\x89PNG junk", "txt": b"hello",
                                           "dicom_garbage": b"\0" * 128 + b"DICM" + fname.encode()}[kind])
                            if kind == "txt":
                                f.rename(f.with_suffix(".txt"))
                        else:
                            mode, w = ("RGB", 6) if kind != "gray" else ("L", 6)
                            f.write_bytes(image_bytes("PNG", mode, 7 if kind == "other_size" else w, 6, i))
                    except OSError:
                        continue
        root.mkdir(exist_ok=True)
        spec = f"{'dicom' if dicom else 'folder'}:{root}"
        load_source(data_cfg(spec, **kw), facts_only)


# ------------------------------------------------------------------------------------------------ regressions


def test_csv_row_with_more_fields_than_the_header(tmp_path: Path) -> None:
    """Found by test_csv: an unquoted comma gave AttributeError ('list' object has no attribute 'strip')."""
    _write_assets(tmp_path)
    (tmp_path / "list.csv").write_text("path,label\nimg/a0.png,a\nimg/a1.png,b,extra\n")
    with pytest.raises(DataError, match=r"list\.csv line 3: 3 fields but the header has 2 \(path, label\)"):
        read_source(data_cfg(f"csv:{tmp_path / 'list.csv'}"))


def test_npz_with_empty_images(tmp_path: Path) -> None:
    """0-pixel-high images loaded as a '0x4' dataset (all exact duplicates of each other); now a DataError."""
    arrays = {f"{s}_{k}": np.zeros((6, 0, 4), np.uint8) if k == "images" else np.arange(6) % 2
              for s in ("train", "val", "test") for k in ("images", "labels")}
    np.savez(tmp_path / "x.npz", **arrays)
    with pytest.raises(DataError, match=r"'train_images' has empty images \(shape \(6, 0, 4, 1\)\)"):
        read_source(data_cfg(f"npz:{tmp_path / 'x.npz'}"))
