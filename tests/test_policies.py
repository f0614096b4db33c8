"""Cache-key slices of the mixing policies (``classifiers/policies.py`` ``mix_key``): a policy's key holds the mix
fields it reads, so changing a field only another policy reads retrains nothing."""

from __future__ import annotations

import pytest

from synthmed.classifiers.config import MixConfig
from synthmed.classifiers.policies import SYNTHETIC_POLICIES, mix_key

RATIO_ONLY = {"ratio_mode": "replace", "ratio_classes": ["CNV"]}


def test_ratio_key_holds_ratio_mode_and_classes() -> None:
    key = mix_key(MixConfig(policy="ratio", ratio=0.3, **RATIO_ONLY))
    assert key == {"policy": "ratio", "ratio": 0.3, "ratio_mode": "replace", "ratio_classes": ["CNV"],
                   "shortage": "error", "synthetic_weight": 1.0}
    assert mix_key(MixConfig(policy="ratio", ratio=0.3)) != key  # changing the mode or the classes retrains
    assert mix_key(MixConfig(policy="ratio", ratio=0.0, **RATIO_ONLY)) == {"policy": "real_only"}  # R = 0


@pytest.mark.parametrize("policy", [p for p in SYNTHETIC_POLICIES if p != "ratio"])
def test_other_policies_ignore_ratio_mode_and_classes(policy: str) -> None:
    plain = mix_key(MixConfig(policy=policy))
    assert mix_key(MixConfig(policy=policy, **RATIO_ONLY)) == plain
    assert not {"ratio", "ratio_mode", "ratio_classes"} & set(plain)


def test_real_only_key_ignores_every_mix_field() -> None:
    assert mix_key(MixConfig(policy="real_only", ratio=0.9, **RATIO_ONLY)) == {"policy": "real_only"}
