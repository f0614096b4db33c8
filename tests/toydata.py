"""Small, easily separable image sets for the classifier tests (test-only; not part of the synthmed package)."""

from __future__ import annotations

import numpy as np

from synthmed.data.dataset import ImageSet


def toy_images(labels: np.ndarray, n_classes: int, size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """Class c: a noisy disk whose radius and brightness grow with c (invariant to flips and rot90)."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - (size - 1) / 2, xx - (size - 1) / 2)
    out = np.empty((len(labels), size, size, channels), np.uint8)
    for i, c in enumerate(labels.tolist()):
        radius = size * (0.15 + 0.3 * c / max(n_classes - 1, 1))
        level = 90 + 140 * c / max(n_classes - 1, 1)
        img = np.where(r <= radius, level, 30.0)[:, :, None] + rng.normal(0, 12, (size, size, channels))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def toy_set(n_per_class: int | list[int], n_classes: int = 3, size: int = 16, channels: int = 1, seed: int = 0,
            prefix: str = "train") -> ImageSet:
    rng = np.random.default_rng(seed)
    counts = [n_per_class] * n_classes if isinstance(n_per_class, int) else list(n_per_class)
    labels = np.repeat(np.arange(n_classes), counts)
    images = toy_images(labels, n_classes, size, channels, rng)
    return ImageSet(images, labels, [f"{prefix}/{i}" for i in range(len(labels))])


def toy_sets(n_classes: int = 3, n_train: int | list[int] = 30, n_eval: int = 20, size: int = 16,
             channels: int = 1, seed: int = 0) -> tuple[ImageSet, ImageSet, ImageSet]:
    """(train, val, test) drawn with different seeds."""
    return (toy_set(n_train, n_classes, size, channels, seed, "train"),
            toy_set(n_eval, n_classes, size, channels, seed + 1, "val"),
            toy_set(n_eval, n_classes, size, channels, seed + 2, "test"))
