"""Filter decisions: confidence threshold, near-duplicates (first by id kept), copies, disabled."""

from __future__ import annotations

import numpy as np

from synthmed.synthetic import filtering
from synthmed.synthetic.config import FilterConfig


def _ids(n: int) -> list[str]:
    return [f"c00_{i:06d}" for i in range(n)]


def test_confidence_threshold() -> None:
    cfg = FilterConfig(min_confidence=0.6)
    conf = np.array([0.9, 0.6, 0.59, 0.1])
    r = filtering.decide(_ids(4), np.zeros(4), conf, cfg)
    assert r.kept.tolist() == [True, True, False, False]
    assert r.reasons == ["", "", "low_confidence", "low_confidence"] and r.vetted


def test_intended_confidence_picks_the_label_column() -> None:
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.4, 0.6]])
    assert filtering.intended_confidence(probs, np.array([0, 0, 1])).tolist() == [0.7, 0.2, 0.6]


def test_near_duplicates_keep_first_by_id_within_class() -> None:
    vec = np.array([[0.0, 0.0], [0.0, 0.05], [5.0, 5.0], [0.0, 0.02], [0.0, 0.01]])
    labels = np.array([0, 0, 0, 0, 1])  # the last one is a duplicate in position but of another class
    ids = ["c00_000003", "c00_000001", "c00_000002", "c00_000000", "c01_000000"]
    r = filtering.decide(ids, labels, np.ones(5), FilterConfig(), dup_vectors=vec, dup_threshold=0.1)
    # by id order c00_000000 (index 3) comes first: it is kept and indices 0 and 1 are its duplicates
    assert r.kept.tolist() == [False, False, True, True, True]
    assert r.reasons[:2] == ["near_duplicate", "near_duplicate"] and r.duplicate_of[0] == "c00_000000"


def test_duplicates_resolved_among_survivors_only() -> None:
    vec = np.zeros((2, 3))
    conf = np.array([0.1, 0.9])  # the first twin has low confidence: the second must survive
    r = filtering.decide(_ids(2), np.zeros(2), conf, FilterConfig(), dup_vectors=vec, dup_threshold=0.5)
    assert r.kept.tolist() == [False, True] and r.reasons == ["low_confidence", ""]


def test_copies_dropped_first_and_switches() -> None:
    flags = np.array([True, False, False])
    conf = np.array([0.1, 0.9, 0.9])
    r = filtering.decide(_ids(3), np.zeros(3), conf, FilterConfig(), copy_flags=flags)
    assert r.reasons == ["memorized_copy", "", ""]
    r = filtering.decide(_ids(3), np.zeros(3), conf, FilterConfig(drop_copies=False), copy_flags=flags)
    assert r.reasons == ["low_confidence", "", ""]
    vec = np.zeros((3, 2))
    r = filtering.decide(_ids(3), np.zeros(3), np.ones(3), FilterConfig(drop_near_duplicates=False),
                         dup_vectors=vec, dup_threshold=1.0)
    assert r.kept.all()


def test_disabled_keeps_everything_but_records_confidence() -> None:
    conf = np.array([0.01, 0.99])
    r = filtering.decide(_ids(2), np.zeros(2), conf, FilterConfig(enabled=False), copy_flags=np.array([True, True]),
                         dup_vectors=np.zeros((2, 2)), dup_threshold=1.0)
    assert r.kept.all() and not r.vetted and r.reasons == ["", ""]
    rows = filtering.apply_to_manifest([{"id": "a", "kept": True}, {"id": "b", "kept": False}], r, conf)
    assert [x["kept"] for x in rows] == ["true", "true"] and rows[0]["confidence"] == "0.010000"


def test_manifest_rows_and_stats() -> None:
    conf = np.array([0.9, 0.2, 0.8])
    labels = np.array([0, 0, 1])
    r = filtering.decide(_ids(3), labels, conf, FilterConfig())
    original = [{"id": str(i), "kept": True, "prompt": "p"} for i in range(3)]
    rows = filtering.apply_to_manifest(original, r, conf)
    assert [x["kept"] for x in rows] == ["true", "false", "true"] and rows[1]["filter_reason"] == "low_confidence"
    assert original[1]["kept"] is True and rows[0]["prompt"] == "p"  # inputs untouched, other columns kept
    s = filtering.filter_stats(labels, r, ["a", "b"])
    assert s["overall"] == {"generated": 3, "kept": 2, "kept_fraction": 2 / 3,
                            "dropped": {"memorized_copy": 0, "low_confidence": 1,
                                                                   "far_from_prototype": 0, "near_duplicate": 0}}
    assert s["per_class"]["a"]["kept"] == 1 and s["vetted"] is True


def test_vetting_classifier_is_class_balanced_unless_told_otherwise() -> None:
    from synthmed.config import load_config, with_overrides
    from synthmed.quality.stage import vetting_config

    cfg = load_config(None, [])
    assert cfg.imbalance.method == "none" and vetting_config(cfg).imbalance.method == "resample"
    assert vetting_config(with_overrides(cfg, {"filter.balanced_vetting": False})).imbalance.method == "none"
    la = with_overrides(cfg, {"imbalance.method": "logit_adjustment"})
    assert vetting_config(la).imbalance.method == "logit_adjustment", "an explicit imbalance method is kept"


