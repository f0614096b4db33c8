"""Pickle-free training checkpoints shared by every generator kind: tensors in safetensors, everything else in JSON.

A checkpoint is a folder ``step-XXXXXXX/`` written under a temp name and renamed when complete, so a folder with
that name is always whole. Optimizer / LR-scheduler / RNG states are flattened: each tensor is replaced by a
``{"__tensor__": key}`` reference into ``state.safetensors``; int dict keys and tuples are kept exact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from synthmed.errors import DataError, UserError
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


def mean_ema(folders: list[Path]) -> dict[str, torch.Tensor]:
    """The mean of the EMA weights (``ema.safetensors``) of ``folders``, in fp32: summed in the order given, each
    term divided first (one folder = its weights as they are)."""
    out: dict[str, torch.Tensor] = {}
    for folder in folders:
        for name, value in load_tensors(folder / "ema.safetensors").items():
            term = value.float() / len(folders)
            out[name] = out[name] + term if name in out else term
    return out


def checkpoint_steps(steps: int, every: int) -> list[int]:
    """The steps a schedule of ``steps`` writes checkpoints at: every ``every`` steps, and always at the end."""
    return sorted(set(range(every, steps + 1, every)) | {steps})


def _fingerprint_of(folder: Path) -> str | None:
    try:
        return json.loads((folder / "meta.json").read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def check_average_window(root: Path, wanted: list[int], upto: int, fingerprint: str, field: str) -> list[Path]:
    """The checkpoint folders of the steps in ``wanted`` that are <= ``upto``, all present under ``root`` with
    ``fingerprint`` (a resumed run checks before training on; ``field`` names the setting in the error)."""
    found = dict(list_checkpoints(root))
    need = [s for s in wanted if s <= upto]
    if any(s not in found or _fingerprint_of(found[s]) != fingerprint for s in need):
        raise UserError(f"{field}={len(wanted)} averages the checkpoints of steps {wanted}, but {root} holds steps "
                        f"{sorted(found)} (an earlier run kept fewer, used another checkpoint_every, or they come "
                        f"from another config): delete {root} to retrain, or lower {field}")
    return [found[s] for s in need]


def weights_fingerprint(fingerprint: str, average_checkpoints: int | None) -> str:
    """A finished generator's fingerprint: the checkpoints' (the training trajectory), changed when the final weights
    are an average of checkpoints, so that changing the average refits the weights without retraining."""
    if not average_checkpoints:  # None (the config spells 1 as None)
        return fingerprint
    return hashlib.sha256(f"{fingerprint}|average_checkpoints={average_checkpoints}".encode()).hexdigest()


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
