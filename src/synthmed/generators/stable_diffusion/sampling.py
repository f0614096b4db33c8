"""Sampling plumbing of the fine-tuned Stable Diffusion: schedulers, loading a LoRA or a fully fine-tuned UNet into a
pipeline (a mismatch with the base model is a one-line ``UserError``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthmed.errors import DataError, UserError


_BASE_SCHEDULER = "_synthmed_base_scheduler"


def set_sampler(pipe: Any, sampler: str) -> None:
    """default -> the scheduler the pipeline was loaded with (the base model's own, untouched); dpmpp ->
    DPM-Solver++ (multistep), dpmpp_sde -> its stochastic variant, ddim -> DDIM, ddpm -> DDPM, each configured from
    that base scheduler.

    The base scheduler is remembered on the pipeline at the first call, so switching back to ``default`` after
    another sampler restores it."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    base = getattr(pipe, _BASE_SCHEDULER, None)
    if base is None:
        base = pipe.scheduler
        setattr(pipe, _BASE_SCHEDULER, base)
    if sampler == "default":
        pipe.scheduler = base
        return
    choices = {  # the SDE variant draws its per-step noise from the pipeline's per-image generators
        "dpmpp": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
        "dpmpp_sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}),
        "ddim": (DDIMScheduler, {}), "ddpm": (DDPMScheduler, {})}
    if sampler not in choices:
        raise UserError(f"generation.sampler={sampler} is not a Stable Diffusion sampler "
                        f"(choose from default, {', '.join(choices)})")
    cls, kwargs = choices[sampler]
    pipe.scheduler = cls.from_config(base.config, **kwargs)


def load_adapter(pipe: Any, folder: Path, name: str, base: str, trained_on: str | None) -> None:
    """Load a LoRA folder into ``pipe``; a LoRA made for another base model is a one-line ``UserError``."""
    if not (folder / "pytorch_lora_weights.safetensors").is_file():
        raise DataError(f"LoRA weights missing: {folder}/pytorch_lora_weights.safetensors (rerun `synthmed finetune`)")
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    level, dlevel = tlog.get_verbosity(), dlog.get_verbosity()
    tlog.set_verbosity_error()  # transformers reports the (untouched) base weights as "missing" from a LoRA file
    dlog.set_verbosity(dlog.CRITICAL)  # diffusers logs a multi-line error on a mismatch; we raise one line instead
    try:
        pipe.load_lora_weights(str(folder), adapter_name=name)
    except Exception as err:  # noqa: BLE001 - shape / key mismatch
        hint = f" (trained on {trained_on})" if trained_on and trained_on != base else ""
        raise UserError(f"LoRA {folder} does not fit base model {base}{hint}: made for another base model? "
                        f"({err.__class__.__name__})") from None
    finally:
        tlog.set_verbosity(level)
        dlog.set_verbosity(dlevel)


def load_full_unet(pipe: Any, folder: Path, base: str, dtype: Any) -> None:
    from diffusers import UNet2DConditionModel

    try:
        unet = UNet2DConditionModel.from_pretrained(str(folder), dtype=dtype)
    except Exception as err:  # noqa: BLE001
        raise DataError(f"fine-tuned UNet {folder} unreadable ({err.__class__.__name__}); rerun `synthmed finetune`") from None
    te_dim = pipe.text_encoder.config.hidden_size
    if unet.config.cross_attention_dim != te_dim or unet.config.in_channels != pipe.vae.config.latent_channels:
        raise UserError(f"fine-tuned UNet {folder} does not fit base model {base} (cross-attention "
                        f"{unet.config.cross_attention_dim} vs text encoder {te_dim}): made for another base model?")
    pipe.unet = unet
