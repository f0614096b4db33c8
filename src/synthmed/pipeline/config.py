"""Configuration of ``synthmed run`` (policies x seeds) and ``synthmed sweep`` (a grid over config keys)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class RunConfig(BaseModel):
    """What ``synthmed run`` trains: every named policy for every seed."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    seeds: list[int] = Field(default_factory=lambda: [0])
    policies: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"real_only": {"mix.policy": "real_only"}},
        description="policy name -> dotted overrides of mix/imbalance/classifier (e.g. {'mix.policy': 'ratio'})",
    )
    keep_stale: bool = Field(
        False, description="keep outputs invalidated by a changed setting under RUN_DIR/.stale/ instead of deleting them"
    )


class SweepConfig(BaseModel):
    """A grid over any config keys; the generator and synthetic set are shared by all grid points."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted key -> values")
    policies: list[str] | None = Field(
        None, description="names from run.policies trained at every grid point (None = all of run.policies)"
    )
