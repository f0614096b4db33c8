"""The filter's decisions: pure functions on arrays and manifest rows (no I/O, files are never deleted).

An image is dropped, with the first reason that applies, when it is
1. ``memorized_copy``: flagged by the memorization audit (``filter.drop_copies``);
2. ``low_confidence``: a classifier trained on real data gives its intended class a probability below the class's
   threshold (``min_confidence``, or a per-class threshold from ``class_thresholds``);
3. ``far_from_prototype``: its feature vector lies farther from its class's real centroid than the class's
   prototype threshold (``prototypes``/``prototype_thresholds``: ``filter.prototype: real_val``);
4. ``near_duplicate``: it lies within the duplicate threshold of an earlier (by id) image of the same class that is
   still kept (``filter.drop_near_duplicates``). Duplicates are resolved among survivors of 1-3, so a good image is
   never dropped because its twin was bad.
With ``filter.enabled: false`` every image is kept; confidences are still recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

REASON_COPY = "memorized_copy"
REASON_LOW_CONFIDENCE = "low_confidence"
REASON_PROTOTYPE = "far_from_prototype"
REASON_DUPLICATE = "near_duplicate"
REASONS = (REASON_COPY, REASON_LOW_CONFIDENCE, REASON_PROTOTYPE, REASON_DUPLICATE)


@dataclass
class FilterResult:
    """Per-image decisions, aligned with the inputs."""

    kept: np.ndarray
    reasons: list[str]
    duplicate_of: list[str | None]
    vetted: bool


def intended_confidence(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Probability the classifier gives each image's intended class."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    return probs[np.arange(len(labels)), labels] if len(labels) else np.zeros(0)


def duplicate_pairs(vectors: np.ndarray, members: np.ndarray, threshold: float, chunk: int = 512) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, among ``members`` (indices into ``vectors``) whose Euclidean distance <= threshold."""
    x = np.asarray(vectors, np.float64)[members]
    sq = (x * x).sum(1)
    pairs: list[tuple[int, int]] = []
    for s in range(0, len(x), chunk):
        d2 = sq[s : s + chunk, None] + sq[None, :] - 2.0 * x[s : s + chunk] @ x.T
        rows, cols = np.nonzero(d2 <= threshold * threshold + 1e-9)
        for r, c in zip((rows + s).tolist(), cols.tolist()):
            if r < c and np.sqrt(((x[r] - x[c]) ** 2).sum()) <= threshold:
                pairs.append((int(members[r]), int(members[c])))
    return pairs


def class_thresholds(real_conf: np.ndarray, real_labels: np.ndarray, n_classes: int, tau: float,
                     quantile: float) -> np.ndarray:
    """Per-class confidence thresholds: min(tau, the ``quantile`` of real images' confidence in their own class).

    ``real_conf`` are the vetting classifier's intended-class probabilities on held-out real images (val). A class
    without real images keeps ``tau``.
    """
    real_conf = np.asarray(real_conf, np.float64)
    real_labels = np.asarray(real_labels, np.int64)
    out = np.full(n_classes, float(tau))
    for c in range(n_classes):
        member = real_conf[real_labels == c]
        if len(member):
            out[c] = min(float(tau), float(np.quantile(member, quantile)))
    return out


