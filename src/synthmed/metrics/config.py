"""Configuration of the quality stage (fidelity, diversity, CAS, memorization audit)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class QualityConfig(BaseModel):
    """Which feature backbone and which figures to compute on the synthetic set."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    backbone: Literal["classifier", "inception", "clip", "dinov2"] = "classifier"
    inception_path: str | None = Field(None, description="Inception weights (TorchScript or state dict); default $SYNTHMED_INCEPTION")
    max_real: int | None = Field(2000, gt=0, description="cap on real images used as the reference set")
    batch_size: int = Field(64, ge=1)
    pr_k: int = Field(5, ge=1, description="k of improved precision/recall and density/coverage")
