"""Classical imbalance baselines: class-balanced resampling, class-weighted losses and logit adjustment.

All are computed from the class counts of the set the classifier is trained on.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from synthmed.classifiers.config import ImbalanceConfig


def inverse_frequency_weights(counts: np.ndarray | list[int]) -> np.ndarray:
    """w_c proportional to 1 / n_c over classes present (absent classes get 0), normalized so the weights sum to C."""
    n = np.asarray(counts, dtype=np.float64)
    w = np.where(n > 0, 1.0 / np.maximum(n, 1.0), 0.0)
    return w * len(n) / w.sum() if w.sum() > 0 else np.ones_like(n)


def effective_number_weights(counts: np.ndarray | list[int], beta: float) -> np.ndarray:
    """Cui et al. 2019: w_c proportional to (1 - beta) / (1 - beta ** n_c), normalized so the weights sum to C."""
    n = np.asarray(counts, dtype=np.float64)
    eff = 1.0 - np.power(beta, n)
    w = np.where(n > 0, (1.0 - beta) / np.where(eff > 0, eff, 1.0), 0.0)
    return w * len(n) / w.sum() if w.sum() > 0 else np.ones_like(n)


def class_weights(cfg: ImbalanceConfig, counts: np.ndarray | list[int]) -> np.ndarray | None:
    """The per-class loss weights of ``imbalance.method`` (None when the method does not weight the loss)."""
    if cfg.method == "inverse_freq":
        return inverse_frequency_weights(counts)
    if cfg.method == "effective_number":
        return effective_number_weights(counts, cfg.beta)
    return None


def log_prior(counts: np.ndarray | list[int]) -> np.ndarray:
    """log(n_c / N), with absent classes clamped to a tiny prior (1e-12)."""
    n = np.asarray(counts, dtype=np.float64)
    return np.log(np.maximum(n / max(n.sum(), 1.0), 1e-12))


def logit_adjustment(cfg: ImbalanceConfig, counts: np.ndarray | list[int]) -> np.ndarray | None:
    """Menon et al. 2021 (loss variant): tau * log(prior), added to the logits during training only."""
    if cfg.method != "logit_adjustment":
        return None
    return cfg.tau * log_prior(counts)


def logit_adjusted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, counts: np.ndarray | list[int],
                                 tau: float) -> torch.Tensor:
    """CE(logits + tau * log(prior), y): the logit-adjusted loss (reference form, used by the tests)."""
    adj = torch.as_tensor(tau * log_prior(counts), dtype=logits.dtype, device=logits.device)
    return F.cross_entropy(logits + adj, target)


def balanced_order(labels: np.ndarray, n_classes: int, rng: np.random.Generator, size: int | None = None) -> np.ndarray:
    """Class-balanced resampling: ``size`` indices drawn with replacement, P(i) proportional to 1 / n_{y_i}."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    p = 1.0 / counts[labels]
    p /= p.sum()
    return rng.choice(len(labels), size=len(labels) if size is None else size, replace=True, p=p)
