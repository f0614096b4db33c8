"""In-memory image sets: the contract every stage reads.

Images are uint8 arrays of shape (N, H, W, C) with C = 1 (grayscale) or 3 (RGB); labels are int64 class indices.
Each image has a stable string id (a relative path, or ``split/index`` for array sources) that is written into
``RUN_DIR/data/split.csv`` and into guards that keep synthetic and generator-training images out of val/test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ImageSet:
    """A set of images with labels and stable ids."""

    images: np.ndarray
    labels: np.ndarray
    ids: list[str]

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}")
        if not (len(self.images) == len(self.labels) == len(self.ids)):
            raise ValueError("images, labels and ids differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def subset(self, index: Sequence[int] | np.ndarray) -> ImageSet:
        idx = np.asarray(index, dtype=np.int64)
        return ImageSet(self.images[idx], self.labels[idx], [self.ids[i] for i in idx.tolist()])

    def counts(self, n_classes: int) -> list[int]:
        return np.bincount(self.labels, minlength=n_classes).astype(int).tolist()

    @staticmethod
    def concat(sets: Sequence[ImageSet]) -> ImageSet:
        return ImageSet(
            np.concatenate([s.images for s in sets]),
            np.concatenate([s.labels for s in sets]),
            [i for s in sets for i in s.ids],
        )


@dataclass
class RealData:
    """The real dataset after the image policy and the frozen split.

    ``train`` is the training subset actually used (after shots / long_tail / fraction, and without the
    ``excluded_ids``: training-split images that duplicate a val/test image pixel for pixel); ``train_pool`` is the
    whole training split it was drawn from. ``val`` and ``test`` are real images only and never change.
    """

    classes: list[str]
    train: ImageSet
    val: ImageSet
    test: ImageSet
    train_pool: ImageSet
    source: str
    image_policy: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    subset_applied: bool = False
    excluded_ids: list[str] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return self.train.channels

    @property
    def size(self) -> tuple[int, int]:
        return self.train.size

    def summary(self) -> dict[str, Any]:
        """The ``data info --json`` shape: classes and per-split totals and per-class counts."""
        splits = {}
        train_split = self.train if self.subset_applied else self.train_pool
        for name, s in (("train", train_split), ("val", self.val), ("test", self.test)):
            splits[name] = {"total": len(s), "per_class": s.counts(self.n_classes)}
        out: dict[str, Any] = {"classes": list(self.classes), "splits": splits}
        if self.subset_applied and len(self.train_pool) != len(self.train):
            out["train_pool"] = {"total": len(self.train_pool), "per_class": self.train_pool.counts(self.n_classes)}
        if self.excluded_ids:
            out["excluded_from_training"] = {"total": len(self.excluded_ids), "ids": list(self.excluded_ids),
                                             "reason": "exact pixel duplicates of val/test images"}
        out["image_policy"] = dict(self.image_policy)
        return out
