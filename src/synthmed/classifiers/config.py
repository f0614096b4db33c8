"""Configuration of classifiers, real/synthetic mixing policies and classical imbalance baselines."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class ClassifierConfig(_Strict):
    """The classifier and its training recipe."""

    model: Literal["cnn", "resnet18", "resnet50", "clip"] = "resnet18"
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)


class MixConfig(_Strict):
    """How synthetic images join the real training set (see docs/mixing.md)."""

    policy: Literal[
        "real_only", "add_per_class", "balance_to", "ratio", "batch_ratio",
        "synthetic_only", "weighted_loss", "pretrain_then_finetune",
    ] = "real_only"
    add_per_class: int = Field(100, ge=0)
    balance_to: int = Field(1000, ge=0)
    ratio: float = Field(0.5, ge=0.0, le=1.0)
    batch_ratio: float = Field(0.5, ge=0.0, le=1.0)
    weight_lambda: float = Field(0.8, ge=0.0, le=1.0, alias="lambda")


class ImbalanceConfig(_Strict):
    """Classical answers to class imbalance, the baselines every synthetic policy is compared with."""

    method: Literal["none", "resample", "inverse_freq", "effective_number", "logit_adjustment"] = "none"
    beta: float = Field(0.9999, gt=0, lt=1, description="effective-number beta (Cui et al. 2019)")
    tau: float = Field(1.0, gt=0, description="logit-adjustment temperature (Menon et al. 2021)")
