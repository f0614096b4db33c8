"""Experiment tracking through accelerate's trackers (``tracking: none | tensorboard | wandb | mlflow``).

Training loops (generators, classifiers) log scalars (loss, learning rate, val metrics) and image grids through one
small object, so the backend is a setting, not code. The logs of a run go under ``RUN_DIR/tracking/<name>``
(TensorBoard event files; MLflow's local store); wandb uses its own settings (``WANDB_MODE=offline`` works here).
A backend whose package is missing is a one-line error naming the package; ``none`` logs nothing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.errors import UserError

KINDS = ("none", "tensorboard", "wandb", "mlflow")
_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


class Tracker:
    """Log scalars and images of one training run; a no-op for ``kind == "none"``."""

    def __init__(self, kind: str, logging_dir: str | Path, run_name: str, config: dict[str, Any] | None = None):
        if kind not in KINDS:
            raise UserError(f"tracking={kind}: choose from {', '.join(KINDS)}")
        self.kind, self.run_name = kind, run_name
        self.logging_dir = Path(logging_dir)
        self._tracker: Any = None
        if kind == "none":
            return
        package = _PACKAGE[kind]
        if importlib.util.find_spec(package) is None:
            raise UserError(f"tracking={kind} needs the '{package}' package (pip install {package}) or tracking=none")
        from accelerate import tracking as acc_tracking

        self.logging_dir.mkdir(parents=True, exist_ok=True)
        if kind == "tensorboard":
            self._tracker = acc_tracking.TensorBoardTracker(run_name, str(self.logging_dir))
        elif kind == "wandb":
            self._tracker = acc_tracking.WandBTracker(run_name, dir=str(self.logging_dir))
        else:
            self._tracker = acc_tracking.MLflowTracker(run_name, logging_dir=str(self.logging_dir))
        if hasattr(self._tracker, "start"):  # accelerate >= 1.x starts a tracker explicitly
            self._tracker.start()
        if config:
            self._tracker.store_init_configuration(_flat(config))

    @property
    def enabled(self) -> bool:
        return self._tracker is not None

    def log(self, values: dict[str, float], step: int) -> None:
        """Scalars at ``step`` (non-finite or None values are skipped)."""
        if self._tracker is None:
            return
        clean = {k: float(v) for k, v in values.items() if v is not None and np.isfinite(float(v))}
        if clean:
            self._tracker.log(clean, step=int(step))

    def log_images(self, images: dict[str, np.ndarray], step: int) -> None:
        """uint8 image grids (H, W, C) or batches (N, H, W, C), where the backend takes images (not mlflow)."""
        if self._tracker is None or not hasattr(self._tracker, "log_images"):
            return
        batches = {k: (v[None] if v.ndim == 3 else v) for k, v in images.items()}
        if self.kind == "tensorboard":
            self._tracker.log_images(batches, step=int(step), dataformats="NHWC")
        else:
            self._tracker.log_images(batches, step=int(step))

    def close(self) -> None:
        if self._tracker is not None:
            self._tracker.finish()
            self._tracker = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings -> dotted keys with scalar values (what every backend accepts as hyper-parameters)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "."))
        elif isinstance(value, (bool, int, float, str)) or value is None:
            out[name] = "none" if value is None else value
        else:
            out[name] = str(value)
    return out


def tracker_for(kind: str, run_dir: str | Path | None, name: str, config: dict[str, Any] | None = None) -> Tracker:
    """The tracker of one training (``name``: generator, classifier/<policy>/seed<k>) of a run directory."""
    if kind == "none" or run_dir is None:
        return Tracker("none", ".", name)
    return Tracker(kind, Path(run_dir) / "tracking", name.replace("/", "_"), config)


__all__ = ["KINDS", "Tracker", "tracker_for"]
