"""Memorization audit: is a synthetic image a copy of one of the generator's training images?

For every synthetic image we find its nearest generator-training image in pixel space (RMS difference of pixels
scaled to [0, 1], so thresholds do not depend on the image size) and in feature space (Euclidean). The reference is
what independent real images look like: the NN distances of real **val** images to the same training images. A
synthetic image is flagged as a copy when its NN distance is at or below the ``copy_quantile`` of that reference
(default 1%: closer to a training image than 99% of genuinely new real images are), or below an absolute threshold.
The same rule applied to the real val images gives, per class, the flag rate of images that are not copies: a
class of look-alike images (platelets) flags real images too, so its synthetic count is read against that rate.

A quantile rule flags about that quantile of genuinely new images too, so its count cannot reach 0. The relative
rule of Carlini et al. (USENIX Security 2023, their CIFAR-10 criterion) asks instead whether an image is far closer
to its nearest training image than to its other near neighbours: the ratio of the NN pixel distance to the mean
distance of the ``copy_relative_k`` nearest training images is about 0 for a copy and 0.6-1 for a new image (real
val images of BloodMNIST: >= 0.64); at or below ``copy_relative_delta`` (default 1/3) it is a near-copy. It is always
reported (``near_copies``) and decides the flags when ``copy_rule`` is relative or either.

Beside the per-image flags, the set-level data-copying test of Meehan, Chaudhuri and Dasgupta (AISTATS 2020), per
class: a Mann-Whitney U test of the synthetic->train NN distances against the held-out real val->train ones. Its
Z is about 0 when synthetic images are as far from the training set as new real images, well below 0 (<= -3) when
they sit closer (copying), above 0 when farther (underfitting); C_T is the Z averaged over classes, weighted by their
real val counts. Unlike a flag count, it does not charge a generator for the flags that real images get too.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.data.dataset import ImageSet
from synthmed.io import atomic_write_csv
from synthmed.layout import RunLayout

QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5)
COPYING_Z = -3.0  # a class's Z at or below this = data copying (Meehan et al. read C_T << 0 as copying)
COPYING_MIN_N = 20  # classes with fewer synthetic or real val images get no Z (the normal approximation needs n)


def pixel_vectors(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 (N, H*W*C) in [0, 1]."""
    return np.asarray(images, np.float32).reshape(len(images), -1) / 255.0


