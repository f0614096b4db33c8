"""Cache keys of the pipeline stages: a hash of each stage's config slice and of its inputs' keys.

Keys are pure functions of the configuration, so they can be computed before anything runs (the sweep uses that to
skip grid points that already have results). ``device`` and ``offline`` are not part of any key: they change where
and how a stage runs, not what it computes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from synthmed.classifiers.policies import imbalance_key, mix_key, policy_kind, resolve_policy, uses_synthetic
from synthmed.config import Config
from synthmed.generators.edm.config import without_unset_later_fields

KEY_VERSION = 3  # 2: a policy's train key holds only the mix fields it reads; 3: and only the imbalance fields
UPSTREAM_STAGES = ("data", "finetune", "generate", "quality")
STAGES = ("data", "finetune", "generate", "quality", "train", "evaluate", "report")


def digest(obj: Any, n: int = 16) -> str:
    """A short stable hash of a JSON-serialisable object."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"v{KEY_VERSION}:{text}".encode()).hexdigest()[:n]


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True)


def _generator_dump(generator: Any) -> Any:
    """The generator config as hashed: later UNet fields left out while unset (runs made before them stay cached)."""
    return {k: without_unset_later_fields(v) if isinstance(v, dict) else v for k, v in _dump(generator).items()}


def _generation_dump(generation: Any) -> Any:
    """The generation config as hashed: ``precision`` left out at its default, fp32 (runs made before it stay
    cached; a bf16 set is another set)."""
    d = _dump(generation)
    if d.get("precision") == "fp32":
        del d["precision"]
    return d


@dataclass(frozen=True)
class UpstreamKeys:
    """Keys of the shared stages (data -> finetune -> generate -> quality)."""

    data: str
    finetune: str
    generate: str
    quality: str

    def get(self, stage: str) -> str:
        return str(getattr(self, stage))


def upstream_keys(cfg: Config) -> UpstreamKeys:
    data = digest({"stage": "data", "data": _dump(cfg.data), "seed": cfg.seed})
    finetune = digest({"stage": "finetune", "in": data, "generator": _generator_dump(cfg.generator)})
    generate = digest({"stage": "generate", "in": finetune, "generation": _generation_dump(cfg.generation)})
    quality = digest({
        "stage": "quality", "in": generate, "quality": _dump(cfg.quality), "filter": _dump(cfg.filter),
        "classifier": _dump(cfg.classifier), "imbalance": _dump(cfg.imbalance),  # the vetting classifier's recipe
    })
    return UpstreamKeys(data, finetune, generate, quality)


def is_synthetic(policy_cfg: Config) -> bool:
    """Whether a resolved policy trains on synthetic images (and so needs finetune, generate and quality)."""
    return uses_synthetic(policy_cfg.mix)


def train_key(policy_cfg: Config, seed: int, upstream: UpstreamKeys) -> str:
    """Key of one classifier: its inputs (quality for synthetic policies, data otherwise), recipe and seed."""
    source = upstream.quality if is_synthetic(policy_cfg) else upstream.data
    return digest({
        "stage": "train", "in": source, "classifier": _dump(policy_cfg.classifier), "mix": mix_key(policy_cfg.mix),
        "imbalance": imbalance_key(policy_cfg.imbalance), "seed": int(seed),
    })


__all__ = ["KEY_VERSION", "STAGES", "UPSTREAM_STAGES", "UpstreamKeys", "digest", "is_synthetic", "policy_kind",
           "resolve_policy", "train_key", "upstream_keys"]
