"""Shared Stable Diffusion plumbing: loading the base model (offline-safe), devices and precision, prompt checks,
and the image conversions between the dataset's geometry and the SD resolution."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.errors import ConfigError, UserError

BASE_KEY = "generator.stable_diffusion.base"


def derived_seed(*parts: Any) -> int:
    """A 63-bit seed derived from any printable parts (stable across runs and machines)."""
    digest = hashlib.sha256(":".join(str(p) for p in ("synthmed-sd", *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def check_lora_stack() -> None:
    """Refuse, in one line, a transformers whose LoRA integration needs a newer peft than the one installed.

    transformers checks this only when a text-encoder adapter is added or loaded, i.e. minutes into a run."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        from transformers.integrations.peft import MIN_PEFT_VERSION
    except ImportError:  # older transformers: no such constant, no such check
        return
    from packaging.version import Version

    try:
        have = version("peft")
    except PackageNotFoundError:
        raise UserError("peft is not installed; LoRA fine-tuning needs it (pip install peft)") from None
    if Version(have) < Version(MIN_PEFT_VERSION):
        raise UserError(f"transformers {version('transformers')} needs peft >= {MIN_PEFT_VERSION} but peft {have} "
                        f"is installed; upgrade peft or install an older transformers")


# ------------------------------------------------------------------------------------------- device, dtype


def process_state(device: str = "auto") -> Any:
    """accelerate's ``PartialState`` (gloo on CPU, nccl on GPU) when launched with several processes, else None."""
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    return PartialState(cpu=cpu)


def pick_device(name: str = "auto") -> Any:
    """The process's device under ``accelerate launch`` / torchrun; else ``name`` (auto: cuda when available)."""
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but CUDA is not available")
    state = process_state(name)
    if state is not None:
        return state.device
    if name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(mixed_precision: str, device: Any) -> Any:
    """The dtype of frozen weights / autocast: fp32 on CPU; bf16 (or fp16 when unsupported) on CUDA for ``auto``."""
    import torch

    if getattr(device, "type", str(device)) != "cuda" or mixed_precision == "no":
        return torch.float32
    if mixed_precision == "fp16":
        return torch.float16
    if mixed_precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


# ------------------------------------------------------------------------------------------- base model


def _looks_like_hub_id(base: str) -> bool:
    return base.count("/") == 1 and not base.startswith((".", "/", "~")) and "\\" not in base


def load_pipeline(base: str | None, offline: bool, dtype: Any = None, revision: str | None = None,
                  variant: str | None = None) -> Any:
    """``StableDiffusionPipeline`` from a local diffusers folder or a hub id (cache only when offline).

    A missing or unusable base is a one-line ``UserError`` naming it.
    """
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as dlog

    if not base:
        raise ConfigError(f"{BASE_KEY} is not set: give a local diffusers folder or a hub id "
                          "(e.g. `python -m synthmed.testing.sd_tiny runs/tiny-sd` builds a tiny random one)")
    kwargs: dict[str, Any] = dict(dtype=dtype or torch.float32, safety_checker=None,
                                  requires_safety_checker=False, revision=revision, variant=variant)
    path = Path(base).expanduser()
    from transformers.utils import logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise UserError(f"{BASE_KEY}={base} is not a diffusers Stable Diffusion folder (no model_index.json)")
        return _from_pretrained(StableDiffusionPipeline, str(path), base, local_files_only=True, **kwargs)
    if not _looks_like_hub_id(base):
        raise UserError(f"base model not found: {base} (no such folder; {BASE_KEY} must be a diffusers folder "
                        "or a hub id like org/name)")
    try:
        return StableDiffusionPipeline.from_pretrained(base, local_files_only=True, **kwargs)
    except Exception:  # noqa: BLE001 - not in the cache: try the hub unless offline
        if offline:
            raise UserError(f"base model not found: {base} (no such folder and not in the Hugging Face cache; "
                            "offline, so nothing is downloaded)") from None
    return _from_pretrained(StableDiffusionPipeline, base, base, local_files_only=False, **kwargs)


