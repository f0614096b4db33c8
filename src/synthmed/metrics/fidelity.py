"""Fidelity and diversity of a synthetic set against real images, computed on precomputed features.

- FID and KID come from torchmetrics (``FrechetInceptionDistance`` / ``KernelInceptionDistance``) fed with the
  features through an identity ``feature`` module, so the numerics are exactly the library's (float64 moments,
  eigenvalue trace of the matrix square root; KID's cubic polynomial kernel, unbiased MMD over random subsets).
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


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (torchmetrics' numerics). NaN if n < 2."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(real) < 2 or len(fake) < 2:
        return math.nan
    metric = FrechetInceptionDistance(feature=_identity_module(real.shape[1]), reset_real_features=False)
    metric.update(_tensor(real), real=True)
    metric.update(_tensor(fake), real=False)
    return max(float(metric.compute()), 0.0)


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
