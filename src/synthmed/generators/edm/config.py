"""Settings of the EDM generator (``generator.edm``): Karras et al. 2022 preconditioning, log-normal noise levels,
its loss weighting; the same UNet presets, EMA and augmentation switches as ``generator.ddpm``."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: the UNet presets shared by the ddpm and edm kinds (``generators/ddpm/model.py: PRESETS``), or ``custom``
UNetPreset = Literal["XS", "XS-deep", "S", "M", "L", "custom"]

#: UNet and training fields added after checkpoints and run directories existed: hashes of a config (checkpoint
#: fingerprints, the pipeline's finetune key) leave them out while unset (None), so those still resume and stay cached
LATER_UNET_FIELDS = ("patch_size", "self_condition", "average_checkpoints", "input_perturbation",
                     "time_scale_shift", "timestep_importance")


def without_unset_later_fields(settings: dict) -> dict:
    """A generator kind's dumped settings without the :data:`LATER_UNET_FIELDS` that are unset (None or False)."""
    return {k: v for k, v in settings.items() if not (k in LATER_UNET_FIELDS and (v is None or v is False))}


class TrainingSection(BaseModel):
    """What the ddpm and edm sections share: strict keys, YAML's bare ``no``, the ``average_checkpoints`` checks
    (``section``: the section's config key, for messages)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)
    section: ClassVar[str] = "generator"

    @field_validator("mixed_precision", mode="before", check_fields=False)
    @classmethod
    def _yaml_no(cls, value: object) -> object:
        """YAML reads a bare ``no`` as false: accept it as "no"."""
        return "no" if value is False else value

    @field_validator("average_checkpoints", check_fields=False)
    @classmethod
    def _one_is_none(cls, value: int | None) -> int | None:
        """1 checkpoint is the final EMA itself: spelled None, so that configs and cache keys of old runs agree."""
        return None if value == 1 else value

    @model_validator(mode="after")
    def _enough_checkpoints(self) -> TrainingSection:
        """Refuse ``average_checkpoints`` larger than the number of checkpoints the schedule writes."""
        k, steps, every = self.average_checkpoints, self.steps, self.checkpoint_every  # fields of the subclasses
        written = -(-steps // every)  # every checkpoint_every steps, and always at the end
        if k is not None and k > written:
            raise ValueError(f"{self.section}.average_checkpoints={k}, but steps={steps} with checkpoint_every={every} "
                             f"writes {written} checkpoint(s): lower checkpoint_every or average_checkpoints")
        return self


class EDMConfig(TrainingSection):
    """The class-conditional EDM UNet trained from scratch (``generator.kind: edm``)."""

    section: ClassVar[str] = "generator.edm"

    preset: UNetPreset = "S"
    block_out_channels: list[int] | None = Field(None, description="custom channels per level (preset: custom)")
    layers_per_block: int = Field(2, ge=1)
    attention_levels: list[int] | None = Field(None, description="levels (0 = highest resolution) with attention")
    resolution: int | None = Field(None, description="training resolution; None = data size rounded up to a multiple of 8")
    patch_size: Literal[1, 2, 4] | None = Field(None, description="fold p x p pixel patches into channels before "
                                                "the UNet (pixel-unshuffle): it runs at resolution / p; None = preset's")
    sigma_data: float = Field(0.5, gt=0, description="std of the data in [-1, 1] (EDM: 0.5)")
    p_mean: float = Field(-1.2, description="mean of ln(sigma) when drawing training noise levels")
    p_std: float = Field(1.2, gt=0, description="std of ln(sigma) when drawing training noise levels")
    sigma_min: float = Field(0.002, gt=0, description="smallest sampling noise level")
    sigma_max: float = Field(80.0, gt=0, description="largest sampling noise level")
    rho: float = Field(7.0, gt=0, description="Karras schedule exponent")
    label_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="classifier-free guidance label dropout")
    class_power: float = Field(1.0, ge=0.0, le=1.0, description="draw class c with p ~ n_c ** gamma (1 = uniform over "
                                                              "images, 0 = class-balanced)")
    steps: int = Field(2000, ge=1, description="optimisation steps")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    ema_decay: float = Field(0.999, gt=0, lt=1, description="max EMA decay (warm-up aware, diffusers EMAModel)")
    ema_power: float = Field(0.75, gt=0, description="EMA warm-up power: decay = 1 - (1 + step) ** -power")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    hflip: bool = False
    vflip: bool = False
    rot90: bool = False
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    average_checkpoints: int | None = Field(
        None, ge=1, description="final weights = the mean of the EMA weights of the last K checkpoints (the last = "
                                "the end of the schedule; keeps at least K): a longer average over the end of "
                                "training, e.g. K = 4 with checkpoint_every = steps / 10 (BENCHMARKS.md, issue 18); "
                                "None or 1 = the final EMA weights")
