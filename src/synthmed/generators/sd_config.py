"""Configuration of Stable Diffusion fine-tuning (``generator.kind: stable_diffusion``).

Every training knob defaults to ``None`` = "take it from the recipe" (see ``stable_diffusion/recipes.py``); setting a field
overrides the recipe. ``stable_diffusion.recipes.resolve(cfg)`` returns the fully resolved settings.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class StableDiffusionConfig(BaseModel):
    """A diffusers-format SD checkpoint fine-tuned with a named recipe (LoRA per class, joint LoRA, full UNet)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    base: str | None = Field(None, description="local diffusers directory or hub id of the base model (SD 1.5, 2.1, BK-SDM)")
    revision: str | None = Field(None, description="hub revision of the base model")
    variant: str | None = Field(None, description="weights variant of the base model (e.g. fp16)")
    recipe: Literal["cytodiff", "datadream", "datadream_joint", "full_unet"] = "cytodiff"
    prompts: dict[str, str] = Field(default_factory=dict, description="class name -> prompt (default: recipe template)")
    prompt_template: str | None = Field(None, description="prompt for classes not in `prompts`; '{class}' is the name")
    resolution: int | None = Field(None, ge=32, description="training / sampling resolution (None: recipe, 512)")
    # training (None = recipe default)
    rank: int | None = Field(None, ge=1, description="LoRA rank")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha (scale = alpha / rank)")
    unet_targets: list[str] | None = Field(None, description="UNet module names that get LoRA")
    text_encoder_targets: list[str] | None = Field(None, description="text-encoder module names that get LoRA; [] = frozen")
    shots: int | None = Field(None, ge=1, description="at most this many training images per class (seeded pick)")
    lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    lr_scheduler: Literal["cosine", "constant", "linear", "constant_with_warmup"] | None = None
    warmup_steps: int | None = Field(None, ge=0)
    batch_size: int | None = Field(None, ge=1)
    epochs: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1, description="optimisation steps per adapter (overrides epochs)")
    grad_clip: float | None = Field(None, gt=0)
    snr_gamma: float | None = Field(None, ge=0, description="min-SNR-gamma loss weighting (0: plain MSE; None: recipe, "
                                                            "plain MSE in every recipe)")
    noise_offset: float = Field(0.0, ge=0)
    hflip: bool = True
    vflip: bool = False
    guidance: float | None = Field(None, ge=0, description="default guidance scale at generation (recipe)")
    # speed
    cache_latents: bool = Field(True, description="encode the training images with the VAE once")
    cache_text: bool = Field(True, description="encode the prompts once when the text encoder is frozen")
    gradient_checkpointing: bool = False
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    parallel: Literal["auto", "data", "adapters"] = Field(
        "auto", description="several processes: per-class adapters round-robin or every adapter data parallel; "
                            "docs/multi-gpu.md")
    use_8bit_adam: bool = Field(True, description="bitsandbytes AdamW8bit on CUDA when installed")
    checkpoint_every: int = Field(200, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    seed: int | None = Field(None, description="training seed (None = the global seed)")
