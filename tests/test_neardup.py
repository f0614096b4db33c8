"""Near-duplicate leakage guard (data/neardup.py): crafted near-copies of val/test images are found everywhere
(training split, synthetic set, generator-training images), removed from training only, reported, and refused
under ``data.strict``; the false-positive rate on the real BloodMNIST val/test split is measured."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthmed.classifiers.guards import near_duplicate_guard
from synthmed.data import neardup
from synthmed.data.config import DataConfig
from synthmed.data.dataset import ImageSet
from synthmed.data.load import load_data, neardup_report_path
from synthmed.data.phantom import make_phantom
from synthmed.errors import DataError, LeakageError
from synthmed.layout import RunLayout


def jpeg(x: np.ndarray, quality: int = 75) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def shift(x: np.ndarray) -> np.ndarray:  # one pixel right, edge column replicated
    return np.concatenate([x[:, :1], x[:, :-1]], axis=1)


def resize(x: np.ndarray) -> np.ndarray:  # down to 85 % and back
    h, w = x.shape[:2]
    small = Image.fromarray(x).resize((int(w * 0.85), int(h * 0.85)), Image.BILINEAR)
    return np.asarray(small.resize((w, h), Image.BILINEAR))


def brighter(x: np.ndarray) -> np.ndarray:
    return np.clip(x.astype(np.int16) + 20, 0, 255).astype(np.uint8)


CRAFTS = {"jpeg": jpeg, "shift": shift, "resize": resize, "brightness": brighter}


@pytest.fixture(scope="module")
def phantom() -> tuple[np.ndarray, np.ndarray]:
    images, labels, _ = make_phantom(4, 30, 32, 0)
    return images, labels


def test_within_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**63, size=(3, 300, 2), dtype=np.uint64)
    b = rng.integers(0, 2**63, size=(200, 2), dtype=np.uint64)
    b[7] = a[1, 5]
    b[7, 0] ^= np.uint64(0b1011)  # 3 bits from variant 1 of candidate 5
    full = np.min([neardup.hamming(v, b).astype(int) for v in a], axis=0)
    for t in (3, 50, 64, 70):
        dist, idx = neardup.within(a, b, t)
        want = full.min(axis=1)
        assert np.array_equal(dist, np.where(want <= t, want, neardup.BITS + 1))
        hit = want <= t
        assert np.array_equal(full[np.flatnonzero(hit), idx[hit]], want[hit])
    assert neardup.within(a, b, 3)[1][5] == 7


@pytest.mark.parametrize("craft", sorted(CRAFTS))
def test_crafted_near_copy_is_within_default_distance(phantom, craft: str) -> None:
    images, _ = phantom
    copies = np.stack([CRAFTS[craft](x) for x in images])
    assert not any(np.array_equal(c, x) for c, x in zip(copies, images)), "crafted copies must differ in pixels"
    dist, idx = neardup.within(neardup.phash_shifted(copies), neardup.phash(images), neardup.DEFAULT_DISTANCE)
    assert (dist <= neardup.DEFAULT_DISTANCE).all(), f"{craft}: missed {np.flatnonzero(dist > neardup.DEFAULT_DISTANCE)}"


def _npz_with_near_copies(tmp_path: Path, phantom) -> tuple[Path, list[str]]:
    images, labels = phantom
    order = np.argsort(labels, kind="stable")
    images, labels = images[order], labels[order]
    is_val = np.zeros(len(labels), bool)
    is_test = np.zeros(len(labels), bool)
    for c in range(4):
        pos = np.flatnonzero(labels == c)
        is_val[pos[:4]] = True
        is_test[pos[4:8]] = True
    tr = ~(is_val | is_test)
    val, test = images[is_val], images[is_test]
    crafted = [jpeg(val[0]), shift(val[1]), resize(test[2]), brighter(test[3])]
    train = np.concatenate([images[tr], np.stack(crafted)])
    train_labels = np.concatenate([labels[tr], labels[is_val][:2], labels[is_test][2:4]])
    path = tmp_path / "d.npz"
    np.savez(path, train_images=train, train_labels=train_labels[:, None], val_images=val,
             val_labels=labels[is_val][:, None], test_images=test, test_labels=labels[is_test][:, None])
    n = int(tr.sum())
    return path, [f"train/{i:05d}" if len(train) > 9999 else f"train/{i}" for i in range(n, n + 4)]


def test_load_data_removes_crafted_near_copies_from_training(tmp_path: Path, phantom) -> None:
    path, _ = _npz_with_near_copies(tmp_path, phantom)
    data = load_data(DataConfig(source=f"npz:{path}"), run_dir=tmp_path / "run", echo_warnings=False)
    n = len(data.train_pool)
    rep = data.near_duplicates
    assert rep["removed"] == 4 and rep["per_split"] == {"val": 2, "test": 2}, rep
    crafted_ids = set(data.train_pool.ids[n - 4:])
    assert {e["candidate"] for e in rep["examples"]} == crafted_ids
    assert not crafted_ids & set(data.train.ids), "near-copies must leave training"
    assert len(data.val) == 16 and len(data.test) == 16, "val/test never shrink"
    assert len(data.train) == n - 4
    assert any("near-duplicates of val/test" in w for w in data.warnings)
    written = neardup_report_path(tmp_path / "run")
    assert written.is_file() and written.parent == RunLayout(tmp_path / "run").data
    with pytest.raises(DataError, match="near-duplicates of val/test"):
        load_data(DataConfig(source=f"npz:{path}", strict=True), echo_warnings=False)
    loose = load_data(DataConfig(source=f"npz:{path}", near_duplicate_distance=0), echo_warnings=False)
    assert loose.near_duplicates["removed"] < 4  # the threshold is data.near_duplicate_distance


def test_synthetic_and_generator_training_near_copies(tmp_path: Path, phantom) -> None:
    images, labels = phantom
    val = ImageSet(images[:8], labels[:8], [f"val/{i}" for i in range(8)])
    test = ImageSet(images[8:16], labels[8:16], [f"test/{i}" for i in range(8)])
    fresh = images[16:26]
    synth_imgs = np.concatenate([fresh, np.stack([jpeg(images[0]), shift(images[9]), brighter(images[10])])])
    synth = ImageSet(synth_imgs, labels[16:29], [f"synthetic/{i}" for i in range(13)])
    kept, rep = near_duplicate_guard(None, val, test, synth, echo=False)
    assert len(kept) == 10 and set(kept.ids) == {f"synthetic/{i}" for i in range(10)}
    assert rep["synthetic"]["removed"] == 3 and rep["synthetic"]["per_split"] == {"val": 1, "test": 2}
    with pytest.raises(LeakageError, match="synthetic set"):
        near_duplicate_guard(None, val, test, synth, strict=True, echo=False)
    # the generator trained on a near-copy of a test image (listed in its training_images.csv)
    pool = ImageSet(np.concatenate([fresh, resize(images[12])[None]]), labels[16:27], [f"train/{i}" for i in range(11)])
    gen = RunLayout(tmp_path).generator
    gen.mkdir(parents=True)
    with open(gen / "training_images.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "label", "pixel_hash"])
        w.writerows([[f"train/{i}", 0, "x"] for i in range(11)])
    _, rep = near_duplicate_guard(tmp_path, val, test, None, pool=pool, echo=False)
    assert rep["generator_training"]["per_split"] == {"val": 0, "test": 1}
    assert rep["generator_training"]["examples"][0]["candidate"] == "train/10"
    with pytest.raises(LeakageError, match="retrain"):
        near_duplicate_guard(tmp_path, val, test, None, pool=pool, strict=True, echo=False)


def test_bloodmnist_false_positive_rate_and_crafted_copies(shared_dir: Path) -> None:
    """Measured on the real split: val images flagged against test (distinct images) at the default distance."""
    d = np.load(shared_dir / "data" / "bloodmnist.npz")
    val, test = d["val_images"], d["test_images"]
    exact = {x.tobytes() for x in test}
    distinct = np.array([x.tobytes() not in exact for x in val])
    dist, _ = neardup.within(neardup.phash_shifted(val[distinct]), neardup.phash(test), neardup.DEFAULT_DISTANCE)
    flagged = int((dist <= neardup.DEFAULT_DISTANCE).sum())
    rate = flagged / int(distinct.sum())
    print(f"BloodMNIST val->test at distance {neardup.DEFAULT_DISTANCE}: {flagged} of {int(distinct.sum())} "
          f"val images flagged ({100 * rate:.2f} %)")
    assert rate < 0.005
    rng = np.random.default_rng(0)
    sel = rng.choice(len(test), 200, replace=False)
    for name, craft in CRAFTS.items():
        copies = np.stack([craft(test[i]) for i in sel])
        dist, idx = neardup.within(neardup.phash_shifted(copies), neardup.phash(test), neardup.DEFAULT_DISTANCE)
        assert (dist <= neardup.DEFAULT_DISTANCE).all(), f"{name}: {int((dist > neardup.DEFAULT_DISTANCE).sum())} missed"


def test_flat_images_are_left_to_the_exact_guard() -> None:
    """Single-colour images have arbitrary pHash bits: they must not all count as near-copies of each other."""
    flat = np.stack([np.full((16, 16, 3), v, np.uint8) for v in (10, 60, 110, 160)])
    assert not neardup.informative(flat).any()
    hashes = neardup.phash(flat)
    hit = neardup.find(neardup.phash_shifted(flat[:2]), ["a", "b"], hashes[2:], ["c", "d"], 16, "val",
                       cand_ok=neardup.informative(flat[:2]), held_ok=neardup.informative(flat[2:]))
    assert hit.count == 0
    textured = np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3), dtype=np.uint8)
    assert neardup.informative(textured).all()
    same = neardup.find(neardup.phash_shifted(textured), ["x", "y"], neardup.phash(textured), ["u", "v"], 16, "val",
                        cand_ok=neardup.informative(textured), held_ok=neardup.informative(textured))
    assert same.count == 2 and same.pairs[0][1] == "u"
