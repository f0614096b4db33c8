"""Classification metrics on real val/test sets; each equals scikit-learn's definition (tests check this).

* accuracy; balanced accuracy = mean recall over the classes present in ``y_true`` (sklearn's
  ``balanced_accuracy_score``);
* macro precision / recall / F1 over the classes present in ``y_true`` or ``y_pred`` (sklearn's ``average='macro'``
  with ``labels=None`` and ``zero_division=0``);
* macro one-vs-rest AUC: the mean of the binary AUCs of the classes present in ``y_true`` (with at least one
  negative); classes absent from the test set are skipped and listed in ``auc_skipped_classes``. With every class
  present and probabilities summing to one this equals ``roc_auc_score(..., multi_class='ovr')``;
* per-class recall (NaN for absent classes) and the confusion matrix (rows true, columns predicted).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    cm = confusion_matrix(y_true, y_pred, n_classes)
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return float("nan")
    return float(np.mean(np.diag(cm)[present] / support[present]))


def binary_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count one half)."""
    from scipy.stats import rankdata

    y = np.asarray(y, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(score, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, n_classes: int | None = None) -> dict[str, Any]:
    """All metrics from true labels and predicted class probabilities (N, C); predictions are the argmax."""
    proba = np.asarray(proba, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64)
    n_classes = int(n_classes or proba.shape[1])
    y_pred = proba.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    labels = (support > 0) | (predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    aucs, skipped = [], []
    for c in range(n_classes):
        a = binary_auc(y_true == c, proba[:, c]) if len(y_true) else float("nan")
        (skipped.append(c) if math.isnan(a) else aucs.append(a))
    n = len(y_true)
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else float("nan"),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred, n_classes),
        "macro_f1": float(f1[labels].mean()) if labels.any() else float("nan"),
        "macro_precision": float(precision[labels].mean()) if labels.any() else float("nan"),
        "macro_recall": float(recall[labels].mean()) if labels.any() else float("nan"),
        "auc_macro_ovr": float(np.mean(aucs)) if aucs else float("nan"),
        "auc_skipped_classes": skipped,
        "per_class_recall": [float(r) if s > 0 else float("nan") for r, s in zip(recall, support)],
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
