"""Pickle-free training checkpoints shared by every generator kind: tensors in safetensors, everything else in JSON.

A checkpoint is a folder ``step-XXXXXXX/`` written under a temp name and renamed when complete, so a folder with
that name is always whole. Optimizer / LR-scheduler / RNG states are flattened: each tensor is replaced by a
``{"__tensor__": key}`` reference into ``state.safetensors``; int dict keys and tuples are kept exact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from synthmed.errors import DataError
from synthmed.io import atomic_write_bytes, atomic_write_text

CKPT_RE = re.compile(r"^step-(\d{7,})$")
TMP_CKPT_PREFIX = ".tmp-step-"


class SimulatedInterrupt(RuntimeError):
    """Raised by ``fit(stop_after=k)`` after step k (tests and benchmarks simulate a crash)."""


def flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """A JSON-able tree for ``obj``; tensors go to ``tensors`` (cloned, contiguous, on CPU)."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}{len(tensors)}"
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__items__": [[flatten(k, tensors), flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [flatten(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def unflatten(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten`."""
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__tuple__" in tree:
            return tuple(unflatten(v, tensors) for v in tree["__tuple__"])
        return {unflatten(k, tensors): unflatten(v, tensors) for k, v in tree["__items__"]}
    if isinstance(tree, list):
        return [unflatten(v, tensors) for v in tree]
    return tree


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(data, metadata={"format": "pt"}))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from synthmed.safety import load_state_dict

    return load_state_dict(path)


def save_state(folder: Path, name: str, state: Any) -> None:
    """Write ``state`` as ``name.safetensors`` + ``name.json``."""
    tensors: dict[str, torch.Tensor] = {}
    tree = flatten(state, tensors)
    save_tensors(folder / f"{name}.safetensors", tensors)
    atomic_write_text(folder / f"{name}.json", json.dumps(tree, allow_nan=True))


def load_state(folder: Path, name: str) -> Any:
    tensors = load_tensors(folder / f"{name}.safetensors")
    try:
        tree = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{folder}: unreadable checkpoint state ({err.__class__.__name__})") from None
    return unflatten(tree, tensors)


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as (step, path), oldest first."""
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = CKPT_RE.match(p.name)
        if m and p.is_dir() and (p / "meta.json").is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def begin_checkpoint(root: Path, step: int) -> Path:
    """A fresh temp folder for the checkpoint of ``step``."""
    tmp = root / f"{TMP_CKPT_PREFIX}{step:07d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit_checkpoint(root: Path, tmp: Path, step: int, meta: dict[str, Any], keep: int) -> Path:
    """Write ``meta.json`` last, rename the temp folder into place, then prune to the newest ``keep``."""
    atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2))
    final = root / f"step-{step:07d}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for _, old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def clean_temp_checkpoints(root: Path) -> None:
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(TMP_CKPT_PREFIX):
                shutil.rmtree(p, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
