"""The generator protocol shared by every generator kind (same verbs everywhere, as in scikit-learn).

A generator kind is a class registered in :mod:`synthmed.generators.registry` under its ``kind`` name
(``generator.kind`` in the config). The kind-agnostic stage (``generators/stage.py``) only ever calls these verbs::

    gen = cls.from_config(cfg, data)            # untrained, knows classes / image size / its settings
    gen.fit(data.train, work_dir)               # trains, resuming from checkpoints under work_dir
    gen.save(layout.generator)                  # weights (safetensors) + its config + synthmed.json
    gen = cls.load(layout.generator, cfg)       # back, on cfg.device
    images = gen.sample(labels, seeds, options) # uint8 (N, H, W, C); image i depends only on its request

What the generator folder must hold (the contract the leakage guard and the memorization audit read) is in
:mod:`synthmed.generators.contract`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from synthmed.data.dataset import ImageSet

if TYPE_CHECKING:
    from synthmed.config import Config
    from synthmed.data.dataset import RealData


@dataclass(frozen=True)
class SampleOptions:
    """How to sample (resolved from ``cfg.generation``; ``None`` = the kind's default).

    ``sources`` / ``strength`` are real-image guidance (SDEdit / img2img): when ``sources`` is given, image i starts
    from ``sources[i]`` (uint8 (H, W, C), a real *training* image) noised to ``strength`` in (0, 1] and is denoised
    under ``labels[i]``; ``strength=1`` ignores the source.
    """

    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    batch_size: int = 64
    sources: np.ndarray | None = None
    strength: float | None = None
    #: the UNet's arithmetic while sampling (ddpm / edm kinds): fp32, bf16 (autocast), or auto (bf16 where it is
    #: native: CUDA, or a CPU with AVX512-BF16 / AMX, else fp32)
    precision: str = "fp32"
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Generator(Protocol):
    """fit on real training images, sample per-image-seeded images per class, save / load."""

    kind: ClassVar[str]
    classes: list[str]

    @classmethod
    def from_config(cls, cfg: Config, data: RealData) -> Generator:
        """An untrained generator for ``data`` (classes, image size, channels) with ``cfg.generator.<kind>``."""
        ...

    def fit(self, train: ImageSet, work_dir: Path, *, progress: bool = True,
            stop_after: int | None = None) -> Generator:
        """Train on ``train`` (resuming from checkpoints under ``work_dir``); ``stop_after`` simulates a crash."""
        ...

    def sample(self, labels: Sequence[int], seeds: Sequence[int], options: SampleOptions | None = None) -> np.ndarray:
        """Images (N, H, W, C) uint8; image i depends only on (labels[i], seeds[i], sources[i]) and the options."""
        ...

    def provenance(self, options: SampleOptions) -> dict[str, Any]:
        """Manifest columns describing how images are made (generator, sampler, steps, guidance, model_sha256 ...)."""
        ...

    def fingerprint(self) -> str:
        """A hash of everything that determines the trained weights (settings, training images, seed)."""
        ...

    def save(self, path: Path) -> None:
        """Write the generator folder (see generators/contract.py)."""
        ...

    @classmethod
    def load(cls, path: Path, cfg: Config) -> Generator:
        """Load a saved generator onto ``cfg.device``."""
        ...
