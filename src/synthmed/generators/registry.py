"""``{kind: class}``: every generator kind, imported lazily (a kind's heavy dependencies load only when used)."""

from __future__ import annotations

import importlib
from typing import Any

from synthmed.errors import ConfigError

#: generator.kind -> "module:Class" implementing :class:`synthmed.generators.base.Generator`
REGISTRY: dict[str, str] = {
    "ddpm": "synthmed.generators.ddpm:DDPMGenerator",
    "edm": "synthmed.generators.edm:EDMGenerator",
    "stable_diffusion": "synthmed.generators.stable_diffusion:StableDiffusionGenerator",
}


def kinds() -> list[str]:
    return sorted(REGISTRY)


def generator_class(kind: str) -> Any:
    """The class registered for ``kind`` (one-line error naming the known kinds)."""
    if kind not in REGISTRY:
        raise ConfigError(f"unknown generator.kind '{kind}' (known: {', '.join(kinds())})")
    module, attr = REGISTRY[kind].split(":")
    return getattr(importlib.import_module(module), attr)


def register(kind: str, target: str) -> None:
    """Register a generator kind (``"package.module:Class"``), e.g. from a plug-in."""
    REGISTRY[kind] = target
