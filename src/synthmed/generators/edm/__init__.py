"""Class-conditional pixel-space diffusion in the EDM formulation (``generator.kind: edm``).

``config.py``: its settings; ``precond.py``: preconditioning, loss and samplers on diffusers' EDM schedulers;
``train.py``: the resumable training loop; ``generator.py``: :class:`EDMGenerator`. The class is imported lazily so
that ``import synthmed.generators.edm`` (done by the config) stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EDMGenerator"]


def __getattr__(name: str) -> Any:
    if name == "EDMGenerator":
        from synthmed.generators.edm.generator import EDMGenerator

        return EDMGenerator
    raise AttributeError(name)
