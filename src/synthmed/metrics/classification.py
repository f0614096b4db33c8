"""Classification metrics on real val/test sets, computed by scikit-learn.

* accuracy; balanced accuracy = mean recall over the classes present in ``y_true`` (``balanced_accuracy_score``);
* macro precision / recall / F1 over the classes present in ``y_true`` or ``y_pred``
  (``precision_recall_fscore_support(average='macro', zero_division=0)``);
* macro one-vs-rest AUC: the mean of the binary ``roc_auc_score`` of the classes present in ``y_true`` (with at least
  one negative); classes absent from the test set are skipped and listed in ``auc_skipped_classes``. With every class
  present and probabilities summing to one this equals ``roc_auc_score(..., multi_class='ovr')``, which refuses a
  test set that lacks a class;
* per-class recall (NaN for absent classes) and the confusion matrix (rows true, columns predicted).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn import metrics as skm


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts, rows true, columns predicted."""
    y_true = np.asarray(y_true, dtype=np.int64)
    if not len(y_true):
        return np.zeros((n_classes, n_classes), np.int64)
    return skm.confusion_matrix(y_true, np.asarray(y_pred, dtype=np.int64), labels=np.arange(n_classes))


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int | None = None) -> float:
    """Mean recall over the classes present in ``y_true`` (NaN for an empty set); ``n_classes`` is not needed."""
    y_true = np.asarray(y_true, dtype=np.int64)
    if not len(y_true):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true": those classes are not averaged
        return float(skm.balanced_accuracy_score(y_true, np.asarray(y_pred, dtype=np.int64)))


def binary_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (``roc_auc_score``); NaN when ``y`` has no positive or no negative."""
    y = np.asarray(y, dtype=bool)
    if y.all() or not y.any():
        return float("nan")
    return float(skm.roc_auc_score(y, np.asarray(score, dtype=np.float64)))


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, n_classes: int | None = None) -> dict[str, Any]:
    """All metrics from true labels and predicted class probabilities (N, C); predictions are the argmax."""
    proba = np.asarray(proba, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64)
    n_classes = int(n_classes or proba.shape[1])
    n = len(y_true)
    y_pred = proba.argmax(axis=1) if n else np.zeros(0, np.int64)
    cm = confusion_matrix(y_true, y_pred, n_classes)
    support = cm.sum(axis=1)
    nan = float("nan")
    if n:
        precision, recall, f1, _ = skm.precision_recall_fscore_support(y_true, y_pred, average="macro",
                                                                        zero_division=0)
        rec = skm.recall_score(y_true, y_pred, labels=np.arange(n_classes), average=None, zero_division=0)
    else:
        precision = recall = f1 = nan
        rec = np.zeros(n_classes)
    aucs, skipped = [], []
    for c in range(n_classes):
        a = binary_auc(y_true == c, proba[:, c]) if n else nan
        (skipped.append(c) if np.isnan(a) else aucs.append(a))
    return {
        "n": n,
        "accuracy": float(skm.accuracy_score(y_true, y_pred)) if n else nan,
        "balanced_accuracy": balanced_accuracy(y_true, y_pred),
        "macro_f1": float(f1),
        "macro_precision": float(precision),
        "macro_recall": float(recall),
        "auc_macro_ovr": float(np.mean(aucs)) if aucs else nan,
        "auc_skipped_classes": skipped,
        "per_class_recall": [float(r) if s > 0 else nan for r, s in zip(rec, support)],
        "confusion": cm.tolist(),
    }


class MetricAccumulator:
    """torchmetrics-style ``update`` / ``compute`` over batches; ``compute`` equals :func:`classification_metrics`."""

    def __init__(self, n_classes: int) -> None:
        self.n_classes = n_classes
        self._y: list[np.ndarray] = []
        self._p: list[np.ndarray] = []

    def update(self, y_true: Any, proba: Any) -> None:
        self._y.append(np.asarray(y_true, dtype=np.int64).reshape(-1))
        self._p.append(np.asarray(proba, dtype=np.float64).reshape(-1, self.n_classes))

    def reset(self) -> None:
        self._y, self._p = [], []

    def compute(self) -> dict[str, Any]:
        y = np.concatenate(self._y) if self._y else np.zeros(0, np.int64)
        p = np.concatenate(self._p) if self._p else np.zeros((0, self.n_classes))
        return classification_metrics(y, p, self.n_classes)
