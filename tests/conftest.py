"""Shared fixtures: the optional ``../shared`` folder and a small phantom dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: ``../shared`` next to the repository; ``SYNTHMED_SHARED_DIR=/nonexistent`` simulates a fresh clone without it
SHARED_DIR = Path(os.environ.get("SYNTHMED_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread for the whole suite: tiny models gain nothing from more, and on a shared 2-core CPU
    two OpenMP threads per process were 10-50x slower (oversubscription). Restored afterwards."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def shared_dir() -> Path:
    """``../shared`` relative to the repository root; skips when it is absent (a fresh clone has none)."""
    if not (SHARED_DIR / "data").is_dir():
        pytest.skip(f"shared data not available at {SHARED_DIR} (only on developer/CI machines)")
    return SHARED_DIR


@pytest.fixture
def phantom_config():
    """A small ``phantom:blood`` DataConfig: 4 classes x 20 images at 32 px (14 / 3 / 3 per class after splitting)."""
    from synthmed.data.config import DataConfig

    return DataConfig(source="phantom:blood", phantom={"n_classes": 4, "n_per_class": 20, "size": 32})


@pytest.fixture
def phantom_data(phantom_config):
    """A small real-looking ``RealData`` (4 classes, 32x32 RGB), built in milliseconds without any download."""
    from synthmed.data.load import load_data

    return load_data(phantom_config, echo_warnings=False)
