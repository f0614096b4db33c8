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

from synthmed.config import Config, with_overrides
from synthmed.errors import ConfigError

KEY_VERSION = 1
UPSTREAM_STAGES = ("data", "finetune", "generate", "quality")
STAGES = ("data", "finetune", "generate", "quality", "train", "evaluate", "report")


def digest(obj: Any, n: int = 16) -> str:
    """A short stable hash of a JSON-serialisable object."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"v{KEY_VERSION}:{text}".encode()).hexdigest()[:n]


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True)


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
    finetune = digest({"stage": "finetune", "in": data, "generator": _dump(cfg.generator)})
    generate = digest({"stage": "generate", "in": finetune, "generation": _dump(cfg.generation)})
    quality = digest({
        "stage": "quality", "in": generate, "quality": _dump(cfg.quality), "filter": _dump(cfg.filter),
        "classifier": _dump(cfg.classifier), "imbalance": _dump(cfg.imbalance),  # the vetting classifier's recipe
    })
    return UpstreamKeys(data, finetune, generate, quality)


def resolve_policy(cfg: Config, name: str) -> Config:
    """The config a policy trains with: ``cfg`` plus the policy's dotted overrides."""
    if name not in cfg.run.policies:
        known = ", ".join(sorted(cfg.run.policies)) or "none"
        raise ConfigError(f"unknown policy '{name}' (run.policies has: {known})")
    overrides = cfg.run.policies[name] or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"run.policies.{name} must be a mapping of dotted keys to values")
    try:
        return with_overrides(cfg, dict(overrides))
    except ConfigError as err:
        raise ConfigError(f"run.policies.{name}: {err}") from None


def is_synthetic(policy_cfg: Config) -> bool:
    """Whether a resolved policy trains on synthetic images (and so needs finetune, generate and quality)."""
    from synthmed.classifiers.mixing import needs_synthetic

    return bool(needs_synthetic(policy_cfg.mix))


def policy_kind(policy_cfg: Config) -> str:
    """``synthetic``, ``classical`` (an imbalance baseline on real images) or ``real_only``."""
    if policy_cfg.mix.policy != "real_only":  # as `synthmed evaluate` classifies runs
        return "synthetic"
    return "classical" if policy_cfg.imbalance.method != "none" else "real_only"


def train_key(policy_cfg: Config, seed: int, upstream: UpstreamKeys) -> str:
    """Key of one classifier: its inputs (quality for synthetic policies, data otherwise), recipe and seed."""
    source = upstream.quality if is_synthetic(policy_cfg) else upstream.data
    return digest({
        "stage": "train", "in": source, "classifier": _dump(policy_cfg.classifier), "mix": _dump(policy_cfg.mix),
        "imbalance": _dump(policy_cfg.imbalance), "seed": int(seed),
    })
