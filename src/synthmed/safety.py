"""Safe loading of weights: safetensors always; pickled checkpoints only with explicit trust."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from synthmed.errors import UserError

TRUST_PICKLE_ENV = "SYNTHMED_TRUST_PICKLE"


def trust_pickle() -> bool:
    """True when the user passed ``--trust-pickle`` (recorded in the environment for subprocesses)."""
    return os.environ.get(TRUST_PICKLE_ENV, "") == "1"


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a state dict from safetensors, or from a pickle file (``weights_only=True``) when trusted."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if path.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{"):
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # noqa: BLE001 - any parse error is bad input
            raise UserError(f"{path}: not a valid safetensors file ({err.__class__.__name__})") from None
    if not trust_pickle():
        raise UserError(f"{path} is a pickled checkpoint; convert it to safetensors or pass --trust-pickle to load it")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise UserError(f"{path}: cannot be loaded with weights_only=True ({err.__class__.__name__})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UserError(f"{path}: does not hold a state dict")
    return obj