def test_class_thresholds_follow_real_val_confidence_capped_at_tau() -> None:
    # class 0: the classifier is sure of real images; class 1: unsure even on real ones; class 2: no val images
    real_conf = np.array([0.95, 0.9, 0.99, 0.97, 0.2, 0.3, 0.4, 0.25])
    real_labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    th = filtering.class_thresholds(real_conf, real_labels, 3, tau=0.5, quantile=0.0)
    assert th.tolist() == [0.5, 0.2, 0.5], "never above tau; the minimum of class 1's real confidences"
    th_q = filtering.class_thresholds(real_conf, real_labels, 3, tau=0.5, quantile=0.5)
    assert abs(th_q[1] - np.quantile([0.2, 0.3, 0.4, 0.25], 0.5)) < 1e-12


def test_decide_uses_per_class_thresholds() -> None:
    cfg = FilterConfig(min_confidence=0.5, drop_near_duplicates=False)
    labels = np.array([0, 0, 1, 1])
    conf = np.array([0.45, 0.6, 0.45, 0.1])
    assert filtering.decide(_ids(4), labels, conf, cfg).kept.tolist() == [False, True, False, False]
    r = filtering.decide(_ids(4), labels, conf, cfg, thresholds=np.array([0.5, 0.3]))
    assert r.kept.tolist() == [False, True, True, False]
    assert r.reasons == ["low_confidence", "", "", "low_confidence"]


def test_per_class_confidence_config() -> None:
    import pytest
    from pydantic import ValidationError

    assert FilterConfig().per_class_confidence == "real_val", "on by default (BENCHMARKS.md, long-tail study v2)"
    assert FilterConfig(per_class_confidence="real_val", real_val_quantile=0.2).real_val_quantile == 0.2
    with pytest.raises(ValidationError):
        FilterConfig(per_class_confidence="sometimes")


def test_vetting_imbalance_picks_the_vetting_classifiers_long_tail_method() -> None:
    from synthmed.config import load_config, with_overrides
    from synthmed.quality.stage import vetting_config

    cfg = load_config(None, [])
    la = vetting_config(with_overrides(cfg, {"filter.vetting_imbalance": "logit_adjustment"}))
    assert la.imbalance.method == "logit_adjustment" and la.imbalance.prior == "real"
    mixed = with_overrides(cfg, {"imbalance.method": "balanced_softmax", "imbalance.prior": "real_plus_synthetic",
                                 "filter.vetting_imbalance": "balanced_softmax"})
    assert vetting_config(mixed).imbalance.prior == "real", "the vetting classifier sees real images only"
    none = vetting_config(with_overrides(cfg, {"filter.vetting_imbalance": "none"}))
    assert none.imbalance.method == "none", "an explicit 'none' beats balanced_vetting"


def test_prototype_thresholds_and_distances() -> None:
    feats = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [12.0, 10.0]])
    labels = np.array([0, 0, 1, 1])
    cent = filtering.class_centroids(feats, labels, 3)
    assert cent[:2].tolist() == [[1.0, 0.0], [11.0, 10.0]] and np.isnan(cent[2]).all()
    d = filtering.prototype_distance(np.array([[1.0, 3.0], [11.0, 10.0]]), np.array([0, 1]), cent)
    assert np.allclose(d, [3.0, 0.0])
    thr = filtering.prototype_thresholds(np.array([1.0, 2.0, 3.0, 0.5]), np.array([0, 0, 0, 1]), 3, quantile=1.0)
    assert thr[0] == 3.0 and thr[1] == 0.5 and np.isinf(thr[2]), "a class without val images is never cut"


def test_decide_drops_far_from_prototype_after_confidence_and_before_duplicates() -> None:
    cfg = FilterConfig(min_confidence=0.5)
    labels = np.array([0, 0, 0, 1])
    conf = np.array([0.9, 0.1, 0.9, 0.9])
    dist = np.array([5.0, 9.0, 1.0, 9.0])
    vec = np.array([[0.0], [0.0], [0.0], [5.0]])  # 0 and 2 are duplicates; 0 is far -> 2 survives
    r = filtering.decide(_ids(4), labels, conf, cfg, dup_vectors=vec, dup_threshold=0.1, prototype_dist=dist,
                         prototype_thr=np.array([2.0, 10.0]))
    assert r.reasons == ["far_from_prototype", "low_confidence", "", ""]
    stats = filtering.filter_stats(labels, r, ["a", "b"])
    assert stats["per_class"]["a"]["dropped"]["far_from_prototype"] == 1


def test_bare_off_from_yaml_means_off() -> None:
    """`--set filter.prototype=off` parses as YAML False; it must mean "off", not a validation error."""
    from synthmed.config import load_config

    cfg = load_config(None, ["filter.per_class_confidence=off", "filter.prototype=off"])
    assert cfg.filter.per_class_confidence == "off" and cfg.filter.prototype == "off"
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        FilterConfig(prototype=True)
