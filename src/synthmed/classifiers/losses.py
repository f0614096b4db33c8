"""The training loss: class-, sample- and group-weighted cross-entropy with an optional logit offset."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def batch_loss(logits: torch.Tensor, y: torch.Tensor, groups: list[int], group_weights: list[float],
               class_w: torch.Tensor | None = None, adjust: torch.Tensor | None = None, smoothing: float = 0.0,
               partner: torch.Tensor | None = None, lam: float = 1.0,
               sample_w: torch.Tensor | None = None) -> torch.Tensor:
    """sum_g weight_g * (weighted mean CE over group g); empty groups contribute 0.

    A sample's weight is ``class_w[y] * sample_w`` (1 when absent); the mean over a group is divided by the sum of its
    weights, as torch's weighted cross-entropy. With one group of weight 1 and no weights this is plain mean
    cross-entropy; with groups (real, synthetic) and weights (lambda, 1 - lambda) it is DataDream's
    lambda * CE(real) + (1 - lambda) * CE(synthetic). ``adjust`` is added to the logits (logit adjustment, balanced
    softmax); ``partner``/``lam`` mix the targets of a MixUp/CutMix batch.
    """
    if adjust is not None:
        logits = logits + adjust
    ce = F.cross_entropy(logits.float(), y, reduction="none", label_smoothing=smoothing)
    w = class_w[y] if class_w is not None else torch.ones_like(ce)
    if sample_w is not None:
        w = w * sample_w
    if partner is not None and lam < 1.0:
        y_b = y[partner]
        ce = lam * ce + (1 - lam) * F.cross_entropy(logits.float(), y_b, reduction="none", label_smoothing=smoothing)
        if class_w is not None or sample_w is not None:
            w_b = class_w[y_b] if class_w is not None else torch.ones_like(ce)
            if sample_w is not None:
                w_b = w_b * sample_w[partner]
            w = lam * w + (1 - lam) * w_b
    total, start = logits.new_zeros((), dtype=torch.float32), 0
    for n, gw in zip(groups, group_weights):
        if n and gw:
            sl = slice(start, start + n)
            total = total + gw * (w[sl] * ce[sl]).sum() / w[sl].sum().clamp_min(1e-12)
        start += n
    return total
