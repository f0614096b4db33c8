"""Named fine-tuning recipes for Stable Diffusion and their resolution against the user's overrides.

* ``cytodiff``: one LoRA per class (rank 16, alpha 16) on the UNet attention and the text encoder, 16 shots,
  lr 1e-4, AdamW wd 1e-2, cosine + 100 warm-up steps, batch 8, 300 epochs, 512 px, clip 1.0, plain MSE loss;
  guidance 2.0 (CytoDiff, Boada et al. 2025; docs/recipes.md).
* ``datadream``: the same per-class LoRA set-up with the template "a photo of a {class}" (200 epochs).
* ``datadream_joint``: one LoRA for all classes; the class is named in the prompt.
* ``full_unet``: the whole UNet fine-tuned, VAE and text encoder frozen, all training images, lr 1e-4, batch 8,
  30 epochs, 512 px, guidance 7.5 (the OCT synthetic-ratio study's README; docs/recipes.md), one prompt per class.

The published recipes train with the plain noise-prediction MSE, so min-SNR weighting is off by default
(``snr_gamma: 5`` turns it on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from synthmed.errors import ConfigError
from synthmed.generators.sd_config import StableDiffusionConfig

UNET_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj"]
TEXT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]

_COMMON: dict[str, Any] = dict(
    resolution=512, rank=16, alpha=16.0, unet_targets=UNET_LORA_TARGETS, text_encoder_targets=TEXT_LORA_TARGETS,
    shots=16, lr=1e-4, weight_decay=1e-2, lr_scheduler="cosine", warmup_steps=100, batch_size=8, epochs=300,
    grad_clip=1.0, snr_gamma=None, guidance=2.0,
)

RECIPES: dict[str, dict[str, Any]] = {
    "cytodiff": dict(_COMMON, per_class=True, lora=True, prompt_template="a microscopy image of a {class}"),
    "datadream": dict(_COMMON, per_class=True, lora=True, epochs=200, prompt_template="a photo of a {class}"),
    "datadream_joint": dict(_COMMON, per_class=False, lora=True, epochs=200, prompt_template="a photo of a {class}"),
    "full_unet": dict(
        _COMMON, per_class=False, lora=False, text_encoder_targets=[], shots=None, epochs=30, weight_decay=1e-2,
        guidance=7.5, prompt_template="a medical image of a {class}",
    ),
}


@dataclass
class SDSettings:
    """The resolved fine-tuning settings (recipe defaults with the user's overrides applied)."""

    recipe: str
    per_class: bool
    lora: bool
    resolution: int
    rank: int
    alpha: float
    unet_targets: list[str]
    text_encoder_targets: list[str]
    shots: int | None
    lr: float
    weight_decay: float
    lr_scheduler: str
    warmup_steps: int
    batch_size: int
    epochs: int
    max_steps: int | None
    grad_clip: float | None
    snr_gamma: float | None
    noise_offset: float
    hflip: bool
    vflip: bool
    guidance: float
    prompt_template: str
    prompts: dict[str, str] = field(default_factory=dict)

    @property
    def train_text_encoder(self) -> bool:
        return self.lora and bool(self.text_encoder_targets)

    def steps_for(self, n_images: int) -> int:
        """Optimisation steps for an adapter trained on ``n_images`` images."""
        if self.max_steps is not None:
            return self.max_steps
        return max(1, self.epochs * math.ceil(max(n_images, 1) / self.batch_size))

    def prompt(self, class_name: str, display_names: Any = None) -> str:
        """The class's prompt: an explicit one, else the template with the class's display name (``data/names.py``:
        "ig" -> "immature granulocyte") and the right article ("a {class}" -> "an immature granulocyte")."""
        from synthmed.data.names import display_name, with_article

        if class_name in self.prompts:
            return self.prompts[class_name]
        shown = display_name(class_name, display_names)
        template = self.prompt_template
        for art in ("a {class}", "an {class}"):
            if art in template:
                return template.replace(art, with_article(shown))
        return template.replace("{class}", shown)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def resolve(sd: StableDiffusionConfig, classes: list[str] | None = None) -> SDSettings:
    """Recipe defaults overridden by every non-None field of ``sd``; checks prompts name known classes."""
    base = dict(RECIPES[sd.recipe])
    for key in list(base):
        value = getattr(sd, key, None)
        if value is not None:
            base[key] = value
    base["noise_offset"] = sd.noise_offset
    base["hflip"], base["vflip"] = sd.hflip, sd.vflip
    base["max_steps"] = sd.max_steps
    base["prompts"] = dict(sd.prompts)
    if base["snr_gamma"] == 0:
        base["snr_gamma"] = None
    if not base["per_class"] and "{class}" not in base["prompt_template"]:
        missing = [c for c in (classes or []) if c not in base["prompts"]]
        if missing:
            raise ConfigError(
                f"generator.stable_diffusion.prompt_template '{base['prompt_template']}' must contain '{{class}}' for "
                f"recipe {sd.recipe} (one model for all classes), or give prompts for: {', '.join(missing[:3])}"
            )
    if classes is not None:
        unknown = sorted(set(base["prompts"]) - set(classes))
        if unknown:
            raise ConfigError(f"generator.stable_diffusion.prompts names unknown class '{unknown[0]}' (classes: "
                              f"{', '.join(classes)})")
    if base["resolution"] % 8:
        raise ConfigError(f"generator.stable_diffusion.resolution={base['resolution']} must be a multiple of 8")
    return SDSettings(recipe=sd.recipe, **base)
