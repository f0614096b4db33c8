"""Configuration of the quality gate and filter between generate and train."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class FilterConfig(BaseModel):
    """Which synthetic images are kept (``kept`` column of the manifest) and when a set fails the gate."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = Field(True, description="vet the synthetic set before training (strongly recommended)")
    min_confidence: float = Field(0.5, ge=0.0, le=1.0, description="tau: keep if a real-data classifier gives the intended class >= tau")
    per_class_confidence: Literal["off", "real_val"] = Field(
        "real_val", description="real_val (default: it won in every long-tail measurement, BENCHMARKS.md): class c's "
                                "threshold is min(tau, the real_val_quantile of the vetting "
                           "classifier's confidence on real val images of c), so a class the classifier finds hard "
                           "even on real images is not starved")
    real_val_quantile: float = Field(0.1, ge=0.0, le=1.0, description="quantile for per_class_confidence=real_val")
    balanced_vetting: bool = Field(
        True, description="train the vetting classifier with class-balanced resampling when imbalance.method is none "
                          "(a plain classifier on long-tailed data rejects the tail-class images that matter most)")
    vetting_imbalance: Literal["auto", "none", "resample", "logit_adjustment", "balanced_softmax"] = Field(
        "auto", description="long-tail method of the vetting classifier; auto = resample when balanced_vetting and "
                            "imbalance.method is none, else imbalance.method")
    prototype: Literal["off", "real_val"] = Field(
        "off", description="real_val: also drop an image whose vetting-classifier features lie farther from its "
                           "class's real-train centroid than the prototype_quantile of real val images of that class")
    prototype_quantile: float = Field(0.95, gt=0.0, le=1.0, description="quantile for prototype=real_val")
    drop_near_duplicates: bool = True
    drop_copies: bool = True
    near_duplicate_space: Literal["pixel", "feature"] = "pixel"
    near_duplicate_threshold: float | None = Field(
        None, ge=0.0, description="distance under which two synthetic images of a class are duplicates; None = the copy threshold"
    )
    gate_max_fid_ratio: float | None = Field(
        4.0, gt=0.0, description="fail when FID(synthetic, real train) > this x FID(real val, real train)"
    )
    gate_min_precision_ratio: float | None = Field(
        0.5, ge=0.0, description="fail when precision(synthetic) < this x precision(real val) (same backbone)"
    )
    gate_min_kept_fraction: float | None = Field(0.5, ge=0.0, le=1.0, description="fail when the filter keeps less than this")
    gate_max_copy_fraction: float | None = Field(0.05, ge=0.0, le=1.0, description="fail when more are flagged as copies")

    @field_validator("per_class_confidence", "prototype", mode="before")
    @classmethod
    def _off_is_not_false(cls, value: object) -> object:
        """YAML 1.1 reads a bare ``off`` (in a file or ``--set a.b=off``) as False: it means the value "off"."""
        return "off" if value is False else value
