"""Settings of the EDM generator (``generator.edm``); filled in by the EDM implementation."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class EDMConfig(BaseModel):
    """The class-conditional EDM UNet trained from scratch (``generator.kind: edm``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    preset: str = "S"
    class_power: float = Field(1.0, ge=0.0, le=1.0, description="draw class c with p ~ n_c ** gamma (0 = balanced)")
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(64, ge=1)
