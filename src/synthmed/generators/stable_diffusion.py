"""Stable Diffusion as a synthmed generator: fine-tune (``finetune_sd``) and sample (``generate_sd``).

``RUN_DIR/generator/`` after fine-tuning:

* ``lora/<class>/pytorch_lora_weights.safetensors`` + ``README.md`` (per-class recipes), ``lora/joint/...``
  (``datadream_joint``) or ``unet/`` (``full_unet``): load with plain diffusers
  (``StableDiffusionPipeline.from_pretrained(base).load_lora_weights(folder)``);
* ``README.md`` (model card), ``synthmed.json`` (metadata), ``training_images.csv`` (id,label,pixel_hash).

Checkpoints live in ``RUN_DIR/generator_work/<adapter>/checkpoints/``; a finished adapter is skipped on re-run.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.data.dataset import ImageSet, RealData
from synthmed.errors import ConfigError, MissingStageError
from synthmed.generators.sd_base import (
    check_lora_stack, check_prompts, derived_seed, load_pipeline, pick_device, pick_dtype, process_state,
)
from synthmed.generators.sd_recipes import SDSettings, resolve
from synthmed.generators.sd_train import LORA_FILE, AdapterJob, Runtime, train_adapter
from synthmed.io import atomic_write_csv, atomic_write_json, atomic_write_text, pixel_hash, sha256_file

GENERATOR_DIR = "generator"
WORK_DIR = "generator_work"
META = "synthmed.json"
TRAINING_CSV = "training_images.csv"
JOINT = "joint"
#: settings that may change without invalidating finished adapters / checkpoints (they do not change the weights)
_NOT_FINGERPRINTED = {"guidance", "checkpoint_every", "keep_checkpoints"}


def settings_and_runtime(cfg: Any) -> tuple[SDSettings, Runtime]:
    sd = cfg.generator.stable_diffusion
    st = resolve(sd)
    device = pick_device(cfg.device)
    rt = Runtime(device=device, dtype=pick_dtype(sd.mixed_precision, device),
                 seed=int(sd.seed if sd.seed is not None else cfg.seed), cache_latents=sd.cache_latents,
                 cache_text=sd.cache_text, gradient_checkpointing=sd.gradient_checkpointing,
                 use_8bit_adam=sd.use_8bit_adam, checkpoint_every=sd.checkpoint_every,
                 keep_checkpoints=sd.keep_checkpoints)
    return st, rt


def select_training(train: ImageSet, classes: list[str], shots: int | None, seed: int) -> ImageSet:
    """At most ``shots`` images per class (seeded pick, original order kept); all of them when ``shots`` is None."""
    keep: list[int] = []
    for c in range(len(classes)):
        idx = np.flatnonzero(train.labels == c)
        if shots is not None and len(idx) > shots:
            rng = np.random.default_rng(derived_seed(seed, "shots", classes[c]) % (2**32))
            idx = np.sort(rng.choice(idx, size=shots, replace=False))
        keep.extend(idx.tolist())
    return train.subset(sorted(keep))


def adapter_dir(gen_dir: Path, st: SDSettings, class_name: str | None) -> Path:
    if not st.lora:
        return gen_dir / "unet"
    return gen_dir / "lora" / (class_name if st.per_class and class_name is not None else JOINT)


def _jobs(st: SDSettings, chosen: ImageSet, classes: list[str], prompts: dict[str, str], gen_dir: Path,
          work: Path) -> list[AdapterJob]:
    if st.per_class:
        jobs = []
        for c, name in enumerate(classes):
            sub = chosen.subset(np.flatnonzero(chosen.labels == c))
            if len(sub) == 0:
                raise ConfigError(f"class '{name}' has no training images to fine-tune its LoRA on")
            jobs.append(AdapterJob(name, sub.images, [prompts[name]] * len(sub), adapter_dir(gen_dir, st, name),
                                   work / name))
        return jobs
    name = JOINT if st.lora else "unet"
    return [AdapterJob(name, chosen.images, [prompts[classes[int(y)]] for y in chosen.labels],
                       adapter_dir(gen_dir, st, None), work / name)]


def _fingerprint(cfg: Any, st: SDSettings, job: AdapterJob, rt: Runtime) -> str:
    from synthmed.io import sha256_bytes

    settings = {k: v for k, v in st.as_dict().items() if k not in _NOT_FINGERPRINTED}
    sd = cfg.generator.stable_diffusion
    blob = json.dumps({"base": sd.base, "revision": sd.revision, "variant": sd.variant, "settings": settings,
                       "seed": rt.seed, "prompts": job.prompts, "images": [pixel_hash(a) for a in job.images],
                       "dtype": str(rt.dtype)}, sort_keys=True, default=str)
    return sha256_bytes(blob.encode())


def _finished(job: AdapterJob, fp: str) -> dict[str, Any] | None:
    done = job.work_dir / "done.json"
    fpf = job.work_dir / "fingerprint.txt"
    if not (done.is_file() and fpf.is_file()) or fpf.read_text().strip() != fp:
        return None
    summary = json.loads(done.read_text())
    path = Path(summary.get("file", ""))
    if not path.is_file() or sha256_file(path) != summary.get("sha256"):
        return None
    return summary


def finetune_sd(cfg: Any, run_dir: str | Path, data: RealData) -> Path:
    """Fine-tune the base SD with the configured recipe; returns ``RUN_DIR/generator``."""
    run_dir = Path(run_dir)
    sd = cfg.generator.stable_diffusion
    st, rt = settings_and_runtime(cfg)
    st = resolve(sd, data.classes)
    if st.lora:
        check_lora_stack()
    gen_dir, work = run_dir / GENERATOR_DIR, run_dir / WORK_DIR
    base = load_pipeline(sd.base, cfg.is_offline, rt.dtype, sd.revision, sd.variant)

    def load() -> Any:
        """A pipeline with fresh copies of the trainable parts (UNet, text encoder); VAE and tokenizer shared."""
        return type(base)(**{**base.components, "unet": copy.deepcopy(base.unet),
                             "text_encoder": copy.deepcopy(base.text_encoder)},
                          requires_safety_checker=False)

    prompts = {c: st.prompt(c) for c in data.classes}
    check_prompts(base.tokenizer, {f"class {c}": p for c, p in prompts.items()})
    if cfg.generation.negative_prompt:
        check_prompts(base.tokenizer, {"generation.negative_prompt": cfg.generation.negative_prompt})
    chosen = select_training(data.train, data.classes, st.shots, rt.seed)
    gen_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(gen_dir / TRAINING_CSV, [
        {"id": i, "label": int(y), "class_name": data.classes[int(y)], "pixel_hash": pixel_hash(a)}
        for i, y, a in zip(chosen.ids, chosen.labels, chosen.images)
    ], ["id", "label", "class_name", "pixel_hash"])
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    jobs = _jobs(st, chosen, data.classes, prompts, gen_dir, work)
    for job in jobs[rank::world]:  # several processes: per-class adapters are trained in parallel
        fp = _fingerprint(cfg, st, job, rt)
        summary = _finished(job, fp)
        if summary is None:
            fpf = job.work_dir / "fingerprint.txt"
            if fpf.is_file() and fpf.read_text().strip() != fp:
                shutil.rmtree(job.work_dir)  # other settings or images: old checkpoints must not be resumed
            atomic_write_text(job.work_dir / "fingerprint.txt", fp)
            summary = train_adapter(load, st, rt, job, progress=rank == 0)
        if st.lora:
            atomic_write_text(job.out_dir / "README.md", model_card(cfg, st, data, chosen, {job.name: summary},
                                                                    job.name, prompts))
    if world > 1:
        process_state(cfg.device).wait_for_everyone()
        if rank != 0:
            return gen_dir
    summaries = {job.name: json.loads((job.work_dir / "done.json").read_text()) for job in jobs}
    meta = {
        "kind": "stable_diffusion", "base": sd.base, "revision": sd.revision, "variant": sd.variant,
        "recipe": st.recipe, "settings": st.as_dict(), "classes": list(data.classes), "prompts": prompts,
        "seed": rt.seed, "device": str(rt.device), "dtype": str(rt.dtype).replace("torch.", ""),
        "data": {"source": data.source, "image_policy": data.image_policy,
                 "images_per_class": chosen.counts(data.n_classes)},
        "adapters": {name: {**{k: v for k, v in s.items() if k != "file"},
                            "path": str(Path(s["file"]).parent.relative_to(gen_dir))} for name, s in summaries.items()},
    }
    atomic_write_json(gen_dir / META, meta)
    atomic_write_text(gen_dir / "README.md", model_card(cfg, st, data, chosen, summaries, None, prompts))
    return gen_dir


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / GENERATOR_DIR / META
    if not path.is_file():
        raise MissingStageError(f"fine-tuned Stable Diffusion generator ({path})", "finetune")
    return json.loads(path.read_text(encoding="utf-8"))


def model_card(cfg: Any, st: SDSettings, data: RealData, chosen: ImageSet, summaries: dict[str, Any],
               adapter: str | None, prompts: dict[str, str]) -> str:
    """A Hugging Face style model card (YAML front matter + usage) for the whole generator or one adapter."""
    sd = cfg.generator.stable_diffusion
    counts = chosen.counts(data.n_classes)
    what = "LoRA" if st.lora else "full UNet fine-tune"
    title = f"{what} '{adapter}'" if adapter else f"synthmed Stable Diffusion {what} ({st.recipe})"
    lines = [
        "---", f"base_model: {sd.base}", "library_name: diffusers",
        "tags: [stable-diffusion, lora, synthmed, text-to-image]" if st.lora else "tags: [stable-diffusion, synthmed]",
        "---", "", f"# {title}", "",
        f"Fine-tuned with synthmed recipe `{st.recipe}` from base model `{sd.base}` at {st.resolution} px.", "",
        "## Data", "", f"- source: `{data.source}`",
        f"- training images: {len(chosen)} ({', '.join(f'{c}: {n}' for c, n in zip(data.classes, counts))})",
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


def generate_sd(cfg: Any, run_dir: str | Path, data: RealData) -> Path:
    """Sample the synthetic set with the fine-tuned SD (see ``sd_generate``); returns ``RUN_DIR/synthetic``."""
    from synthmed.generators.sd_generate import generate

    return generate(cfg, Path(run_dir), data)


__all__ = ["LORA_FILE", "finetune_sd", "generate_sd", "read_meta", "select_training"]
