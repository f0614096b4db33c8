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


def test_mann_whitney_z_matches_scipy() -> None:
    from scipy.stats import mannwhitneyu, norm

    rng = np.random.default_rng(4)
    x, y = rng.normal(0.0, 1, 70).round(1), rng.normal(0.4, 1, 90).round(1)  # rounded: ties exercised
    z = memorization.mann_whitney_z(x, y)
    res = mannwhitneyu(x, y, method="asymptotic", use_continuity=False)
    assert abs(z) == pytest.approx(norm.isf(res.pvalue / 2), rel=1e-6)
    assert (z < 0) == (res.statistic < len(x) * len(y) / 2) and z < 0  # x drawn smaller -> negative
    assert memorization.mann_whitney_z(np.ones(5), np.ones(7)) == 0.0


def test_copying_test_finds_the_copying_class_only() -> None:
    rng = np.random.default_rng(5)
    ref_labels = np.repeat([0, 1, 2], [150, 120, 30])
    ref_d = rng.uniform(0.2, 0.4, len(ref_labels))
    syn_labels = np.repeat([0, 1, 2], [200, 200, 5])
    syn_d = rng.uniform(0.2, 0.4, len(syn_labels))
    syn_d[syn_labels == 1] -= 0.05  # class 1 sits closer to the training images than new real images do
    out = memorization.copying_test(syn_d, syn_labels, ref_d, ref_labels)
    per = out["per_label"]
    assert abs(per["0"]["z"]) < 3 and per["1"]["z"] <= memorization.COPYING_Z
    assert per["2"]["z"] is None and per["2"]["n_synthetic"] == 5  # too few synthetic images for a Z
    assert out["classes_copying"] == ["1"]
    assert out["c_t"] == pytest.approx((150 * per["0"]["z"] + 120 * per["1"]["z"]) / 270)
    far = memorization.copying_test(syn_d + 0.1, syn_labels, ref_d, ref_labels)  # underfitting: Z well above 0
    assert far["c_t"] > 3 and far["classes_copying"] == []


def test_audit_reports_the_copying_test(sets: dict[str, ImageSet]) -> None:
    res = memorization.audit(sets["syn"], sets["train"], sets["val"], QualityConfig())
    ct = res.summary["copying_test"]["pixel"]
    assert set(ct["per_label"]) == {"0", "1"} and ct["per_label"]["0"]["n_synthetic"] == 20
    assert ct["per_label"]["0"]["n_real_val"] == 100 and ct["classes_copying"] == []
    assert abs(ct["c_t"]) < 3  # synthetic and val are drawn alike
    images = sets["syn"].images.copy()
    images[::2] = sets["train"].images[:40:2]  # every class-0 synthetic image is a training copy
    ct = memorization.audit(_set(images, "syn"), sets["train"], sets["val"], QualityConfig()).summary["copying_test"]
    assert ct["pixel"]["classes_copying"] == ["0"] and "feature" not in ct


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


def test_knn_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    q, r = rng.normal(size=(7, 20)), rng.normal(size=(30, 20))
    brute = np.sort(np.linalg.norm(q[:, None] - r[None], axis=2), axis=1)
    d, i = memorization.knn(q, r, 5, chunk=3)
    np.testing.assert_allclose(d, brute[:, :5], rtol=1e-9)
    assert i.tolist() == np.argmin(np.linalg.norm(q[:, None] - r[None], axis=2), axis=1).tolist()
    assert memorization.knn(q, r[:2], 50)[0].shape == (7, 2)  # k is capped by the reference size
    # the audit's nearest image comes from the same pass: nearest() is knn with k = 1
    np.testing.assert_allclose(memorization.nearest(q, r)[0], brute[:, 0], rtol=1e-9)


def test_relative_rule_flags_copies_not_new_images(sets: dict[str, ImageSet]) -> None:
    """The relative rule: a copy (or a near copy) has ratio ~0; new images, synthetic or real val, ~0.9."""
    images = sets["syn"].images.copy()
    images[5] = sets["train"].images[17]
    images[9] = np.clip(sets["train"].images[3].astype(int) + 2, 0, 255).astype(np.uint8)
    syn = _set(images, "syn")
    ratio = memorization.relative_distance(images, sets["train"].images, 10)
    assert ratio[5] == 0.0 and ratio[9] < 0.1 and np.delete(ratio, [5, 9]).min() > 0.5
    for rule, want in (("quantile", [5, 9]), ("relative", [5, 9]), ("either", [5, 9])):
        res = memorization.audit(syn, sets["train"], sets["val"], QualityConfig(copy_rule=rule, copy_relative_k=10))
        assert np.flatnonzero(res.flags).tolist() == want, rule
        near = res.summary["near_copies"]
        assert near["flagged"] == 2 and near["real_val_flagged"] == 0 and near["k"] == 10
        assert sum(v["flagged"] for v in near["per_label"].values()) == 2
        assert near["min_ratio"]["synthetic"] == 0.0 and near["min_ratio"]["real_val"] > 0.5
    # unlike the quantile rule (about 1% of real val by construction), the relative rule flags no real val image
    assert QualityConfig().copy_rule == "quantile"
    res_q = memorization.audit(syn, sets["train"], sets["val"], QualityConfig())
    res_r = memorization.audit(syn, sets["train"], sets["val"], QualityConfig(copy_rule="relative"))
    assert res_q.summary["real_val_flagged"] >= 1 and res_r.summary["real_val_flagged"] == 0
    assert res_r.rows[5]["relative_distance"] == "0.0000"
    # a looser delta catches a looser copy: a training image with visible noise added
    noisy = images.copy()
    noisy[0] = np.clip(sets["train"].images[8].astype(int) + rng_noise(12), 0, 255).astype(np.uint8)
    r0 = memorization.relative_distance(noisy[:1], sets["train"].images, 10)[0]
    assert 0.05 < r0 < 0.5
    loose = QualityConfig(copy_rule="relative", copy_relative_k=10, copy_relative_delta=min(0.99, r0 + 0.01))
    flagged = memorization.audit(_set(noisy, "syn"), sets["train"], sets["val"], loose).flags
    assert flagged[0] and not memorization.audit(
        _set(noisy, "syn"), sets["train"], sets["val"],
        QualityConfig(copy_rule="relative", copy_relative_k=10, copy_relative_delta=r0 * 0.9)).flags[0]


def rng_noise(scale: int) -> np.ndarray:
    return np.random.default_rng(7).integers(-scale, scale + 1, size=(12, 12, 3))
