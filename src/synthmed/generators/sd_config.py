"""Configuration of Stable Diffusion fine-tuning (``generator.kind: stable_diffusion``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class StableDiffusionConfig(BaseModel):
    """A diffusers-format SD checkpoint fine-tuned with a named recipe (LoRA per class, joint LoRA, full UNet)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    base: str | None = Field(None, description="local diffusers directory or hub id of the base model")
    recipe: Literal["cytodiff", "datadream", "datadream_joint", "full_unet"] = "cytodiff"
    prompts: dict[str, str] = Field(default_factory=dict, description="class name -> prompt (default: recipe template)")
    resolution: int = Field(512, ge=32)
