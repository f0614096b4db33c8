"""The one place that says what a policy is: its resolved config, whether it reads synthetic images, its kind,
and the slice of ``mix.*`` its training reads (the part of ``mix`` that belongs in its cache key).

A policy's kind is ``synthetic`` only when it trains on synthetic images: ``mix.policy: ratio`` at ``ratio: 0``
trains on real images only and is ``real_only`` (or ``classical`` when an imbalance method is on).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from synthmed.classifiers.config import ImbalanceConfig, MixConfig
from synthmed.errors import ConfigError

if TYPE_CHECKING:
    from synthmed.config import Config

KINDS = ("real_only", "classical", "synthetic")
SYNTHETIC_POLICIES = ("add_per_class", "balance_to", "ratio", "batch_ratio", "synthetic_only", "weighted_loss",
                      "pretrain_then_finetune", "augment")
# the mix fields each policy reads besides `policy`; a field no policy claims here is read by every synthetic policy
_OWN_FIELDS: dict[str, tuple[str, ...]] = {
    "add_per_class": ("add_per_class", "shortage", "synthetic_weight"),
    "balance_to": ("balance_to", "shortage", "synthetic_weight"),
    "ratio": ("ratio", "ratio_mode", "ratio_classes", "shortage", "synthetic_weight"),
    "batch_ratio": ("batch_ratio", "synthetic_weight"),
    "synthetic_only": (),  # every sample is synthetic: a common loss weight cancels
    "weighted_loss": ("weight_lambda",),  # lambda sets the real/synthetic weights
    "pretrain_then_finetune": ("pretrain_fraction",),  # pre-training is synthetic only, fine-tuning real only
    "augment": ("augment_p", "synthetic_weight"),
}
_CLAIMED = {f for fields in _OWN_FIELDS.values() for f in fields}
# the imbalance fields each method reads besides `method`
_IMBALANCE_FIELDS: dict[str, tuple[str, ...]] = {
    "none": (), "resample": (), "inverse_freq": ("prior",), "effective_number": ("prior", "beta"),
    "logit_adjustment": ("prior", "tau"), "balanced_softmax": ("prior",), "drw": ("prior", "beta", "drw_start"),
    "posthoc_la": ("prior", "posthoc_taus"), "crt": ("crt_epochs", "crt_lr", "crt_views"),
}


def resolve_policy(cfg: Config, name: str) -> Config:
    """The config a policy trains with: ``cfg`` plus the policy's dotted overrides."""
    from synthmed.config import with_overrides

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


def uses_synthetic(mix: MixConfig) -> bool:
    """Whether a mix setting trains on any synthetic image (a zero amount of synthetic data does not)."""
    if mix.policy not in SYNTHETIC_POLICIES:
        return False
    zero = {"ratio": mix.ratio == 0.0, "batch_ratio": mix.batch_ratio == 0.0,
            "weighted_loss": mix.weight_lambda == 1.0, "add_per_class": mix.add_per_class == 0,
            "augment": mix.augment_p == 0.0}
    return not zero.get(mix.policy, False)


def policy_kind(policy_cfg: Config) -> str:
    """``synthetic`` (trains on synthetic images), ``classical`` (an imbalance method on real images) or
    ``real_only``."""
    if uses_synthetic(policy_cfg.mix):
        return "synthetic"
    return "classical" if policy_cfg.imbalance.method != "none" else "real_only"


def trained_kind(policy_cfg: Config, n_synthetic: int) -> str:
    """The kind of what a classifier actually trained on: a synthetic policy that got no synthetic image (a failed
    gate, ``shortage: take_all``) is reported as what it was, ``real_only`` or ``classical``."""
    kind = policy_kind(policy_cfg)
    if kind == "synthetic" and n_synthetic == 0:
        return "classical" if policy_cfg.imbalance.method != "none" else "real_only"
    return kind


def mix_key(mix: MixConfig) -> dict[str, Any]:
    """The ``mix`` fields this policy's training reads (for cache keys): ``{"policy": "real_only"}`` for any mix
    that uses no synthetic image, so changing e.g. ``mix.add_per_class`` does not retrain real-only policies."""
    if not uses_synthetic(mix):
        return {"policy": "real_only"}
    dump = mix.model_dump(mode="json")
    own = set(_OWN_FIELDS.get(mix.policy, ()))
    return {k: v for k, v in sorted(dump.items()) if k == "policy" or k in own or k not in _CLAIMED}


def imbalance_key(imb: ImbalanceConfig) -> dict[str, Any]:
    """The ``imbalance`` fields this method reads (for cache keys): changing ``imbalance.tau`` does not retrain a
    ``drw`` policy."""
    dump = imb.model_dump(mode="json")
    return {k: dump[k] for k in ("method", *_IMBALANCE_FIELDS[imb.method])}


__all__ = ["KINDS", "SYNTHETIC_POLICIES", "resolve_policy", "uses_synthetic", "policy_kind", "trained_kind", "mix_key",
           "imbalance_key"]
