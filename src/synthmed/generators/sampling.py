"""How a generator draws its training images: class probability proportional to n_c ** gamma.

``class_power`` gamma = 1 draws images uniformly (today's default: a 10-image class in a 2,000-image set is 0.5% of
the draws), gamma = 0 draws classes uniformly (class-balanced), values in between interpolate.
"""

from __future__ import annotations

import numpy as np
import torch


def class_draw_probabilities(labels: np.ndarray | torch.Tensor, n_classes: int, class_power: float) -> np.ndarray:
    """Per-image draw probabilities: p(class c) proportional to n_c ** gamma, uniform within a class."""
    y = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    class_p = np.where(present, np.power(np.where(present, counts, 1.0), class_power), 0.0)
    class_p /= class_p.sum()
    per_image = class_p[y] / counts[y]
    return per_image / per_image.sum()


def class_shares(labels: np.ndarray | torch.Tensor, n_classes: int, class_power: float) -> np.ndarray:
    """Expected share of each class among the draws (for logs and docs)."""
    p = class_draw_probabilities(labels, n_classes, class_power)
    return np.bincount(np.asarray(labels, dtype=np.int64), weights=p, minlength=n_classes)


class IndexSampler:
    """Draws batch indices from a torch.Generator (checkpointable state), uniform or class-powered.

    With ``class_power == 1`` it calls ``torch.randint`` exactly as the uniform loop always did, so existing runs and
    their bit-identical resume are unchanged.
    """

    def __init__(self, labels: np.ndarray | torch.Tensor, n_classes: int, class_power: float = 1.0) -> None:
        self.n = len(labels)
        self.class_power = float(class_power)
        self.weights = None
        if self.class_power != 1.0:
            self.weights = torch.as_tensor(class_draw_probabilities(labels, n_classes, self.class_power),
                                           dtype=torch.float64)

    def __call__(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        if self.weights is None:
            return torch.randint(self.n, (batch_size,), generator=generator)
        return torch.multinomial(self.weights, batch_size, replacement=True, generator=generator)
