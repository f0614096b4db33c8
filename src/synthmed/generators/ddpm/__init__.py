"""Class-conditional pixel-space DDPM trained from scratch (``generator.kind: ddpm``).

``model.py``: UNet presets, image policy, samplers; ``train.py``: the resumable training loop;
``generator.py``: :class:`DDPMGenerator`, the :class:`synthmed.generators.base.Generator` of this kind.
The class is imported lazily so that ``import synthmed.generators.ddpm`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DDPMGenerator"]


def __getattr__(name: str) -> Any:
    if name == "DDPMGenerator":
        from synthmed.generators.ddpm.generator import DDPMGenerator

        return DDPMGenerator
    raise AttributeError(name)