def class_centroids(features: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Mean feature vector of each class (NaN rows for a class without members)."""
    features = np.asarray(features, np.float64)
    labels = np.asarray(labels, np.int64)
    out = np.full((n_classes, features.shape[1]), np.nan)
    for c in range(n_classes):
        if (labels == c).any():
            out[c] = features[labels == c].mean(0)
    return out


def prototype_distance(features: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Euclidean distance of each feature vector to the centroid of its own (intended) class."""
    features = np.asarray(features, np.float64)
    labels = np.asarray(labels, np.int64)
    if not len(labels):
        return np.zeros(0)
    return np.sqrt(((features - centroids[labels]) ** 2).sum(1))


def prototype_thresholds(val_distance: np.ndarray, val_labels: np.ndarray, n_classes: int,
                         quantile: float) -> np.ndarray:
    """Per-class distance thresholds: the ``quantile`` of real val images' distances to their class centroid
    (a class without real val images gets +inf: no image of it is dropped for distance)."""
    val_distance = np.asarray(val_distance, np.float64)
    val_labels = np.asarray(val_labels, np.int64)
    out = np.full(n_classes, np.inf)
    for c in range(n_classes):
        member = val_distance[val_labels == c]
        if len(member):
            out[c] = float(np.quantile(member, quantile))
    return out


def decide(
    ids: Sequence[str], labels: np.ndarray, confidences: np.ndarray, filter_cfg: Any,
    copy_flags: np.ndarray | None = None, dup_vectors: np.ndarray | None = None, dup_threshold: float | None = None,
    thresholds: np.ndarray | None = None, prototype_dist: np.ndarray | None = None,
    prototype_thr: np.ndarray | None = None,
) -> FilterResult:
    """Keep/drop each image (see the module docstring); ``dup_vectors`` are pixel or feature vectors;
    ``thresholds`` (one per class) replace ``filter_cfg.min_confidence`` when given; ``prototype_dist`` (per image)
    and ``prototype_thr`` (per class) switch on the prototype-distance rule."""
    n = len(ids)
    labels = np.asarray(labels, np.int64)
    conf = np.asarray(confidences, np.float64)
    if not (len(labels) == len(conf) == n):
        raise ValueError("ids, labels and confidences differ in length")
    reasons = [""] * n
    dup_of: list[str | None] = [None] * n
    if not filter_cfg.enabled:
        return FilterResult(np.ones(n, bool), reasons, dup_of, vetted=False)
    if filter_cfg.drop_copies and copy_flags is not None:
        for i in np.flatnonzero(np.asarray(copy_flags, bool)):
            reasons[i] = REASON_COPY
    tau = (np.asarray(thresholds, np.float64)[labels] if thresholds is not None
           else np.full(n, float(filter_cfg.min_confidence)))
    for i in np.flatnonzero(conf < tau):
        reasons[i] = reasons[i] or REASON_LOW_CONFIDENCE
    if prototype_dist is not None and prototype_thr is not None:
        far = np.asarray(prototype_dist, np.float64) > np.asarray(prototype_thr, np.float64)[labels]
        for i in np.flatnonzero(far):
            reasons[i] = reasons[i] or REASON_PROTOTYPE
    if filter_cfg.drop_near_duplicates and dup_vectors is not None and dup_threshold is not None:
        order = sorted(range(n), key=lambda i: ids[i])
        rank = {i: r for r, i in enumerate(order)}
        for c in np.unique(labels):
            members = np.asarray([i for i in order if labels[i] == c and not reasons[i]], np.int64)
            if len(members) < 2:
                continue
            neighbours: dict[int, list[int]] = {}
            for a, b in duplicate_pairs(dup_vectors, members, dup_threshold):
                first, later = (a, b) if rank[a] < rank[b] else (b, a)
                neighbours.setdefault(later, []).append(first)
            for i in members.tolist():  # id order: the first of a group is kept
                earlier = [j for j in neighbours.get(i, []) if not reasons[j]]
                if earlier:
                    reasons[i] = REASON_DUPLICATE
                    dup_of[i] = ids[min(earlier, key=lambda j: rank[j])]
    kept = np.asarray([not r for r in reasons], bool)
    return FilterResult(kept, reasons, dup_of, vetted=True)


def apply_to_manifest(rows: Sequence[dict[str, Any]], result: FilterResult, confidences: np.ndarray) -> list[dict[str, Any]]:
    """Copies of the manifest rows with ``kept``, ``filter_reason`` and ``confidence`` set (rows aligned by position)."""
    if len(rows) != len(result.kept):
        raise ValueError("manifest rows and filter decisions differ in length")
    out = []
    for row, kept, reason, conf in zip(rows, result.kept.tolist(), result.reasons, np.asarray(confidences).tolist()):
        new = dict(row)
        new["kept"] = "true" if kept else "false"
        new["filter_reason"] = reason
        new["confidence"] = f"{conf:.6f}"
        out.append(new)
    return out


def filter_stats(labels: np.ndarray, result: FilterResult, classes: Sequence[str]) -> dict[str, Any]:
    """Generated / kept / dropped-per-reason counts, per class and overall."""
    labels = np.asarray(labels, np.int64)

    def count(mask: np.ndarray) -> dict[str, Any]:
        reasons = [r for r, m in zip(result.reasons, mask.tolist()) if m]
        n = int(mask.sum())
        kept = int(result.kept[mask].sum())
        return {"generated": n, "kept": kept, "kept_fraction": kept / n if n else None,
                "dropped": {r: reasons.count(r) for r in REASONS}}

    return {"vetted": result.vetted, "overall": count(np.ones(len(labels), bool)),
            "per_class": {name: count(labels == c) for c, name in enumerate(classes)}}
