"""Fixtures shared by the Stable Diffusion tests (imported by the other tests/test_sd*.py; it holds no tests).

A tiny random SD is built once per session; the real data is a symlinked subset of ``../shared/data/pbc-native``
(3 classes x 12 images) so that per-class LoRA training stays fast at 64 px.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PBC = REPO.parent / "shared" / "data" / "pbc-native"
CLASSES = ["basophil", "eosinophil", "lymphocyte"]
PER_CLASS = 12


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    from synthmed.testing.sd_tiny import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny-sd", seed=0)


@pytest.fixture(scope="session")
def pbc_subset(tmp_path_factory) -> Path:
    if not PBC.is_dir():
        pytest.skip(f"real data not available at {PBC} (../shared is only on developer/CI machines)")
    root = tmp_path_factory.mktemp("pbc") / "pbc-subset"
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for f in sorted((PBC / c).glob("*.jpg"))[:PER_CLASS]:
            os.symlink(f, root / c / f.name)
    return root


def sd_overrides(base: Path, data_root: Path, **extra: object) -> list[str]:
    """Config overrides for a fast run on the tiny SD at 64 px, 2 shots per class."""
    items = {
        "offline": True, "device": "cpu",
        "data.source": f"folder:{data_root}", "data.size": 64, "data.shots": 2,
        "generator.kind": "stable_diffusion", "generator.stable_diffusion.base": str(base),
        "generator.stable_diffusion.resolution": 64, "generator.stable_diffusion.rank": 4,
        "generator.stable_diffusion.alpha": 4, "generator.stable_diffusion.lr": 1e-3,
        "generator.stable_diffusion.warmup_steps": 0, "generator.stable_diffusion.batch_size": 2,
        "generator.stable_diffusion.max_steps": 10, "generator.stable_diffusion.checkpoint_every": 5,
        "generation.n_per_class": 2, "generation.steps": 4, "generation.batch_size": 4,
    }
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]


def make_cfg(base: Path, data_root: Path, **extra: object):
    from synthmed.config import load_config

    return load_config(None, sd_overrides(base, data_root, **extra))
