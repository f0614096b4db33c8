"""Fixtures shared by the Stable Diffusion tests (imported by the other tests/test_sd*.py; it holds no tests).

A tiny random SD is built once per session; the few-shot data is a PBC-like class-per-folder JPEG set rendered from
the ``phantom:blood`` source (``synthmed.testing.phantom_folder``; 3 classes x 12 images, so that per-class LoRA
training stays fast at 64 px), so these tests run on a fresh clone without ``../shared``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["basophil", "eosinophil", "lymphocyte"]
PER_CLASS = 12


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    from synthmed.testing.sd_tiny import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny-sd", seed=0)


@pytest.fixture(scope="session")
def pbc_subset(tmp_path_factory) -> Path:
    """``CLASSES`` x ``PER_CLASS`` phantom JPEGs in PBC's folder layout (no ``../shared`` needed)."""
    from synthmed.testing.phantom_folder import write_phantom_folder

    return write_phantom_folder(tmp_path_factory.mktemp("pbc") / "pbc-subset", CLASSES, PER_CLASS)


@pytest.fixture(scope="session")
def phantom_pbc(tmp_path_factory) -> Path:
    """All eight PBC classes (``configs/smoke-sd.yaml``) x 8 phantom JPEGs."""
    from synthmed.testing.phantom_folder import write_phantom_folder

    return write_phantom_folder(tmp_path_factory.mktemp("pbc8") / "pbc-native", per_class=8)


def sd_overrides(base: Path, data_root: Path, **extra: object) -> list[str]:
    """Config overrides for a fast run on the tiny SD at 64 px, 2 shots per class (the multi-process runs' set-up,
    larger and longer)."""
    from synthmed.testing.multiprocess import sd_overrides as tiny

    here = {"seed": 0, "data.size": 64, "generator.stable_diffusion.resolution": 64,
            "generator.stable_diffusion.batch_size": 2, "generator.stable_diffusion.max_steps": 10,
            "generator.stable_diffusion.checkpoint_every": 5, "generation.steps": 4, "generation.batch_size": 4}
    return tiny(base, data_root, **{**here, **extra})


def make_cfg(base: Path, data_root: Path, **extra: object):
    from synthmed.config import load_config

    return load_config(None, sd_overrides(base, data_root, **extra))
