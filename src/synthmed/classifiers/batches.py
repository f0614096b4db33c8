"""The batches of one training epoch, as (real indices, synthetic indices) into a :class:`MixPlan`'s two sets.

Modes: ``concat`` (one shuffled pass over real + synthetic), ``batch_ratio`` (a fixed synthetic share per batch),
``weighted_loss`` (every real batch paired with a synthetic batch), ``augment`` (one pass over the real images, each
replaced by a synthetic variant with probability p). With ``resample`` every mode draws class-balanced: the real
part of each batch (and the synthetic part, where it is drawn separately) comes from class-balanced sampling with
replacement instead of a shuffle.
"""

from __future__ import annotations

import numpy as np

from synthmed.classifiers.imbalance import balanced_order
from synthmed.classifiers.mixing import MixPlan, augment_replacements, batch_ratio_batches

Batch = tuple[np.ndarray, np.ndarray]  # (real indices, synthetic indices)


def chunks(order: np.ndarray, size: int) -> list[np.ndarray]:
    """``order`` cut into batches of ``size``; a last batch of one joins the previous one (BatchNorm needs two)."""
    parts = [order[i:i + size] for i in range(0, len(order), size)]
    if len(parts) > 1 and len(parts[-1]) == 1:
        last = parts.pop()
        parts[-1] = np.concatenate([parts[-1], last])
    return parts


def epoch_batches(plan: MixPlan, mode: str, batch_size: int, rng: np.random.Generator, resample: bool,
                  n_classes: int) -> list[Batch]:
    """The batches of one epoch as (real indices, synthetic indices)."""
    n_r, n_s = plan.n_real, plan.n_synthetic
    none = np.zeros(0, np.int64)
    if mode == "batch_ratio":
        balance = (plan.real.labels, plan.synthetic.labels, n_classes) if resample else None
        return batch_ratio_batches(n_r, n_s, batch_size, plan.batch_ratio, rng, balance)
    if mode == "weighted_loss":
        order = balanced_order(plan.real.labels, n_classes, rng) if resample else rng.permutation(n_r)
        real_parts = chunks(order, batch_size)
        cycles = int(np.ceil(len(real_parts) * batch_size / max(n_s, 1))) + 1
        stream = np.concatenate([rng.permutation(n_s) for _ in range(cycles)])
        return [(p, stream[i * batch_size:(i + 1) * batch_size]) for i, p in enumerate(real_parts)]
    if mode == "augment":
        order = balanced_order(plan.real.labels, n_classes, rng) if resample else rng.permutation(n_r)
        return [augment_replacements(p, plan, rng) for p in chunks(order, batch_size)]
    labels = np.concatenate([plan.real.labels, plan.synthetic.labels])
    order = balanced_order(labels, n_classes, rng) if resample else rng.permutation(len(labels))
    if not len(labels):
        return [(none, none)]
    return [(p[p < n_r], p[p >= n_r] - n_r) for p in chunks(order, batch_size)]
