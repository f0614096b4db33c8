"""Configuration of the quality gate and filter between generate and train."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class FilterConfig(BaseModel):
    """Which synthetic images are kept (``kept`` column of the manifest)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = Field(True, description="vet the synthetic set before training (strongly recommended)")
    min_confidence: float = Field(0.5, ge=0.0, le=1.0, description="tau: keep if a real-data classifier gives the intended class >= tau")
    drop_near_duplicates: bool = True
    drop_copies: bool = True
