"""What a source reader returns (``Raw``) and how file sources gather images under the image policy (``Collector``).

A file reader hands every decoded file to ``Collector.add``: deep pixels (16-bit, float, DICOM) are windowed
per image, resized in float and quantized to uint8 last. With ``facts_only`` (``data info``) nothing is kept but
one ``ImageFacts`` per image (native size, channels, mode, pixel hash), so a folder of mixed sizes can be described
without ``data.size`` and without holding its pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from synthmed.data.config import DataConfig
from synthmed.data.policy import describe, fit_size, quantize, stack, value_window
from synthmed.io import pixel_hash

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageFacts:
    """One image as read from its file (before the size policy); ``hash`` is of the pixels the stages would see."""

    height: int
    width: int
    channels: int
    mode: str
    hash: str


@dataclass
class Raw:
    """A whole source after the image policy; ``split`` holds the source's own split per image (or None).

    ``images`` is None when the source was read with ``facts_only``; ``facts`` then describes every image.
    """

    images: np.ndarray | None
    labels: np.ndarray
    ids: list[str]
    classes: list[str]
    split: list[str] | None = None
    groups: list[str] | None = None
    policy: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    facts: list[ImageFacts] | None = None


def array_facts(images: np.ndarray, mode: str | None = None) -> list[ImageFacts]:
    """Facts of an (N, H, W, C) uint8 array source (npz, phantom)."""
    n, h, w, c = images.shape
    label = mode or ("L" if c == 1 else "RGB")
    return [ImageFacts(h, w, c, label, pixel_hash(im)) for im in images]


class Collector:
    """Gathers decoded files under ``cfg``'s image policy, or only their facts (``facts_only``)."""

    def __init__(self, cfg: DataConfig, facts_only: bool = False) -> None:
        self.cfg, self.facts_only = cfg, facts_only
        self.images: list[np.ndarray] = []
        self.facts: list[ImageFacts] = []
        self.native: set[tuple[int, int]] = set()

    def add(self, arr: np.ndarray, value_range: tuple[float, float] | None = None, mode: str = "",
            header_window: Sequence[float] | None = None, invert: bool = False) -> None:
        """One decoded file: uint8 (``value_range`` None) or float32 deep pixels with their default range."""
        h, w = arr.shape[:2]
        self.native.add((h, w))
        if value_range is not None:
            window = self.cfg.window if self.cfg.window is not None else header_window
            low, high = value_window(arr, value_range, window, self.cfg.intensity)
            out = quantize(fit_size(arr, self.cfg.size, self.cfg.resize), low, high)
            if invert:  # MONOCHROME1: high values are dark
                out = 255 - out
        else:
            out = fit_size(arr, self.cfg.size, self.cfg.resize)
        if self.facts_only:
            self.facts.append(ImageFacts(h, w, int(arr.shape[2]), mode, pixel_hash(out)))
        else:
            self.images.append(out)

    def finish(self, warn: list[str], what: str) -> tuple[np.ndarray | None, dict[str, Any], list[ImageFacts] | None]:
        """(stacked images or None, the image_policy record, facts or None)."""
        if self.facts_only:
            return None, facts_policy(self.cfg, self.facts, self.native), self.facts
        arr = stack(self.images, self.cfg.size, self.cfg.channels, warn, what)
        return arr, describe(self.cfg.size, self.cfg.resize, arr.shape[3], arr.shape[1:3], self.native), None


def facts_policy(cfg: DataConfig, facts: Sequence[ImageFacts], native: set[tuple[int, int]]) -> dict[str, Any]:
    """The image_policy record for described (not stacked) images; ``size`` is None for mixed native sizes."""
    channels = {f.channels for f in facts}
    n_ch = int(cfg.channels) if cfg.channels in (1, 3) else (3 if 3 in channels else 1)
    if cfg.size is not None:
        size: list[int] | None = [cfg.size, cfg.size]
    elif len(native) == 1:
        size = [int(v) for v in next(iter(native))]
    else:
        size = None
    pol = describe(cfg.size, cfg.resize, n_ch, (0, 0), native)
    pol["size"] = size
    return pol