def knn(query: np.ndarray, ref: np.ndarray, k: int, chunk: int = 256,
        exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances of each query row to its ``k`` nearest ``ref`` rows, ascending (float64, chunked; ``k``
    capped by the reference size), and the index of the nearest. The nearest distance is exact."""
    q64 = np.asarray(query, np.float64)
    r64 = np.asarray(ref, np.float64)
    k = max(1, min(k, len(r64)))
    rr = (r64 * r64).sum(1)
    dist = np.empty((len(q64), k), np.float64)
    idx = np.empty(len(q64), np.int64)
    for s in range(0, len(q64), chunk):
        x = q64[s : s + chunk]
        d2 = np.maximum((x * x).sum(1)[:, None] + rr[None, :] - 2.0 * x @ r64.T, 0.0)
        if exclude_self:
            rows = np.arange(len(x))
            d2[rows, s + rows] = np.inf
        part = np.partition(d2, k - 1, axis=1)[:, :k] if k < d2.shape[1] else d2
        d = np.sqrt(np.sort(part, axis=1))
        j = np.argmin(d2, axis=1)
        # recompute the winners exactly (the expansion loses precision for near-identical vectors)
        d[:, 0] = np.sqrt(((x - r64[j]) ** 2).sum(1))
        dist[s : s + chunk], idx[s : s + chunk] = d, j
    return dist, idx


def nearest(query: np.ndarray, ref: np.ndarray, chunk: int = 256, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean NN of each query row among ``ref`` rows (float64, chunked): (distance, index)."""
    d, i = knn(query, ref, 1, chunk, exclude_self)
    return d[:, 0], i


def pixel_knn(query: np.ndarray, ref: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``knn`` in pixel space; distances are RMS pixel differences in [0, 1] units."""
    q, r = pixel_vectors(query), pixel_vectors(ref)
    d, i = knn(q, r, k)
    return d / np.sqrt(max(q.shape[1], 1)), i


def pixel_nearest(query: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NN in pixel space; distances are RMS pixel differences in [0, 1] units."""
    d, i = pixel_knn(query, ref, 1)
    return d[:, 0], i


def relative_ratio(knn_d: np.ndarray) -> np.ndarray:
    """NN distance over the mean of the k nearest (rows of ``knn``'s distances; Carlini et al. 2023): about 0 for a
    copy of one training image, 0.6-1 for a new image. Images alike to every neighbour give 0/0 = 1."""
    mean = knn_d.mean(1)
    return np.where(mean > 0, knn_d[:, 0] / np.where(mean > 0, mean, 1.0), 1.0)


def relative_distance(query: np.ndarray, ref: np.ndarray, k: int) -> np.ndarray:
    """``relative_ratio`` of the ``k`` nearest ``ref`` images in pixel space."""
    return relative_ratio(pixel_knn(query, ref, k)[0])


def quantiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    return {f"q{int(q * 100):02d}": float(np.quantile(values, q)) for q in QUANTILES}


def training_images(run_dir: str | Path, real_train: ImageSet, pool: ImageSet | None = None) -> tuple[ImageSet, list[str]]:
    """The generator's training images from ``generator/training_images.csv`` (fallback: RealData.train)."""
    layout = RunLayout(run_dir)
    path = layout.generator_training_images
    if not path.is_file():
        return real_train, [f"{layout.rel(path)} missing: audited against the real training set instead"]
    with open(path, newline="", encoding="utf-8") as fh:
        wanted = [row["id"] for row in csv.DictReader(fh)]
    index: dict[str, tuple[ImageSet, int]] = {}
    for s in (pool, real_train):
        if s is not None:
            index.update({id_: (s, i) for i, id_ in enumerate(s.ids)})
    found = [w for w in wanted if w in index]
    notes = []
    if len(found) < len(wanted):
        notes.append(f"{len(wanted) - len(found)} of {len(wanted)} generator training ids are not in the real data")
    if not found:
        return real_train, notes + ["audited against the real training set instead"]
    imgs = np.stack([index[w][0].images[index[w][1]] for w in found])
    labels = np.asarray([index[w][0].labels[index[w][1]] for w in found])
    return ImageSet(imgs, labels, found), notes


def mann_whitney_z(x: np.ndarray, y: np.ndarray) -> float:
    """Z of the Mann-Whitney U of ``x`` vs ``y`` (U = pairs with x > y, ties half; tie-corrected normal
    approximation): negative when ``x`` tends to be smaller. 0.0 when every value ties."""
    from scipy.stats import rankdata

    n1, n2 = len(x), len(y)
    both = np.concatenate([np.asarray(x, np.float64), np.asarray(y, np.float64)])
    u = rankdata(both)[:n1].sum() - n1 * (n1 + 1) / 2.0
    n = n1 + n2
    ties = np.unique(both, return_counts=True)[1].astype(np.float64)
    var = n1 * n2 / 12.0 * ((n + 1) - (ties**3 - ties).sum() / (n * (n - 1)))
    return float((u - n1 * n2 / 2.0) / np.sqrt(var)) if var > 0 else 0.0


def copying_test(syn_d: np.ndarray, syn_labels: np.ndarray, ref_d: np.ndarray, ref_labels: np.ndarray,
                 min_n: int = COPYING_MIN_N) -> dict[str, Any]:
    """Meehan et al.'s data-copying test with classes as cells: per class Z_U of synthetic vs real val NN distances
    to the generator's training images, C_T (Z weighted by real val counts) and the classes at or below COPYING_Z."""
    per: dict[str, dict[str, Any]] = {}
    weighted = weight = 0.0
    for c in np.union1d(syn_labels, ref_labels):
        s, r = syn_d[syn_labels == c], ref_d[ref_labels == c]
        z = mann_whitney_z(s, r) if min(len(s), len(r)) >= min_n else None
        per[str(int(c))] = {"n_synthetic": int(len(s)), "n_real_val": int(len(r)), "z": z}
        if z is not None:
            weighted, weight = weighted + len(r) * z, weight + len(r)
    return {"per_label": per, "c_t": weighted / weight if weight else None, "z_threshold": COPYING_Z, "min_n": min_n,
            "classes_copying": [c for c, v in per.items() if v["z"] is not None and v["z"] <= COPYING_Z]}


def thresholds(ref_pixel: np.ndarray, ref_feature: np.ndarray | None, quality_cfg: Any) -> dict[str, float | None]:
    """Copy thresholds: absolute when configured, else the copy_quantile of the real val->train NN distances."""
    q = quality_cfg.copy_quantile
    pix = quality_cfg.copy_threshold_pixel
    if pix is None and len(ref_pixel):
        pix = float(np.quantile(ref_pixel, q))
    feat = quality_cfg.copy_threshold_feature
    if feat is None and ref_feature is not None and len(ref_feature):
        feat = float(np.quantile(ref_feature, q))
    return {"pixel": pix, "feature": feat}


def flag_copies(pixel_d: np.ndarray, feature_d: np.ndarray | None, thr: dict[str, float | None], space: str) -> np.ndarray:
    """Boolean copy flags; ``space`` is pixel | feature | either | both (a missing threshold never flags)."""
    def under(d: np.ndarray | None, t: float | None) -> np.ndarray:
        if d is None or t is None:
            return np.zeros(len(pixel_d), bool)
        return d <= t

    p, f = under(pixel_d, thr["pixel"]), under(feature_d, thr["feature"])
    return {"pixel": p, "feature": f, "either": p | f, "both": p & f}[space]


@dataclass
class AuditResult:
    """The audit's summary (for quality.json), per-image rows, and the arrays the filter and gallery need."""

    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    pixel_distance: np.ndarray
    pixel_index: np.ndarray
    feature_distance: np.ndarray | None
    flags: np.ndarray
    thresholds: dict[str, float | None] = field(default_factory=dict)


def audit(
    synthetic: ImageSet, train: ImageSet, val: ImageSet, quality_cfg: Any,
    syn_feats: np.ndarray | None = None, train_feats: np.ndarray | None = None, val_feats: np.ndarray | None = None,
) -> AuditResult:
    """Run the audit of ``synthetic`` against the generator's ``train`` images, with real ``val`` as reference."""
    # one pixel-space k-NN pass per set: the nearest image (quantile rule, data-copying test) and the relative rule
    k, delta = quality_cfg.copy_relative_k, quality_cfg.copy_relative_delta
    syn_knn, syn_pi = pixel_knn(synthetic.images, train.images, k)
    ref_knn, _ = pixel_knn(val.images, train.images, k)
    syn_pd, ref_pd = syn_knn[:, 0], ref_knn[:, 0]
    syn_rel, ref_rel = relative_ratio(syn_knn), relative_ratio(ref_knn)
    syn_fd = syn_fi = ref_fd = None
    if syn_feats is not None and train_feats is not None and len(syn_feats):
        syn_fd, syn_fi = nearest(syn_feats, train_feats)
        if val_feats is not None and len(val_feats):
            ref_fd, _ = nearest(val_feats, train_feats)
    thr = thresholds(ref_pd, ref_fd, quality_cfg)
    near, ref_near = syn_rel <= delta, ref_rel <= delta
    rule = quality_cfg.copy_rule
    flags = flag_copies(syn_pd, syn_fd, thr, quality_cfg.copy_space)
    # the same rule applied to real val images, which are not copies: the flag rate of genuinely new images (about
    # copy_quantile overall, more in a class whose images are alike) is the reference for a class's synthetic rate
    ref_flags = flag_copies(ref_pd, ref_fd, thr, quality_cfg.copy_space)
    if rule != "quantile":
        flags = near | flags if rule == "either" else near
        ref_flags = ref_near | ref_flags if rule == "either" else ref_near
    rows = []
    for i, id_ in enumerate(synthetic.ids):
        row = {"id": id_, "label": int(synthetic.labels[i]), "nn_pixel_id": train.ids[syn_pi[i]],
               "pixel_distance": f"{syn_pd[i]:.6f}", "relative_distance": f"{syn_rel[i]:.4f}",
               "copy": bool(flags[i])}
        if syn_fd is not None:
            row.update(nn_feature_id=train.ids[syn_fi[i]], feature_distance=f"{syn_fd[i]:.6f}")
        rows.append(row)
    summary: dict[str, Any] = {
        "n_synthetic": len(synthetic), "n_generator_train": len(train), "n_real_val_reference": len(val),
        "copy_rule": rule, "copy_space": quality_cfg.copy_space, "copy_quantile": quality_cfg.copy_quantile,
        "thresholds": thr,
        "flagged": int(flags.sum()), "flagged_fraction": float(flags.mean()) if len(flags) else 0.0,
        "pixel_distance": {"synthetic_to_train": quantiles(syn_pd), "real_val_to_train": quantiles(ref_pd)},
        # per class (label index): where copies concentrate, e.g. a 10-image class the generator drew often
        "per_label": {str(int(c)): {"n": int((synthetic.labels == c).sum()),
                                    "flagged": int(flags[synthetic.labels == c].sum()),
                                    "real_val_n": int((val.labels == c).sum()),
                                    "real_val_flagged": int(ref_flags[val.labels == c].sum())}
                      for c in np.union1d(synthetic.labels, val.labels)},
        "real_val_flagged": int(ref_flags.sum()),
        "real_val_flagged_fraction": float(ref_flags.mean()) if len(ref_flags) else 0.0,
    }
    summary["near_copies"] = {
        "rule": "NN pixel distance / mean distance to the k nearest training images <= delta (Carlini et al. 2023)",
        "k": int(min(k, len(train))), "delta": delta, "flagged": int(near.sum()),
        "real_val_flagged": int(ref_near.sum()),
        "min_ratio": {"synthetic": float(syn_rel.min()) if len(syn_rel) else None,
                      "real_val": float(ref_rel.min()) if len(ref_rel) else None},
        "per_label": {str(int(c)): {"flagged": int(near[synthetic.labels == c].sum()),
                                    "real_val_flagged": int(ref_near[val.labels == c].sum()),
                                    "min_ratio": float(syn_rel[synthetic.labels == c].min())
                                    if (synthetic.labels == c).any() else None}
                      for c in np.union1d(synthetic.labels, val.labels)}}
    summary["copying_test"] = {"pixel": copying_test(syn_pd, synthetic.labels, ref_pd, val.labels)}
    if syn_fd is not None and ref_fd is not None:
        summary["copying_test"]["feature"] = copying_test(syn_fd, synthetic.labels, ref_fd, val.labels)
    if syn_fd is not None:
        summary["feature_distance"] = {"synthetic_to_train": quantiles(syn_fd),
                                       "real_val_to_train": quantiles(ref_fd) if ref_fd is not None else {}}
    return AuditResult(summary, rows, syn_pd, syn_pi, syn_fd, flags, thr)


def write_audit_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    cols = ["id", "label", "nn_pixel_id", "pixel_distance", "nn_feature_id", "feature_distance", "copy"]
    atomic_write_csv(path, rows, cols)
