"""Classification metrics equal scikit-learn's; seed statistics follow the t-distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from sklearn import metrics as skm

from synthmed.metrics.classification import MetricAccumulator, classification_metrics
from synthmed.metrics.stats import paired_difference, summarize


def _fixed(n: int = 200, c: int = 4, seed: int = 0, absent: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    if absent is not None:
        y[y == absent] = (absent + 1) % c
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, p


@pytest.mark.filterwarnings("ignore:y_pred contains classes")
@pytest.mark.parametrize("absent", [None, 2])
def test_metrics_equal_sklearn(absent: int | None) -> None:
    y, p = _fixed(absent=absent)
    pred = p.argmax(1)
    m = classification_metrics(y, p, 4)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    with np.errstate(all="ignore"):
        assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert m["macro_precision"] == pytest.approx(skm.precision_score(y, pred, average="macro", zero_division=0))
    assert m["macro_recall"] == pytest.approx(skm.recall_score(y, pred, average="macro", zero_division=0))
    assert np.array_equal(np.asarray(m["confusion"]), skm.confusion_matrix(y, pred, labels=range(4)))
    present = [c for c in range(4) if (y == c).any()]
    per_class_auc = [skm.roc_auc_score(y == c, p[:, c]) for c in present]
    assert m["auc_macro_ovr"] == pytest.approx(np.mean(per_class_auc))
    if absent is None:
        assert m["auc_macro_ovr"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
        assert m["auc_skipped_classes"] == []
    else:
        assert m["auc_skipped_classes"] == [absent] and math.isnan(m["per_class_recall"][absent])
    rec = skm.recall_score(y, pred, labels=present, average=None)
    assert np.allclose([m["per_class_recall"][c] for c in present], rec)


def test_binary_auc_and_ties() -> None:
    y = np.array([0, 0, 1, 1, 1, 0])
    p1 = np.array([0.2, 0.5, 0.5, 0.9, 0.1, 0.3])
    p = np.stack([1 - p1, p1], 1)
    assert classification_metrics(y, p)["auc_macro_ovr"] == pytest.approx(skm.roc_auc_score(y, p1))


def test_empty_set_and_single_class_auc() -> None:
    m = classification_metrics(np.zeros(0, np.int64), np.zeros((0, 3)), 3)
    assert m["n"] == 0 and math.isnan(m["balanced_accuracy"]) and math.isnan(m["auc_macro_ovr"])
    assert m["auc_skipped_classes"] == [0, 1, 2] and m["confusion"] == [[0] * 3] * 3
    y = np.zeros(5, np.int64)  # one class only: no AUC can be computed, recall still can
    p = np.tile([0.6, 0.3, 0.1], (5, 1))
    m = classification_metrics(y, p, 3)
    assert m["balanced_accuracy"] == 1.0 and math.isnan(m["auc_macro_ovr"]) and m["auc_skipped_classes"] == [0, 1, 2]


def test_accumulator_equals_one_shot() -> None:
    y, p = _fixed(n=50, seed=3)
    acc = MetricAccumulator(4)
    for i in range(0, 50, 16):
        acc.update(y[i:i + 16], p[i:i + 16])
    assert acc.compute() == classification_metrics(y, p, 4)


def test_summary_ci_is_t_interval() -> None:
    v = [0.70, 0.74, 0.69, 0.75, 0.72]
    s = summarize(v)
    lo, hi = sps.t.interval(0.95, len(v) - 1, loc=np.mean(v), scale=sps.sem(v))
    assert s["mean"] == pytest.approx(np.mean(v)) and s["std"] == pytest.approx(np.std(v, ddof=1))
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((lo, hi))
    one = summarize([0.7])
    assert one["ci_low"] is None and one["std"] is None and "undefined" in one["note"]


def test_paired_difference_uses_common_seeds() -> None:
    a = {0: 0.8, 1: 0.75, 2: 0.9, 5: 0.1}
    b = {0: 0.7, 1: 0.70, 2: 0.8, 3: 0.5}
    d = paired_difference(a, b)
    diffs = [0.1, 0.05, 0.1]
    assert d["seeds"] == [0, 1, 2] and d["mean"] == pytest.approx(np.mean(diffs))
    assert d["p_value"] == pytest.approx(sps.ttest_rel([0.8, 0.75, 0.9], [0.7, 0.7, 0.8]).pvalue)
    lo, hi = sps.t.interval(0.95, 2, loc=np.mean(diffs), scale=sps.sem(diffs))
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((lo, hi))
    assert paired_difference({0: 0.8}, {0: 0.7})["ci_low"] is None
