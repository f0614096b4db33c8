"""Pickle-free checkpoints of one Stable Diffusion adapter: ``work_dir/checkpoints/step-NNNNNN/`` holds
``trainable.safetensors`` (the trained parameters) and ``state.safetensors`` + ``state.json`` (optimizer, LR scheduler,
RNG and grad-scaler state, flattened by ``generators/checkpoints.py``). A folder is written under a temp name and
renamed when whole.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from synthmed.generators.checkpoints import load_state, save_state, save_tensors
from synthmed.safety import load_state_dict


def trainable_state(unet: Any, te: Any) -> dict[str, Any]:
    """The parameters being trained (LoRA layers or the whole UNet), fp32 on CPU, prefixed by their model."""
    out = {}
    for prefix, m in (("unet.", unet), ("text_encoder.", te)):
        for n, p in m.named_parameters():
            if p.requires_grad:
                out[prefix + n] = p.detach().float().cpu().contiguous()
    return out


def checkpoints(work_dir: Path) -> list[Path]:
    """Complete checkpoints of an adapter, oldest first."""
    root = work_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if p.is_dir() and (p / "state.json").is_file())


def save_checkpoint(work_dir: Path, step: int, unet: Any, te: Any, opt: Any, sched: Any, scaler: Any,
                    keep: int) -> Path:
    """Write ``checkpoints/step-NNNNNN/`` atomically (temp folder + rename) and prune old ones."""
    import torch

    root = work_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-" + final.name + ".", dir=root))
    try:
        save_tensors(tmp / "trainable.safetensors", trainable_state(unet, te))
        state = {"step": step, "optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict(),
                 "torch_rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                 "scaler": scaler.state_dict() if scaler is not None else {}}
        save_state(tmp, "state", state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in checkpoints(work_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(ckpt: Path, unet: Any, te: Any, opt: Any, sched: Any, scaler: Any) -> int:
    """Restore the trained parameters, optimizer, scheduler, RNG and scaler; returns the step."""
    import torch

    weights = load_state_dict(ckpt / "trainable.safetensors")
    params = {("unet." + n): p for n, p in unet.named_parameters() if p.requires_grad}
    params.update({("text_encoder." + n): p for n, p in te.named_parameters() if p.requires_grad})
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name].to(p.device, p.dtype))
    state = load_state(ckpt, "state")
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["lr_scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return int(state["step"])
