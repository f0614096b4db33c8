"""Classical long-tail baselines: class-balanced resampling, class-weighted losses (inverse frequency, effective
number, deferred re-weighting), logit adjustment / balanced softmax in the loss, post-hoc logit adjustment; the
classifier re-training (cRT) step lives in ``classifiers.heads``.

The count-based methods read the class counts chosen by ``imbalance.prior`` (:func:`prior_counts`): by default the
REAL training images only, so a policy that adds synthetic images keeps the long-tail correction of the real data.
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


def prior_counts(cfg: ImbalanceConfig, real_counts: np.ndarray | list[int],
                 synthetic_counts: np.ndarray | list[int]) -> np.ndarray:
    """The class counts of the count-based methods: real only (``prior: real``) or real + synthetic."""
    real = np.asarray(real_counts, dtype=np.int64)
    return real + np.asarray(synthetic_counts, dtype=np.int64) if cfg.prior == "real_plus_synthetic" else real


def drw_epoch(cfg: ImbalanceConfig, epochs: int) -> int:
    """The first (1-based) epoch with deferred re-weighting: after ``round(drw_start * epochs)`` plain epochs."""
    return min(int(round(cfg.drw_start * epochs)), max(epochs - 1, 0)) + 1


def class_weights(cfg: ImbalanceConfig, counts: np.ndarray | list[int], epoch: int | None = None,
                  epochs: int | None = None) -> np.ndarray | None:
    """The per-class loss weights of ``imbalance.method`` in (1-based) ``epoch`` of ``epochs`` (None: unweighted).

    ``drw`` (Cao et al. 2019): unweighted until :func:`drw_epoch`, then effective-number weights."""
    if cfg.method == "inverse_freq":
        return inverse_frequency_weights(counts)
    if cfg.method == "effective_number":
        return effective_number_weights(counts, cfg.beta)
    if cfg.method == "drw" and epoch is not None and epochs is not None and epoch >= drw_epoch(cfg, epochs):
        return effective_number_weights(counts, cfg.beta)
    return None


def log_prior(counts: np.ndarray | list[int]) -> np.ndarray:
    """log(n_c / N), with absent classes clamped to a tiny prior (1e-12)."""
    n = np.asarray(counts, dtype=np.float64)
    return np.log(np.maximum(n / max(n.sum(), 1.0), 1e-12))


def logit_adjustment(cfg: ImbalanceConfig, counts: np.ndarray | list[int]) -> np.ndarray | None:
    """The offset added to the logits in the training loss (never at prediction), or None.

    ``logit_adjustment`` (Menon et al. 2021, loss variant): tau * log(prior). ``balanced_softmax`` (Ren et al. 2020):
    softmax over n_j * exp(z_j), i.e. log(n_j) added to the logits; this differs from log(prior) by the constant
    log(N), so balanced softmax is the logit-adjusted loss at tau = 1 (the same loss, whatever ``tau`` says)."""
    if cfg.method == "logit_adjustment":
        return cfg.tau * log_prior(counts)
    if cfg.method == "balanced_softmax":
        return np.log(np.maximum(np.asarray(counts, dtype=np.float64), 1e-12))
    return None


def choose_posthoc_tau(logits: np.ndarray, labels: np.ndarray, counts: np.ndarray | list[int], taus: list[float],
                       n_classes: int) -> tuple[float, list[dict[str, float]]]:
    """Post-hoc logit adjustment (Menon et al. 2021): the tau in ``taus`` whose prediction argmax(z - tau * log prior)
    has the best balanced accuracy on (REAL val) ``logits``; ties go to the earlier tau. Returns (tau, the grid)."""
    from synthmed.metrics.classification import balanced_accuracy

    lp = log_prior(counts)
    grid = [{"tau": float(t), "val_balanced_accuracy": balanced_accuracy(labels, (logits - t * lp).argmax(1),
                                                                         n_classes)} for t in taus]
    best = max(range(len(grid)), key=lambda i: (grid[i]["val_balanced_accuracy"], -i))
    return grid[best]["tau"], grid


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
