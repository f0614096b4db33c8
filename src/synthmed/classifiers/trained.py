"""A trained classifier: the network plus what is needed to predict, save and reload it.

Public API::

    clf.predict_proba(images)  # uint8 (N, H, W, C) -> (N, C)
    clf.logits(images)         # with the post-hoc offset of ``imbalance.method: posthoc_la`` (``info["logit_offset"]``)
    clf.features(images)       # penultimate layer, (N, D)
    clf.save(dir); TrainedClassifier.load(dir, cfg)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from synthmed.classifiers.config import ClassifierConfig
from synthmed.classifiers.models import Net, build_model
from synthmed.classifiers.transforms import to_float, to_tensor
from synthmed.errors import DataError, UserError
from synthmed.io import atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    from synthmed.config import Config

WEIGHTS = "model.safetensors"
META = "classifier.json"


def resolve_device(spec: str) -> torch.device:
    """``auto`` = CUDA when present, else CPU; a CUDA device without a GPU is a user error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={spec} but no CUDA GPU is available (use device=cpu or auto)")
    return torch.device(spec)


@dataclass
class TrainedClassifier:
    """A trained network plus what is needed to use, save and reload it."""

    net: Net
    n_classes: int
    info: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    eval_batch_size: int = 256

    @torch.no_grad()
    def _run(self, images: np.ndarray, what: str) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise DataError(f"expected uint8 images (N, H, W, C), got {images.dtype} {images.shape}")
        self.net.eval()
        out = []
        for i in range(0, len(images), self.eval_batch_size):
            x = to_float(to_tensor(images[i:i + self.eval_batch_size]), self.device)
            if x.shape[1] != self.net.in_channels:
                x = x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x.mean(dim=1, keepdim=True)
            out.append((self.net.features(x) if what == "features" else self.net(x)).float().cpu())
        if not out:
            return np.zeros((0, self.n_classes if what != "features" else self.net.feature_dim), np.float32)
        return torch.cat(out).numpy()

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Network logits plus the post-hoc offset, when the classifier has one."""
        z = self._run(images, "logits")
        offset = self.info.get("logit_offset")
        return z if offset is None else (z + np.asarray(offset, dtype=np.float32)).astype(np.float32)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        z = torch.from_numpy(self.logits(images)).double()
        return torch.softmax(z, dim=1).numpy()

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.logits(images).argmax(axis=1)

    def features(self, images: np.ndarray) -> np.ndarray:
        return self._run(images, "features")

    def save(self, out_dir: str | Path) -> Path:
        from safetensors.torch import save

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.net.state_dict().items()}
        atomic_write_bytes(out / WEIGHTS, save(state))
        atomic_write_json(out / META, {"n_classes": self.n_classes, **self.info})
        return out / WEIGHTS

    @classmethod
    def load(cls, out_dir: str | Path, cfg: Config | None = None) -> TrainedClassifier:
        """Rebuild the network (from the saved classifier settings, or ``cfg.classifier``) and load its weights."""
        from synthmed.safety import load_state_dict

        out = Path(out_dir)
        if not (out / META).is_file() or not (out / WEIGHTS).is_file():
            raise UserError(f"no trained classifier in {out} (expected {WEIGHTS} and {META})")
        info = json.loads((out / META).read_text(encoding="utf-8"))
        cc = ClassifierConfig.model_validate(info["classifier"]) if "classifier" in info else cfg.classifier  # type: ignore[union-attr]
        net, _ = build_model(cc, int(info["channels"]), int(info["size"]), int(info["n_classes"]),
                             info.get("class_names"), load_pretrained=False)
        net.load_state_dict(load_state_dict(out / WEIGHTS), strict=True)
        device = resolve_device(cfg.device if cfg is not None else "cpu")
        net.to(device).eval()
        return cls(net, int(info["n_classes"]), info, device, cc.eval_batch_size)
