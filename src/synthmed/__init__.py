"""synthmed: do synthetic diffusion images improve a medical-image classifier, and by how much?

The notebook API (``synthmed/api.py``) is loaded on first use, so ``import synthmed`` stays light::

    cfg = synthmed.load_config("configs/demo.yaml", overrides=["run.seeds=[0,1]"])
    run = synthmed.run(cfg, "runs/x")
    run.results()          # pandas DataFrame, one row per trained classifier

``synthmed.quality`` and ``synthmed.report`` are also subpackages: they stay importable as packages
(``synthmed.report.html``) and are callable as the stages (``synthmed.report("runs/x")``).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

_API = ("Run", "describe_data", "evaluate", "finetune", "generate", "load_config", "load_data", "open_run",
        "quality", "report", "run", "train")
_CALLABLE_PACKAGES = ("quality", "report")  # a subpackage and a stage of the same name


class _CallablePackage(types.ModuleType):
    """A subpackage that can also be called as the API stage of its name (``synthmed.report(run_dir)``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        api = importlib.import_module("synthmed.api")
        return getattr(api, self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


class _Package(types.ModuleType):
    """``synthmed`` itself: makes the ``quality`` / ``report`` subpackages callable when they are bound."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _CALLABLE_PACKAGES and isinstance(value, types.ModuleType) and type(value) is types.ModuleType:
            value.__class__ = _CallablePackage
        super().__setattr__(name, value)


def __getattr__(name: str) -> Any:
    if name in _CALLABLE_PACKAGES:
        return importlib.import_module(f"synthmed.{name}")  # binds the (callable) subpackage
    if name in _API:
        return getattr(importlib.import_module("synthmed.api"), name)
    raise AttributeError(f"module 'synthmed' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))


sys.modules[__name__].__class__ = _Package
