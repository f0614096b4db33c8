"""Hugging Face style model cards (YAML front matter + usage) of a fine-tuned Stable Diffusion generator."""

from __future__ import annotations

from typing import Any

from synthmed.generators.stable_diffusion.recipes import SDSettings


def model_card(sd: Any, st: SDSettings, source: str, classes: list[str], counts: list[int],
               summaries: dict[str, Any], adapter: str | None, prompts: dict[str, str]) -> str:
    """A model card for the whole generator or one adapter (``counts``: training images per class)."""
    what = "LoRA" if st.lora else "full UNet fine-tune"
    title = f"{what} '{adapter}'" if adapter else f"synthmed Stable Diffusion {what} ({st.recipe})"
    lines = [
        "---", f"base_model: {sd.base}", "library_name: diffusers",
        "tags: [stable-diffusion, lora, synthmed, text-to-image]" if st.lora else "tags: [stable-diffusion, synthmed]",
        "---", "", f"# {title}", "",
        f"Fine-tuned with synthmed recipe `{st.recipe}` from base model `{sd.base}` at {st.resolution} px.", "",
        "## Data", "", f"- source: `{source}`",
        f"- training images: {sum(counts)} ({', '.join(f'{c}: {n}' for c, n in zip(classes, counts))})",
        "- the exact images: `training_images.csv` (id, label, pixel hash) in the generator folder", "",
        "## Training", "",
    ]
    for name, s in summaries.items():
        lines.append(f"- `{name}`: {s['steps']} steps on {s['images']} images, eval loss "
                     f"{s['loss_start']:.4f} -> {s['loss_end']:.4f}")
    if st.lora:
        lines.append(f"- LoRA rank {st.rank}, alpha {st.alpha:g}; UNet targets {', '.join(st.unet_targets)}; "
                     f"text encoder targets {', '.join(st.text_encoder_targets) or 'none (frozen)'}")
    lines += [f"- lr {st.lr:g} ({st.lr_scheduler}, {st.warmup_steps} warm-up steps), AdamW weight decay "
              f"{st.weight_decay:g}, batch {st.batch_size}, grad clip {st.grad_clip}, min-SNR gamma {st.snr_gamma}", ""]
    shown = {adapter: prompts[adapter]} if adapter in prompts else prompts
    lines += ["## Prompts", ""] + [f"- {c}: \"{p}\"" for c, p in shown.items()] + [""]
    first = next(iter(shown.values()))
    load = (f'pipe.load_lora_weights("{"." if adapter else "lora/<class>"}")' if st.lora else
            'pipe.unet = UNet2DConditionModel.from_pretrained("unet")')
    lines += ["## Use", "", "```python", "import torch",
              "from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel",
              f'pipe = StableDiffusionPipeline.from_pretrained("{sd.base}", safety_checker=None)',
              "pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)", load,
              f'image = pipe("{first}", num_inference_steps=25, guidance_scale={st.guidance:g}, '
              f'height={st.resolution}, width={st.resolution}, generator=torch.Generator().manual_seed(0)).images[0]',
              "```", ""]
    return "\n".join(lines)
