"""Fidelity and diversity of a synthetic set against real images, computed on precomputed features.

- KID comes from torchmetrics (``KernelInceptionDistance`` fed with the features through an identity ``feature``
  module: cubic polynomial kernel, unbiased MMD over seeded random subsets).
- FID uses torchmetrics' formula (float64 moments, unbiased covariance) but not its general ``eigvals(S1 @ S2)``,
  which takes minutes for 1024-2048-d features on a busy CPU: the trace of the matrix square root is the nuclear
  norm of a small n x n matrix (see :func:`fid`). The value is the same (``tests/test_fidelity.py`` compares).
- Improved precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020) are not in
  torchmetrics; they are computed here with the published definitions (k-NN balls, ``<=`` like Kynkäänniemi).
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

FID_MIN_N = 2048  # below this FID is strongly biased (the features are 2048-d for Inception)
KID_MAX_SUBSET = 1000


def _identity_module(dim: int) -> Any:
    import torch

    class _Precomputed(torch.nn.Module):
        """torchmetrics' ``feature`` module for features computed elsewhere (forward is the identity)."""

        def __init__(self, num_features: int) -> None:
            super().__init__()
            self.num_features = num_features

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    return _Precomputed(dim)


def _tensor(feats: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float64))


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) from moments, via symmetric eigendecompositions.

    tr((S1 S2)^(1/2)) = sum sqrt(eig(S1^(1/2) S2 S1^(1/2))), the value torchmetrics gets from ``eigvals(S1 @ S2)``.
    """
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    tr_sqrt = np.sqrt(np.clip(inner, 0.0, None)).sum()
    return float(max(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt, 0.0))


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (unbiased covariances). NaN if n < 2.

    With centred, scaled data A_i = (X_i - mu_i) / sqrt(n_i - 1), S_i = A_i^T A_i and the eigenvalues of S1 S2 are
    the squared singular values of A1 A2^T, so tr((S1 S2)^(1/2)) is the nuclear norm of A1 A2^T: exact, and cheap
    when n < D (the usual case here). Otherwise the D x D form is used.
    """
    if len(real) < 2 or len(fake) < 2:
        return math.nan
    x1, x2 = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    mu1, mu2 = x1.mean(axis=0), x2.mean(axis=0)
    a1, a2 = (x1 - mu1) / math.sqrt(len(x1) - 1), (x2 - mu2) / math.sqrt(len(x2) - 1)
    if min(len(x1), len(x2)) > x1.shape[1]:
        return frechet_distance(mu1, a1.T @ a1, mu2, a2.T @ a2)
    tr_sqrt = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()
    value = ((mu1 - mu2) ** 2).sum() + (a1 * a1).sum() + (a2 * a2).sum() - 2.0 * tr_sqrt
    return float(max(value, 0.0))


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 100, seed: int = 0) -> dict[str, Any]:
    """KID mean and std over ``subsets`` random subsets of size ``min(1000, n_real, n_fake)`` (torchmetrics)."""
    import torch
    from torchmetrics.image.kid import KernelInceptionDistance

    subset = min(KID_MAX_SUBSET, len(real), len(fake))
    if subset < 2:
        return {"mean": math.nan, "std": math.nan, "subset_size": subset, "subsets": subsets}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "will save all extracted features in buffer"
        metric = KernelInceptionDistance(feature=_identity_module(real.shape[1]), subsets=subsets, subset_size=subset)
    metric.update(_tensor(real), real=True)
    metric.update(_tensor(fake), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return {"mean": float(mean), "std": float(std), "subset_size": subset, "subsets": subsets}


def pairwise_distances(a: np.ndarray, b: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Euclidean distances (len(a), len(b)) in float64, computed in chunks of rows of ``a``."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    bb = (b * b).sum(1)
    out = np.empty((len(a), len(b)), np.float64)
    for s in range(0, len(a), chunk):
        x = a[s : s + chunk]
        d2 = (x * x).sum(1)[:, None] + bb[None, :] - 2.0 * x @ b.T
        out[s : s + chunk] = np.sqrt(np.maximum(d2, 0.0))
    return out


def knn_radii(feats: np.ndarray, k: int) -> np.ndarray:
    """Distance of each point to its k-th nearest neighbour in the same set (itself excluded)."""
    d = pairwise_distances(feats, feats)
    np.fill_diagonal(d, np.inf)
    kk = min(k, len(feats) - 1)
    return np.partition(d, kk - 1, axis=1)[:, kk - 1]


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """Improved precision/recall (Kynkäänniemi 2019) and density/coverage (Naeem 2020) with k-NN balls.

    precision: fraction of fake samples inside some real k-NN ball; recall: fraction of real samples inside some
    fake k-NN ball; density: mean number of real balls containing a fake sample, divided by k; coverage: fraction
    of real balls containing at least one fake sample. Needs more than k samples per set (else NaN).
    """
    nan = {"precision": math.nan, "recall": math.nan, "density": math.nan, "coverage": math.nan}
    if len(real) <= k or len(fake) <= k:
        return nan
    r_real = knn_radii(real, k)
    r_fake = knn_radii(fake, k)
    d = pairwise_distances(real, fake)  # (n_real, n_fake)
    inside_real = d <= r_real[:, None]
    return {
        "precision": float(inside_real.any(axis=0).mean()),
        "recall": float((d <= r_fake[None, :]).any(axis=1).mean()),
        "density": float(inside_real.sum(axis=0).mean() / k),
        "coverage": float((d.min(axis=1) <= r_real).mean()),
    }


def compare(real: np.ndarray, fake: np.ndarray, k: int = 5, kid_subsets: int = 100, seed: int = 0) -> dict[str, Any]:
    """All fidelity/diversity figures for one pair of feature sets, with n and warnings."""
    out: dict[str, Any] = {"n_real": int(len(real)), "n_fake": int(len(fake))}
    out["fid"] = fid(real, fake)
    out["kid"] = kid(real, fake, kid_subsets, seed)
    out.update(prdc(real, fake, k))
    notes = []
    if min(len(real), len(fake)) < FID_MIN_N:
        notes.append(f"FID with n_real={len(real)}, n_fake={len(fake)} < {FID_MIN_N} is biased upwards; compare only "
                     "with figures of the same n and backbone")
    if min(len(real), len(fake)) <= k:
        notes.append(f"precision/recall/density/coverage need more than k={k} images per set")
    out["warnings"] = notes
    return out


def fidelity_report(
    real: np.ndarray, real_labels: np.ndarray, fake: np.ndarray, fake_labels: np.ndarray,
    classes: Sequence[str], k: int = 5, kid_subsets: int = 100, seed: int = 0, backbone: str = "",
    echo: bool = True,
) -> dict[str, Any]:
    """Overall and per-class figures; FID small-n warnings are also printed on stderr (once per report)."""
    report: dict[str, Any] = {"backbone": backbone, "k": k, "overall": compare(real, fake, k, kid_subsets, seed)}
    per_class: dict[str, Any] = {}
    for c, name in enumerate(classes):
        r, f = real[real_labels == c], fake[fake_labels == c]
        per_class[name] = compare(r, f, k, kid_subsets, seed + c + 1)
    report["per_class"] = per_class
    overall = report["overall"]
    if echo and overall["warnings"]:
        print(f"warning: [{backbone}] {overall['warnings'][0]}", file=sys.stderr)
    return report
