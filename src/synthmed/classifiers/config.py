"""Configuration of classifiers, real/synthetic mixing policies and classical imbalance baselines."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class AugmentConfig(_Strict):
    """Per-sample augmentation of training images only (never val/test), done on in-memory tensors."""

    hflip: bool = True
    vflip: bool = True
    rot90: bool = Field(True, description="random multiples of 90 degrees (square images only)")
    brightness: float = Field(0.1, ge=0.0, le=1.0, description="multiply by 1 + U(-b, b)")
    contrast: float = Field(0.1, ge=0.0, le=1.0, description="scale around the image mean by 1 + U(-c, c)")


class ClipConfig(_Strict):
    """The open_clip classifier: q/v LoRA (image tower, optionally the text tower too) with cosine logits to class
    prompts, or a linear probe."""

    arch: str = Field("ViT-B-16", description="open_clip model name (ViT-B-16 or ViT-B-32)")
    pretrained: str | None = Field(None, description="CLIP weights (safetensors, or a state dict with --trust-pickle)")
    head: Literal["lora", "linear_probe"] = "lora"
    lora_r: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0,
                                description="dropout on the input of the LoRA path (CytoDiff: 0.1)")
    lora_towers: list[Literal["image", "text"]] = Field(
        default_factory=lambda: ["image"], min_length=1,
        description="towers whose attention q/v get LoRA (head=lora); with text, the class-prompt embeddings are "
                    "recomputed by the adapted text tower at every step (CytoDiff: [image, text])")
    prompt: str = Field("a microscopy image of a {}", description="class prompt; {} is the class name")
    model_cfg: dict[str, Any] | None = Field(None, description="custom open_clip model config (tests: tiny towers)")

    @field_validator("lora_towers")
    @classmethod
    def _distinct_towers(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"classifier.clip.lora_towers lists a tower twice: {value}")
        return value

    @model_validator(mode="after")
    def _text_lora_needs_prompts(self) -> ClipConfig:
        if self.head == "linear_probe" and "text" in self.lora_towers:
            raise ValueError("classifier.clip.lora_towers=[..., text] needs head=lora "
                             "(a linear probe uses no text tower)")
        return self


class ClassifierConfig(_Strict):
    """The classifier and its training recipe."""

    model: Literal["cnn", "oct_cnn", "resnet20", "resnet32", "resnet18", "resnet50", "clip"] = Field(
        "resnet18", description="cnn (2 conv layers); oct_cnn (the OCT study's net: 3 convs 16/32/64, FC 128); "
                                "resnet20/resnet32 (CIFAR-style, 16/32/64 channels, option-A shortcuts); "
                                "resnet18/resnet50 (torchvision, see resnet_stem); clip (open_clip ViT)")
    init: Literal["default", "xavier"] = Field(
        "default", description="initialisation of a cnn/resnet trained from scratch: default = torchvision / PyTorch "
                               "(Kaiming), xavier = Xavier-uniform conv and linear weights, zero biases (CytoDiff); "
                               "clip keeps its own")
    resnet_stem: Literal["auto", "small", "strided", "imagenet"] = Field(
        "auto", description="ResNet stem: small (3x3/1), strided (3x3/2, ~4x cheaper), imagenet (7x7/2 + pool); "
                            "auto = small up to 64 px")
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = Field(1e-4, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    warmup_epochs: float = Field(1.0, ge=0.0, description="linear warm-up, then cosine decay to min_lr")
    min_lr: float = Field(0.0, ge=0.0, description="the floor of the cosine decay (CytoDiff: 1e-8)")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    mixup: float = Field(0.0, ge=0.0, description="MixUp Beta(alpha, alpha); 0 = off")
    cutmix: float = Field(0.0, ge=0.0, description="CutMix Beta(alpha, alpha); 0 = off (both on: 50/50 per batch)")
    mix_prob: float = Field(1.0, ge=0.0, le=1.0, description="probability that a batch gets MixUp/CutMix (when "
                                                            "mixup or cutmix is on; CytoDiff: 0.2)")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    patience: int | None = Field(None, ge=1, description="early stopping: epochs without real-val improvement")
    pretrained: str | None = Field(None, description="backbone weights for cnn/resnet (safetensors); none = from scratch")
    precision: Literal["no", "bf16", "fp16"] = Field("no", description="accelerate mixed precision")
    eval_batch_size: int = Field(256, ge=1)
    clip: ClipConfig = Field(default_factory=ClipConfig)

    @model_validator(mode="after")
    def _floor_below_lr(self) -> ClassifierConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"classifier.min_lr={self.min_lr} is above classifier.lr={self.lr}")
        return self


class MixConfig(_Strict):
    """How synthetic images join the real training set (see docs/mixing.md)."""

    policy: Literal[
        "real_only", "add_per_class", "balance_to", "ratio", "batch_ratio",
        "synthetic_only", "weighted_loss", "pretrain_then_finetune", "augment",
    ] = "real_only"
    add_per_class: int = Field(100, ge=0)
    balance_to: int = Field(1000, ge=0)
    ratio: float = Field(0.5, ge=0.0, le=1.0)
    ratio_mode: Literal["add", "replace"] = Field(
        "add", description="ratio: add = real images kept whole, synthetic ones added to make share R; replace = "
                           "round(R n_c) real images of a class replaced by as many synthetic ones (class size fixed)")
    ratio_classes: list[str] | None = Field(
        None, min_length=1, description="ratio: the classes (names) whose training images R applies to; the others "
                                        "train on their real images only; None = every class (OCT study: [CNV])")
    batch_ratio: float = Field(0.5, ge=0.0, le=1.0)
    weight_lambda: float = Field(0.8, ge=0.0, le=1.0, alias="lambda")
    shortage: Literal["error", "take_all"] = Field(
        "error", description="too few kept synthetic images for add_per_class/balance_to/ratio: fail, or use all with a warning"
    )
    pretrain_fraction: float = Field(0.5, gt=0.0, lt=1.0, description="share of classifier.epochs spent on synthetic pre-training")
    synthetic_weight: float = Field(
        1.0, ge=0.0, description="loss weight of a synthetic sample relative to a real one (add_per_class, balance_to, "
                                 "ratio, batch_ratio, augment; weighted_loss uses lambda instead)")
    augment_p: float = Field(
        0.5, ge=0.0, le=1.0, description="augment: probability that a real training image is replaced by one of its "
                                         "synthetic variants (manifest `source`), else by a same-class synthetic image")

    @field_validator("ratio_classes")
    @classmethod
    def _distinct_classes(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"mix.ratio_classes lists a class twice: {value}")
        return value


class ImbalanceConfig(_Strict):
    """Classical answers to class imbalance, the baselines every synthetic policy is compared with."""

    method: Literal[
        "none", "resample", "inverse_freq", "effective_number", "logit_adjustment", "balanced_softmax", "drw",
        "posthoc_la", "crt",
    ] = "none"
    prior: Literal["real", "real_plus_synthetic"] = Field(
        "real", description="class counts of the count-based methods (weights, drw, logit adjustment, balanced "
                            "softmax, posthoc_la): the real training set, or real plus the synthetic images trained on")
    beta: float = Field(0.9999, gt=0, lt=1, description="effective-number beta (Cui et al. 2019; also drw's weights)")
    tau: float = Field(1.0, gt=0, description="logit-adjustment temperature (Menon et al. 2021)")
    drw_start: float = Field(0.8, ge=0.0, lt=1.0, description="drw: share of classifier.epochs trained unweighted "
                                                               "before effective-number re-weighting starts")
    posthoc_taus: list[float] = Field(
        default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0], min_length=1,
        description="posthoc_la: the tau grid; the tau with the best real-val balanced accuracy is used")
    crt_epochs: int = Field(10, ge=1, description="crt: epochs of class-balanced head re-training (backbone frozen)")
    crt_lr: float | None = Field(None, gt=0, description="crt: learning rate of the head (None: classifier.lr)")
    crt_views: int = Field(4, ge=1, description="crt: augmented views per real image whose frozen features are cached")
