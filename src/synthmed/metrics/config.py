"""Configuration of the quality stage (fidelity, diversity, CAS, memorization audit)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class QualityConfig(BaseModel):
    """Which feature backbone and which figures to compute on the synthetic set (see docs/quality.md)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    backbone: Literal["classifier", "inception", "clip", "dinov2"] = "classifier"
    inception_path: str | None = Field(None, description="Inception weights (TorchScript or state dict); default $SYNTHMED_INCEPTION")
    clip_path: str | None = Field(None, description="local open_clip weights (.safetensors) for backbone=clip")
    clip_model: str = Field("ViT-B-32", description="open_clip architecture name of clip_path")
    dinov2_path: str | None = Field(None, description="local Hugging Face folder of a DINOv2 model for backbone=dinov2")
    max_real: int | None = Field(2000, gt=0, description="cap on real images used as the reference set")
    batch_size: int = Field(64, ge=1)
    pr_k: int = Field(5, ge=1, description="k of improved precision/recall and density/coverage")
    kid_subsets: int = Field(100, ge=1, description="KID subsets; subset size = min(1000, n_real, n_fake)")
    cas: bool = Field(True, description="compute the classification accuracy score (trains one more classifier)")
    copy_quantile: float = Field(
        0.01, gt=0.0, lt=1.0,
        description="flag a synthetic image as a copy when its NN distance to the generator's training images is "
        "<= this quantile of the real val->train NN distances",
    )
    copy_threshold_pixel: float | None = Field(
        None, ge=0.0, description="absolute pixel-space copy threshold (RMS in [0,1] units); overrides copy_quantile"
    )
    copy_threshold_feature: float | None = Field(
        None, ge=0.0, description="absolute feature-space copy threshold; overrides copy_quantile"
    )
    copy_space: Literal["pixel", "feature", "either", "both"] = Field(
        "pixel", description="which NN distance(s) must fall under the threshold to flag a copy"
    )
    copy_rule: Literal["quantile", "relative", "either"] = Field(
        "quantile", description="which rule flags copies for the filter and gate: quantile (copy_quantile / absolute "
        "thresholds), relative (Carlini et al. 2023: NN distance / mean of the k nearest <= copy_relative_delta), "
        "either; both are always reported",
    )
    copy_relative_k: int = Field(50, ge=1, description="neighbours of the relative rule's mean distance")
    copy_relative_delta: float = Field(
        1 / 3, gt=0.0, lt=1.0, description="relative rule: a near-copy when NN distance / mean k-NN distance <= this"
    )
    gallery_k: int = Field(8, ge=1, description="images per class in the good/poor galleries")
