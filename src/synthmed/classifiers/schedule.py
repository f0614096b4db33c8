"""The classifier's learning-rate schedule: linear warm-up, then cosine decay to a floor (``classifier.min_lr``)."""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, warmup: int, total: int, floor: float = 0.0) -> float:
    """The multiplier of the base learning rate at optimizer step ``step`` (0-based).

    Warm-up: ``(step + 1) / warmup`` for the first ``warmup`` steps; then cosine from 1 down to ``floor`` (=
    ``min_lr / lr``) at step ``total``, and ``floor`` after it."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_schedule(opt: torch.optim.Optimizer, warmup: int, total: int,
                floor: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`lr_factor` to every parameter group of ``opt``."""
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"the cosine floor must be a fraction of the learning rate in [0, 1], got {floor}")
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, warmup, total, floor))


def min_lr_floor(lr: float, min_lr: float) -> float:
    """``classifier.min_lr`` as a fraction of ``classifier.lr`` (the ``floor`` of :func:`lr_schedule`)."""
    return min(max(min_lr / lr, 0.0), 1.0)


__all__ = ["lr_factor", "lr_schedule", "min_lr_floor"]
