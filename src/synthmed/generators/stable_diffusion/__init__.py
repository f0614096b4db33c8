"""Stable Diffusion fine-tuned with a named recipe (``generator.kind: stable_diffusion``).

``recipes.py``: named recipes and their resolution; ``base.py``: loading the base model, devices, image
conversions; ``train.py`` / ``checkpoints.py``: fine-tuning one adapter, resumable; ``sampling.py``: schedulers and
adapter loading; ``card.py``: model cards; ``generator.py``: :class:`StableDiffusionGenerator`, the
:class:`synthmed.generators.base.Generator` of this kind (imported lazily: diffusers loads only when used).
Its config section stays in ``generators/sd_config.py`` (a pydantic leaf).
"""

from __future__ import annotations

from typing import Any

__all__ = ["StableDiffusionGenerator"]


def __getattr__(name: str) -> Any:
    if name == "StableDiffusionGenerator":
        from synthmed.generators.stable_diffusion.generator import StableDiffusionGenerator

        return StableDiffusionGenerator
    raise AttributeError(name)
