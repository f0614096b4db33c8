"""Memorization audit: planted copies are flagged, distinct images are not; training-image lookup; gallery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from synthmed.data.dataset import ImageSet
from synthmed.metrics import galleries, memorization
from synthmed.metrics.config import QualityConfig


def _set(images: np.ndarray, prefix: str) -> ImageSet:
    return ImageSet(images, np.arange(len(images)) % 2, [f"{prefix}/{i}" for i in range(len(images))])


@pytest.fixture()
def sets() -> dict[str, ImageSet]:
    rng = np.random.default_rng(0)

    def imgs(n: int) -> np.ndarray:
        return rng.integers(0, 256, size=(n, 12, 12, 3), dtype=np.uint8)

    return {"train": _set(imgs(60), "train"), "val": _set(imgs(200), "val"), "syn": _set(imgs(40), "syn")}


def test_nearest_is_exact_for_identical_vectors() -> None:
    ref = np.random.default_rng(1).uniform(size=(50, 3000)).astype(np.float32) * 1000
    d, i = memorization.nearest(ref[[7, 3]], ref, chunk=1)
    assert i.tolist() == [7, 3] and d.tolist() == [0.0, 0.0]


def test_pixel_distance_is_rms_in_unit_range() -> None:
    a = np.zeros((1, 4, 4, 1), np.uint8)
    b = np.full((1, 4, 4, 1), 255, np.uint8)
    d, _ = memorization.pixel_nearest(a, b)
    assert d[0] == pytest.approx(1.0)


def test_audit_flags_planted_copy_and_none_of_distinct(sets: dict[str, ImageSet]) -> None:
    cfg = QualityConfig()
    res = memorization.audit(sets["syn"], sets["train"], sets["val"], cfg)
    assert res.summary["flagged"] == 0 and not res.flags.any()
    images = sets["syn"].images.copy()
    images[5] = sets["train"].images[17]  # an exact copy
    images[9] = np.clip(sets["train"].images[3].astype(int) + 1, 0, 255).astype(np.uint8)  # a near copy
    res = memorization.audit(_set(images, "syn"), sets["train"], sets["val"], cfg)
    assert np.flatnonzero(res.flags).tolist() == [5, 9]
    assert res.summary["flagged_fraction"] == pytest.approx(2 / 40)
    assert res.rows[5]["nn_pixel_id"] == "train/17" and res.rows[5]["copy"] is True
    labels = _set(images, "syn").labels
    per = res.summary["per_label"]
    assert sum(v["flagged"] for v in per.values()) == 2 and sum(v["n"] for v in per.values()) == 40
    assert per[str(int(labels[5]))]["flagged"] >= 1 and per[str(int(labels[9]))]["flagged"] >= 1
    # the reference: the same rule on real val (1% quantile, "at or below": at least one val image, about 1%)
    ref_d = memorization.pixel_nearest(sets["val"].images, sets["train"].images)[0]
    assert res.summary["real_val_flagged"] == int((ref_d <= res.thresholds["pixel"]).sum()) >= 1
    assert sum(v["real_val_flagged"] for v in per.values()) == res.summary["real_val_flagged"]
    assert sum(v["real_val_n"] for v in per.values()) == len(sets["val"])
    assert res.summary["real_val_flagged_fraction"] == pytest.approx(res.summary["real_val_flagged"] / len(sets["val"]))
    assert res.summary["pixel_distance"]["synthetic_to_train"]["q00"] == 0.0
    assert res.thresholds["pixel"] == pytest.approx(np.quantile(memorization.pixel_nearest(
        sets["val"].images, sets["train"].images)[0], 0.01))


def test_feature_space_and_absolute_thresholds(sets: dict[str, ImageSet]) -> None:
    rng = np.random.default_rng(3)
    f_train, f_val, f_syn = rng.normal(size=(60, 8)), rng.normal(size=(200, 8)), rng.normal(size=(40, 8))
    f_syn[2] = f_train[4]
    cfg = QualityConfig(copy_space="feature")
    res = memorization.audit(sets["syn"], sets["train"], sets["val"], cfg, f_syn, f_train, f_val)
    assert res.flags[2] and res.rows[2]["nn_feature_id"] == "train/4" and "feature_distance" in res.summary
    cfg = QualityConfig(copy_threshold_pixel=1.0)  # absolute: everything is "closer than 1.0"
    res = memorization.audit(sets["syn"], sets["train"], sets["val"], cfg)
    assert res.flags.all() and res.thresholds["pixel"] == 1.0
    cfg = QualityConfig(copy_space="both")
    res = memorization.audit(sets["syn"], sets["train"], sets["val"], cfg, f_syn, f_train, f_val)
    assert not res.flags[2]  # close in features, not in pixels


def test_training_images_from_generator_csv(tmp_path: Path, sets: dict[str, ImageSet]) -> None:
    train = sets["train"]
    got, notes = memorization.training_images(tmp_path, train)
    assert got is train and "missing" in notes[0]
    csv = tmp_path / "generator" / "training_images.csv"
    csv.parent.mkdir()
    csv.write_text("id,label,pixel_hash\ntrain/3,1,x\ntrain/10,0,y\nnope,0,z\n")
    got, notes = memorization.training_images(tmp_path, train)
    assert got.ids == ["train/3", "train/10"] and np.array_equal(got.images[0], train.images[3])
    assert "1 of 3" in notes[0]


def test_closest_pairs_gallery(tmp_path: Path, sets: dict[str, ImageSet]) -> None:
    res = memorization.audit(sets["syn"], sets["train"], sets["val"], QualityConfig())
    p = galleries.closest_pairs(sets["syn"].images, sets["train"].images, res.pixel_distance, res.pixel_index,
                                sets["syn"].ids, tmp_path / "g" / "pairs.png", n=4, flags=res.flags)
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    memorization.write_audit_csv(tmp_path / "m.csv", res.rows)
    assert (tmp_path / "m.csv").read_text().splitlines()[0].startswith("id,label,nn_pixel_id,pixel_distance")
