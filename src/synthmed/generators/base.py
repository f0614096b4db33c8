"""The generator protocol shared by every generator (same verbs everywhere, as in scikit-learn)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from synthmed.data.dataset import ImageSet


@runtime_checkable
class Generator(Protocol):
    """fit on real training images, sample per-image-seeded images per class, save / load."""

    def fit(self, train: ImageSet, classes: list[str], work_dir: Path) -> Generator:
        """Train (resuming from checkpoints under ``work_dir`` when present)."""
        ...

    def sample(self, labels: Sequence[int], seeds: Sequence[int], **options: Any) -> np.ndarray:
        """Images (N, H, W, C) uint8 for the given class indices; image i depends only on (labels[i], seeds[i])."""
        ...

    def save(self, path: Path) -> None: ...

    @classmethod
    def load(cls, path: Path) -> Generator: ...
