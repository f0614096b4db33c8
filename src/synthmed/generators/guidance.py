"""Real-image guidance at generation (``generation.guide`` / ``generation.strength``): which real training images
the synthetic images start from.

Sources are only ever the generator's own training images (``training_images.csv`` of the generator folder, see
``contract.py``), looked up in the training split of the data: never a val or test image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from synthmed.errors import ConfigError, DataError
from synthmed.generators import contract


def resolve_guide(gen_cfg: Any) -> str:
    """``none`` | ``same_class`` | ``head_to_tail``; ``strength`` alone means ``same_class``, a guide needs one."""
    guide = getattr(gen_cfg, "guide", None)
    strength = getattr(gen_cfg, "strength", None)
    if guide is None:
        return "none" if strength is None else "same_class"
    if guide != "none" and strength is None:
        raise ConfigError(f"generation.guide={guide} needs generation.strength (e.g. 0.6)")
    if guide == "none" and strength is not None:
        raise ConfigError("generation.strength is set but generation.guide=none: drop one of them")
    return str(guide)


def training_sources(gen_dir: Any, data: Any) -> tuple[dict[int, list[str]], dict[str, np.ndarray]]:
    """(class -> source ids in ``training_images.csv`` order, id -> image) from the training split only."""
    by_id = {i: a for s in (data.train_pool, data.train) for i, a in zip(s.ids, s.images)}
    candidates: dict[int, list[str]] = {c: [] for c in range(data.n_classes)}
    for row in contract.read_training_images(gen_dir):
        if row["id"] not in by_id:
            raise DataError(f"{gen_dir}/{contract.TRAINING_IMAGES}: training image '{row['id']}' is not in the data's "
                            "training split; rerun `synthmed finetune`")
        candidates[int(row["label"])].append(row["id"])
    used = {i for ids in candidates.values() for i in ids}
    return candidates, {i: by_id[i] for i in used}