def _from_pretrained(cls: Any, where: str, base: str, **kwargs: Any) -> Any:
    try:
        return cls.from_pretrained(where, **kwargs)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to build the pipeline is a bad base
        msg = str(err).splitlines()[0][:160] if str(err) else ""
        raise UserError(f"cannot load base model {base}: {err.__class__.__name__} {msg}") from None


def check_prompts(tokenizer: Any, prompts: dict[str, str], what: str = "prompt") -> None:
    """A prompt longer than the text encoder's window (77 tokens for CLIP) is an error, never truncated."""
    from transformers.utils import logging as tlog

    limit = int(tokenizer.model_max_length)
    for name, text in prompts.items():
        level = tlog.get_verbosity()
        tlog.set_verbosity_error()  # its "sequence too long" warning: we raise our own one-line error instead
        try:
            n = len(tokenizer(text, truncation=False, add_special_tokens=True).input_ids)
        finally:
            tlog.set_verbosity(level)
        if n > limit:
            raise ConfigError(f"{what} for '{name}' is {n} tokens, more than the text encoder's {limit}: shorten it "
                              f"({text[:40]!r}...)")


def tokenize(tokenizer: Any, prompts: list[str]) -> Any:
    """Token ids padded to the text encoder window, exactly as the diffusers pipelines do."""
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


# ------------------------------------------------------------------------------------------- images


def _pil(arr: np.ndarray) -> Any:
    from PIL import Image

    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return Image.fromarray(arr).convert("RGB")


def to_sd_image(arr: np.ndarray, resolution: int) -> Any:
    """A dataset image (H, W, C uint8) as an RGB PIL image of ``resolution`` px: centre-crop to square, resize."""
    from PIL import Image

    im = _pil(arr)
    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    im = im.crop((left, top, left + s, top + s))
    if s != resolution:
        im = im.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return im


def to_sd_tensor(images: np.ndarray, resolution: int) -> Any:
    """(N, H, W, C) uint8 -> (N, 3, R, R) float32 in [-1, 1]."""
    import torch

    arrs = [np.asarray(to_sd_image(a, resolution), dtype=np.float32) for a in images]
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)
    return x / 127.5 - 1.0


def move(module: Any, device: Any, dtype: Any) -> Any:
    """``module.to(device, dtype)``, skipping the dtype cast (and diffusers' warning about it) when it already fits."""
    current = next(module.parameters()).dtype
    return module.to(device) if current == dtype else module.to(device, dtype=dtype)


def float_to_uint8(images: np.ndarray) -> np.ndarray:
    """Pipeline output (N, H, W, 3) floats in [0, 1] -> uint8, rounded as diffusers' ``numpy_to_pil`` does."""
    return (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)


def to_data_geometry(image: np.ndarray, size: tuple[int, int], channels: int) -> np.ndarray:
    """An SD output (R, R, 3 uint8) brought to the dataset's (H, W, C) as the data policy brings real images.

    Real images end square whenever ``data.size`` is set (centre-crop / resize / pad all give a square), so a
    square SD output is only resized (LANCZOS when shrinking, BICUBIC when enlarging, as ``data.policy.fit_size``);
    for native non-square data the output is centre-cropped to the target aspect first. Grayscale data gets the
    same ITU-R 601 luma as the real images.
    """
    from PIL import Image

    from synthmed.data.policy import to_gray

    h, w = size
    arr = np.asarray(image, dtype=np.uint8)
    side = arr.shape[0]
    if h != w:
        if w > h:
            ch = round(side * h / w)
            arr = arr[(side - ch) // 2:(side - ch) // 2 + ch]
        else:
            cw = round(side * w / h)
            arr = arr[:, (side - cw) // 2:(side - cw) // 2 + cw]
    if arr.shape[:2] != (h, w):
        shrinking = arr.shape[0] > h or arr.shape[1] > w
        im = Image.fromarray(np.ascontiguousarray(arr)).resize(
            (w, h), Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC)
        arr = np.asarray(im, dtype=np.uint8)
    return to_gray(arr) if channels == 1 else np.ascontiguousarray(arr)
