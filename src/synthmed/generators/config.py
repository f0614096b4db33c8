"""Configuration of the generators (training) and of generation (sampling)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from synthmed.generators.edm.config import EDMConfig, TrainingSection, UNetPreset
from synthmed.generators.sd_config import StableDiffusionConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class DDPMConfig(TrainingSection):
    """The class-conditional UNet trained from scratch (``generator.kind: ddpm``)."""

    section: ClassVar[str] = "generator.ddpm"

    preset: UNetPreset = "S"
    block_out_channels: list[int] | None = Field(None, description="custom channels per level (preset: custom)")
    layers_per_block: int = Field(2, ge=1)
    attention_levels: list[int] | None = Field(None, description="levels (0 = highest resolution) with attention")
    resolution: int | None = Field(None, description="training resolution; None = data size rounded up to a multiple of 8")
    patch_size: Literal[1, 2, 4] | None = Field(None, description="fold p x p pixel patches into channels before "
                                                "the UNet (pixel-unshuffle): it runs at resolution / p; None = preset's")
    self_condition: bool | None = Field(None, description="self-conditioning (Chen et al., ICLR 2023): on half the "
                                        "training rows a first no-grad pass's x0 estimate is fed back as extra input "
                                        "channels, and sampling feeds each step's estimate to the next; None = off")
    time_scale_shift: bool | None = Field(None, description="adaptive group norm (AdaGN, Dhariwal & Nichol 2021): the "
                                          "time + class embedding scales and shifts the output of each ResNet "
                                          "block's second norm (diffusers' resnet_time_scale_shift='scale_shift') "
                                          "instead of being added before it; None = added")
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    beta_schedule: Literal["linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    num_train_timesteps: int = Field(1000, ge=10)
    snr_gamma: float | None = Field(5.0, gt=0, description="min-SNR-gamma loss weighting; None = plain MSE")
    label_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="classifier-free guidance label dropout")
    input_perturbation: float | None = Field(None, gt=0, lt=1, description="input perturbation gamma (Ning et al., "
                                             "ICML 2023; diffusers' --input_perturbation): the noisy input is made "
                                             "with noise + gamma * xi, the target with the noise alone; None = off")
    timestep_importance: float | None = Field(
        None, gt=0, le=1, description="importance-sampled noise levels: draw t with p(t) = (1 - a) / T + a w(t) / sum w "
                                      "(w = the min-SNR loss weight) and weight each row's loss by (1 / T) / p(t): the "
                                      "same objective with lower-variance gradients; needs snr_gamma; None = uniform")
    class_power: float = Field(1.0, ge=0.0, le=1.0, description="draw class c with p ~ n_c ** gamma (1 = uniform over "
                                                              "images, 0 = class-balanced)")
    cbdm_tau: float = Field(0.0, ge=0, description="CBDM regulariser weight tau (Qin et al. 2023): pull the prediction "
                            "under the true label towards the one under a class drawn uniformly, weighted t/T * tau; "
                            "0 = off (an extra forward and backward per step when on)")
    cbdm_gamma: float = Field(0.25, ge=0, description="weight of CBDM's commitment term (relative to tau)")
    steps: int = Field(2000, ge=1, description="optimisation steps")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-4, gt=0)
    optimizer: Literal["adamw", "muon"] = Field("adamw", description="muon = Muon on the hidden weight matrices "
                                                "(conv filters flattened), AdamW on the rest, one learning rate")
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    ema_decay: float = Field(0.9999, gt=0, lt=1, description="max EMA decay (warm-up aware, diffusers EMAModel)")
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
    tensorboard: bool = Field(False, description="old spelling of the top-level tracking: tensorboard")

    @model_validator(mode="after")
    def _importance_needs_weights(self) -> DDPMConfig:
        if self.timestep_importance is not None and self.snr_gamma is None:
            raise ValueError("generator.ddpm.timestep_importance samples noise levels by the min-SNR loss weight: "
                             "set generator.ddpm.snr_gamma (e.g. 5) or leave timestep_importance unset")
        return self


class GeneratorConfig(_Strict):
    """Which generator to fit and its settings."""

    kind: Literal["ddpm", "edm", "stable_diffusion"] = "ddpm"
    ddpm: DDPMConfig = Field(default_factory=DDPMConfig)
    edm: EDMConfig = Field(default_factory=EDMConfig)
    stable_diffusion: StableDiffusionConfig = Field(default_factory=StableDiffusionConfig)


class GenerationConfig(_Strict):
    """How many synthetic images to sample per class, and how."""

    n_per_class: int | None = Field(100, ge=0, description="images per class (ignored when balance_to is set)")
    balance_to: int | None = Field(None, gt=0, description="generate enough to bring every training class to N")
    sampler: Literal["default", "dpmpp", "dpmpp_sde", "ddim", "ddpm", "euler", "heun"] = Field(
        "dpmpp", description="dpmpp / dpmpp_sde (stochastic DPM-Solver++) / ddim / ddpm (ddpm and stable_diffusion "
                             "kinds); dpmpp / euler / heun on Karras sigmas (edm kind, where ddim and ddpm mean "
                             "euler); default = the base model's own scheduler: Stable Diffusion's as loaded with the "
                             "pipeline (e.g. PNDM for SD 1.x / 2.x), the saved training scheduler of ddpm (= ddpm) and "
                             "edm (= euler)")
    steps: int | None = Field(None, ge=1, description="sampling steps (None: dpmpp 20 (SD 25), dpmpp_sde 30 (SD 25), "
                                                      "ddim 50, ddpm 1000, default: the sampler it names; SD 50)")
    guidance: float | None = Field(None, ge=0, description="classifier-free guidance scale (None: recipe default)")
    batch_size: int = Field(64, ge=1)
    seed: int | None = Field(None, description="generation seed (None = the global seed)")
    strength: float | None = Field(None, gt=0, le=1, description="real-image guidance: a real training image noised to "
                                   "this fraction of the schedule, then denoised under the label (SDEdit / SD img2img); "
                                   "None = from noise")
    guide: Literal["none", "same_class", "head_to_tail"] | None = Field(
        None, description="source of real-image guidance: same_class (an image of the label's class), head_to_tail "
                          "(an image of a more frequent class translated under the rarer label); None = same_class "
                          "when strength is set, else none")
    negative_prompt: str | None = None
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32", description="sampling arithmetic of the ddpm / edm kinds: fp32; bf16 autocast (1.6x faster sampling on "
                            "a CPU with AVX512-BF16 / AMX, the same FID, BENCHMARKS.md; ~10x slower on AVX2-only "
                            "CPUs); auto = bf16 where native (such a CPU, or CUDA), else fp32. The manifest's "
                            "precision column records bf16")
