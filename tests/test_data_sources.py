"""Data sources: the real shared datasets, the phantom, npz / medmnist / folder / csv readers, info and show."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthmed.cli import main
from synthmed.data.config import DataConfig
from synthmed.data.load import load_data
from synthmed.data.phantom import PHANTOM_CLASSES, make_phantom
from synthmed.data.policy import fit_size, read_image
from synthmed.errors import DataError

BLOOD_CLASSES = ["basophil", "eosinophil", "erythroblast", "immature granulocytes",
                 "lymphocyte", "monocyte", "neutrophil", "platelet"]  # fmt: skip


def load(source: str, **kw) -> object:
    return load_data(DataConfig(source=source, **kw), echo_warnings=False)


# ------------------------------------------------------------------------------------------------ shared data


def test_bloodmnist_official_counts(shared_dir: Path) -> None:
    path = shared_dir / "data" / "bloodmnist.npz"
    d = load(f"npz:{path}")
    raw = np.load(path)
    assert d.classes == BLOOD_CLASSES
    assert (len(d.train_pool), len(d.val), len(d.test)) == (11959, 1712, 3421)
    for split, part in (("train", d.train_pool), ("val", d.val), ("test", d.test)):
        expected = np.bincount(raw[f"{split}_labels"].reshape(-1), minlength=8).tolist()
        assert part.counts(8) == expected
    assert d.train_pool.counts(8) == [852, 2181, 1085, 2026, 849, 993, 2330, 1643]
    summary = d.summary()
    assert [summary["splits"][s]["total"] for s in ("train", "val", "test")] == [11959, 1712, 3421]
    assert d.train.images.shape[1:] == (28, 28, 3) and d.train.images.dtype == np.uint8
    assert d.train.ids[0] == "train/00000" and d.test.ids[-1] == "test/03420"
    # exact copies of val/test images are never trained on (the split itself stays official)
    from synthmed.io import pixel_hash

    held_out = {pixel_hash(im) for im in np.concatenate([d.val.images, d.test.images])}
    assert not any(pixel_hash(im) in held_out for im in d.train.images)
    assert len(d.train) == 11959 - len(d.excluded_ids) and len(d.excluded_ids) >= 8
    assert summary["excluded_from_training"]["total"] == len(d.excluded_ids)
    assert any("exact pixel duplicates" in w for w in d.warnings)  # BloodMNIST has a few (3 val, 5 test)


def test_bloodmnist_via_medmnist_spec(shared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bloodmnist.npz").symlink_to(shared_dir / "data" / "bloodmnist.npz")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = load("medmnist:bloodmnist", root=str(tmp_path))
    assert len(d.val) == 1712 and d.size == (28, 28) and d.classes == BLOOD_CLASSES


def test_pbc_folder(shared_dir: Path) -> None:
    d = load(f"folder:{shared_dir / 'data' / 'pbc-native'}", size=64)
    assert d.n_classes == 8 and d.classes[3] == "ig"
    total = np.asarray(d.train_pool.counts(8)) + d.val.counts(8) + d.test.counts(8)
    assert total.tolist() == [40] * 8
    assert d.train.images.shape[1:] == (64, 64, 3)
    assert d.image_policy["resize"] == "center_crop" and [363, 360] in d.image_policy["native_sizes"]


def test_oct_samples_grayscale_non_square(shared_dir: Path) -> None:
    files = sorted((shared_dir / "data" / "oct2017-samples").glob("*.jpeg"))
    assert len(files) == 4
    for f in files:
        arr = read_image(f)
        assert arr.dtype == np.uint8 and arr.shape[2] == 1 and arr.shape[0] != arr.shape[1]
        assert fit_size(arr, 64, "center_crop").shape == (64, 64, 1)
        assert fit_size(arr, 64, "pad").shape == (64, 64, 1)


# ------------------------------------------------------------------------------------------------ phantom


def test_phantom_deterministic_and_seeded() -> None:
    a, ya, names = make_phantom(5, 6, 32, seed=1)
    b, yb, _ = make_phantom(5, 6, 32, seed=1)
    c, _, _ = make_phantom(5, 6, 32, seed=2)
    assert names == PHANTOM_CLASSES[:5] and a.shape == (30, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(ya, yb)
    assert not np.array_equal(a, c)
    assert len({img.tobytes() for img in a}) == 30  # no two images identical


@pytest.mark.parametrize("n_classes,size", [(2, 28), (8, 33), (5, 128)])
def test_phantom_any_size_and_class_count(n_classes: int, size: int) -> None:
    x, y, names = make_phantom(n_classes, 3, size, seed=0)
    assert x.shape == (3 * n_classes, size, size, 3) and len(names) == n_classes
    assert np.bincount(y).tolist() == [3] * n_classes


def test_phantom_classes_distinct_nearest_centroid() -> None:
    """A crude classifier (nearest centroid on 8x8 thumbnails) is far above chance, but not perfect-trivial."""
    x, y, _ = make_phantom(8, 40, 32, seed=0)
    thumbs = x.reshape(len(x), 8, 4, 8, 4, 3).mean(axis=(2, 4)).reshape(len(x), -1)
    fold = (np.arange(len(x)) // 8) % 4  # labels are interleaved by class
    tr, te = fold != 0, fold == 0
    cents = np.stack([thumbs[tr & (y == c)].mean(0) for c in range(8)])
    pred = np.argmin(((thumbs[te][:, None] - cents[None]) ** 2).sum(-1), axis=1)
    acc = (pred == y[te]).mean()
    assert acc > 0.5  # chance is 0.125
    within = np.std(x[y == 0].astype(float), axis=0).mean()
    assert within > 10  # images of one class still vary (position, stain, noise)


def test_phantom_via_load_data_splits_and_size() -> None:
    d = load("phantom:blood", size=48, phantom={"n_classes": 6, "n_per_class": 20})
    assert d.n_classes == 6 and d.size == (48, 48) and d.channels == 3
    assert len(d.train) + len(d.val) + len(d.test) == 120
    assert d.val.counts(6) == [3] * 6


def test_phantom_fixture(phantom_data) -> None:
    assert phantom_data.n_classes == 4 and phantom_data.size == (32, 32)
    assert set(phantom_data.train.ids).isdisjoint(phantom_data.test.ids)


# ------------------------------------------------------------------------------------------------ npz / medmnist


def write_npz(path: Path, n=(20, 6, 6), shape=(16, 16), n_classes=3, **override) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for s, k in zip(("train", "val", "test"), n):
        arrays[f"{s}_images"] = rng.integers(0, 256, (k, *shape), dtype=np.uint8)
        arrays[f"{s}_labels"] = (np.arange(k) % n_classes).reshape(-1, 1)
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_npz_grayscale_generic_names(tmp_path: Path) -> None:
    d = load(f"npz:{write_npz(tmp_path / 'mine.npz')}")
    assert d.classes == ["class_0", "class_1", "class_2"] and d.channels == 1
    assert (len(d.train), len(d.val), len(d.test)) == (20, 6, 6)
    d3 = load(f"npz:{tmp_path / 'mine.npz'}", channels=3, size=24)
    assert d3.channels == 3 and d3.size == (24, 24)


def test_npz_float_images_in_unit_range_are_scaled(tmp_path: Path) -> None:
    imgs = np.full((20, 8, 8), 0.5, np.float32)
    d = load(f"npz:{write_npz(tmp_path / 'f.npz', shape=(8, 8), train_images=imgs)}")
    assert d.train_pool.images.dtype == np.uint8 and int(d.train_pool.images.max()) == 128


def test_medmnist_offline_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("SYNTHMED_DATA", str(tmp_path))
    code = main(["--offline", "data", "info", "medmnist:bloodmnist:64"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "bloodmnist_64.npz" in err and str(tmp_path / "bloodmnist_64.npz") in err


def test_medmnist_download_verifies_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from synthmed.data import sources_npz as sources

    src = write_npz(tmp_path / "src.npz")
    good = hashlib.md5(src.read_bytes()).hexdigest()
    info = {"pathmnist": {"url": src.as_uri(), "MD5": good, "task": "multi-class",
                          "label": {"0": "a", "1": "b", "2": "c"}}}  # fmt: skip
    monkeypatch.setattr(sources, "_medmnist_info", lambda: info)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("SYNTHMED_OFFLINE", raising=False)
    root = tmp_path / "root"
    d = load("medmnist:pathmnist", root=str(root))
    assert (root / "pathmnist.npz").is_file() and d.classes == ["a", "b", "c"]
    info["pathmnist"]["MD5"] = "0" * 32
    with pytest.raises(DataError, match="MD5"):
        load("medmnist:pathmnist", root=str(tmp_path / "other"))
    assert not (tmp_path / "other" / "pathmnist.npz").exists()
    assert not list((tmp_path / "other").glob(".tmp-*"))


# ------------------------------------------------------------------------------------------------ folder / csv


def save(path: Path, arr: np.ndarray | None = None, mode: str | None = None, size=(20, 20), colour=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr is None:
        im = Image.new(mode or "RGB", size, colour)
    else:
        im = Image.fromarray(arr)
    im.save(path)
    return path


def make_folder(root: Path, classes=("a", "b"), n=6, mode="RGB", size=(20, 20)) -> Path:
    for ci, c in enumerate(classes):
        for i in range(n):
            save(root / c / f"{i}.png", mode=mode, size=size, colour=(ci * 60 + i * 5) if mode == "L" else (ci * 60 + i * 5, 10, 20))
    return root


def test_folder_with_split_subfolders(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", n=8)
    make_folder(tmp_path / "test", n=3)
    d = load(f"folder:{tmp_path}")
    assert len(d.test) == 6 and all(i.startswith("test/") for i in d.test.ids)
    assert len(d.val) >= 2 and all(i.startswith("train/") for i in d.val.ids)  # val carved from train
    assert d.classes == ["a", "b"]


def test_folder_grayscale_stays_one_channel(tmp_path: Path) -> None:
    d = load(f"folder:{make_folder(tmp_path, mode='L')}")
    assert d.channels == 1 and d.size == (20, 20)


def test_csv_source_with_groups(tmp_path: Path) -> None:
    make_folder(tmp_path / "img", classes=("x", "y"), n=10)
    lines = ["path,label,group"] + [f"img/{c}/{i}.png,{c},p{i // 2}" for c in "xy" for i in range(10)]
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    d = load(f"csv:{tmp_path / 'data.csv'}")
    assert d.classes == ["x", "y"] and len(d.train_pool) + len(d.val) + len(d.test) == 20
    assert "img/x/0.png" in d.train_pool.ids + d.val.ids + d.test.ids


def test_data_info_json_and_show(tmp_path: Path, capsys) -> None:
    code = main(["data", "info", "phantom:blood", "--json", "--set", "data.phantom.n_per_class=10", "--shots", "3"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["splits"]["train"]["per_class"] == [3] * 8 and "train_pool" in out
    assert main(["data", "info", "phantom:blood", "--set", "data.phantom.n_classes=3"]) == 0
    text = capsys.readouterr().out
    assert "basophil" in text and "erythroblast" in text and "total" in text
    png = tmp_path / "grid.png"
    assert main(["data", "show", "phantom:blood", "-o", str(png), "--set", "data.phantom.n_classes=3"]) == 0
    with Image.open(png) as im:
        assert im.size[1] >= 3 * 32 and im.mode == "RGB"
