"""Sampling the synthetic set from a fine-tuned Stable Diffusion: text-to-image or image-to-image from the training
few-shot images ("real guidance", ``generation.strength``), per-image seeds, resumable, multi-process.

Under ``accelerate launch`` (or torchrun) every process makes its shard of the plan (``plan.shard``), writes its
PNGs and a partial manifest ``synthetic/manifest.rank<r>.partial.csv``; after a barrier the main process merges them
into ``manifest.csv`` in plan order, so the result equals a single-process run.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.data.dataset import RealData
from synthmed.errors import DataError, UserError
from synthmed.generators.plan import PlanItem, base_row, batches, default_steps, plan_generation, shard
from synthmed.generators.sd_base import (
    check_lora_stack, check_prompts, float_to_uint8, load_pipeline, process_state, to_data_geometry, to_sd_image,
)
from synthmed.generators.sd_recipes import resolve
from synthmed.generators.stable_diffusion import (
    GENERATOR_DIR, TRAINING_CSV, adapter_dir, read_meta, settings_and_runtime,
)
from synthmed.io import atomic_save_png, atomic_write_csv, remove_stale_temps
from synthmed.synthetic.dataset import MANIFEST_COLUMNS, SyntheticSet

PARTIAL = "manifest.rank{rank}.partial.csv"
#: what must match for an existing PNG to be reused
_PROVENANCE = ("seed", "generator", "sampler", "steps", "guidance", "model_sha256", "prompt", "strength",
               "source_image", "adapter")


def dist_info() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment (accelerate launch / torchrun); (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _barrier(world: int, device: str) -> None:
    if world > 1:
        process_state(device).wait_for_everyone()


def set_sampler(pipe: Any, sampler: str) -> None:
    """dpmpp -> DPM-Solver++ (multistep), ddim -> DDIM, ddpm -> DDPM; configured from the base's scheduler."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    cls = {"dpmpp": DPMSolverMultistepScheduler, "ddim": DDIMScheduler, "ddpm": DDPMScheduler}[sampler]
    kwargs = {"algorithm_type": "dpmsolver++"} if sampler == "dpmpp" else {}
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **kwargs)


def load_adapter(pipe: Any, folder: Path, name: str, base: str, trained_on: str | None) -> None:
    """Load a LoRA folder into ``pipe``; a LoRA made for another base model is a one-line ``UserError``."""
    if not (folder / "pytorch_lora_weights.safetensors").is_file():
        raise DataError(f"LoRA weights missing: {folder}/pytorch_lora_weights.safetensors (rerun `synthmed finetune`)")
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    level, dlevel = tlog.get_verbosity(), dlog.get_verbosity()
    tlog.set_verbosity_error()  # transformers reports the (untouched) base weights as "missing" from a LoRA file
    dlog.set_verbosity(dlog.CRITICAL)  # diffusers logs a multi-line error on a mismatch; we raise one line instead
    try:
        pipe.load_lora_weights(str(folder), adapter_name=name)
    except Exception as err:  # noqa: BLE001 - shape / key mismatch
        hint = f" (trained on {trained_on})" if trained_on and trained_on != base else ""
        raise UserError(f"LoRA {folder} does not fit base model {base}{hint}: made for another base model? "
                        f"({err.__class__.__name__})") from None
    finally:
        tlog.set_verbosity(level)
        dlog.set_verbosity(dlevel)


def load_full_unet(pipe: Any, folder: Path, base: str, dtype: Any) -> None:
    from diffusers import UNet2DConditionModel

    try:
        unet = UNet2DConditionModel.from_pretrained(str(folder), dtype=dtype)
    except Exception as err:  # noqa: BLE001
        raise DataError(f"fine-tuned UNet {folder} unreadable ({err.__class__.__name__}); rerun `synthmed finetune`") from None
    te_dim = pipe.text_encoder.config.hidden_size
    if unet.config.cross_attention_dim != te_dim or unet.config.in_channels != pipe.vae.config.latent_channels:
        raise UserError(f"fine-tuned UNet {folder} does not fit base model {base} (cross-attention "
                        f"{unet.config.cross_attention_dim} vs text encoder {te_dim}): made for another base model?")
    pipe.unet = unet


def _read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _known_rows(synth: SyntheticSet) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """(rows of the existing manifest, rows of partial manifests) by id."""
    old = {r["id"]: r for r in _read_rows(synth.manifest_path)} if synth.manifest_path.is_file() else {}
    partial: dict[str, dict[str, str]] = {}
    for p in sorted(synth.root.glob(PARTIAL.format(rank="*"))):
        partial.update({r["id"]: r for r in _read_rows(p)})
    return old, partial


def _same(a: dict[str, Any] | None, b: dict[str, Any]) -> bool:
    return a is not None and all(str(a.get(k, "")) == str(b.get(k, "")) for k in _PROVENANCE)


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{float(x):g}"


def generate(cfg: Any, run_dir: Path, data: RealData) -> Path:
    """Make this process's share of the plan; the main process writes the merged manifest."""
    meta = read_meta(run_dir)
    if list(meta["classes"]) != list(data.classes):
        raise DataError(f"the generator in {run_dir / GENERATOR_DIR} was fine-tuned on classes {meta['classes']}, "
                        f"the data has {data.classes}: rerun `synthmed finetune`")
    sd, gen = cfg.generator.stable_diffusion, cfg.generation
    st, rt = settings_and_runtime(cfg)
    st = resolve(sd)
    st.lora, st.per_class, st.resolution = meta["settings"]["lora"], meta["settings"]["per_class"], meta["settings"]["resolution"]
    if st.lora:
        check_lora_stack()
    gen_dir = run_dir / GENERATOR_DIR
    steps = gen.steps or default_steps(gen.sampler, "stable_diffusion")
    guidance = float(gen.guidance if gen.guidance is not None else st.guidance)
    prompts: dict[str, str] = meta["prompts"]
    sources = _sources(gen_dir, data) if gen.strength is not None else {}

    def adapter_of(c: str) -> str:
        return (c if st.per_class else "joint") if st.lora else "unet"

    def row_for(item: PlanItem) -> dict[str, str]:
        a = adapter_of(item.class_name)
        src = sources[item.class_name][item.index % len(sources[item.class_name])][0] if sources else ""
        prov = {"generator": "stable_diffusion", "sampler": gen.sampler, "steps": str(steps), "guidance": _fmt(guidance),
                "model_sha256": meta["adapters"][a]["sha256"], "prompt": prompts[item.class_name],
                "strength": _fmt(gen.strength), "source_image": src, "adapter": a if st.lora else ""}
        return {k: str(v) for k, v in base_row(item, prov).items()}

    items = plan_generation(cfg, data.classes, data.train.counts(data.n_classes))
    rank, world = dist_info()
    # Batches are formed over the whole plan (per adapter, plan order) and whole batches are sharded, so every image
    # is computed in the same batch whatever the number of processes or what was already done: bit-identical PNGs.
    all_batches = [(a, b) for a in sorted({adapter_of(it.class_name) for it in items})
                   for b in batches([it for it in items if adapter_of(it.class_name) == a], gen.batch_size)]
    mine = shard(all_batches, rank, world)  # type: ignore[arg-type]
    synth = SyntheticSet(run_dir)
    synth.root.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        remove_stale_temps(synth.root)
    old, partial = _known_rows(synth)
    done_rows: dict[str, dict[str, str]] = {}
    todo: set[str] = set()
    for _, batch in mine:
        for item in batch:
            known = partial.get(item.id) or old.get(item.id)
            if synth.abspath(item.relpath).is_file() and _same(known, row_for(item)):
                if item.id in partial:
                    done_rows[item.id] = partial[item.id]
            else:
                todo.add(item.id)
    partial_path = synth.root / PARTIAL.format(rank=rank)
    work = [(a, b) for a, b in mine if any(it.id in todo for it in b)]
    if work:
        pipe = load_pipeline(sd.base, cfg.is_offline, rt.dtype, sd.revision, sd.variant)
        check_prompts(pipe.tokenizer, {f"class {c}": p for c, p in prompts.items()})
        if gen.negative_prompt:
            check_prompts(pipe.tokenizer, {"generation.negative_prompt": gen.negative_prompt})
        if not st.lora:
            load_full_unet(pipe, adapter_dir(gen_dir, st, None), str(sd.base), rt.dtype)
        pipe.to(rt.device)
        pipe.set_progress_bar_config(disable=True)
        set_sampler(pipe, gen.sampler)
        sample = _sampler(pipe, prompts, gen.negative_prompt, steps, guidance, gen.strength, sources, st.resolution,
                          data)
        bar = _bar(len(todo), rank)
        try:
            for a, group in groupby(work, key=lambda ab: ab[0]):
                if st.lora:
                    load_adapter(pipe, adapter_dir(gen_dir, st, a if st.per_class else None), a, str(sd.base),
                                 meta.get("base"))
                for _, batch in group:
                    for item, image in zip(batch, sample(batch)):
                        if item.id in todo:  # the rest of the batch exists already (same bytes)
                            atomic_save_png(synth.abspath(item.relpath), image)
                        done_rows[item.id] = row_for(item)
                    atomic_write_csv(partial_path, done_rows.values(), MANIFEST_COLUMNS)
                    if bar is not None:
                        bar.update(sum(it.id in todo for it in batch))
                if st.lora:
                    pipe.unload_lora_weights()
        finally:
            if bar is not None:
                bar.close()
    atomic_write_csv(partial_path, done_rows.values(), MANIFEST_COLUMNS)
    _barrier(world, cfg.device)
    if rank == 0:
        _merge(synth, items, old, row_for)
    _barrier(world, cfg.device)
    return synth.root


def _merge(synth: SyntheticSet, items: list[PlanItem], old: dict[str, dict[str, str]],
           row_for: Callable[[PlanItem], dict[str, str]]) -> None:
    """Write ``manifest.csv`` (plan order) from the partial manifests and the reusable old rows; drop partials."""
    _, partial = _known_rows(synth)
    rows = []
    for item in items:
        if not synth.abspath(item.relpath).is_file():
            continue
        want, prev, new = row_for(item), old.get(item.id), partial.get(item.id)
        if _same(prev, want):  # unchanged: keep the old row (and the quality stage's decisions)
            rows.append(prev)
        elif _same(new, want):
            rows.append(new)
    synth.write_manifest(rows)
    for p in synth.root.glob(PARTIAL.format(rank="*")):
        p.unlink(missing_ok=True)


def _bar(total: int, rank: int) -> Any:
    if rank != 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="generate (SD)", unit="img", dynamic_ncols=True, leave=False)


def _sources(gen_dir: Path, data: RealData) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Per class, the (id, image) few-shot training images the generator was fine-tuned on (img2img sources)."""
    path = gen_dir / TRAINING_CSV
    if not path.is_file():
        raise DataError(f"{path} missing: rerun `synthmed finetune`")
    by_id = {i: a for s in (data.train_pool, data.train) for i, a in zip(s.ids, s.images)}
    out: dict[str, list[tuple[str, np.ndarray]]] = {c: [] for c in data.classes}
    for row in _read_rows(path):
        if row["id"] not in by_id:
            raise DataError(f"{path}: training image '{row['id']}' is not in the data's training split; rerun "
                            "`synthmed finetune`")
        out[data.classes[int(row["label"])]].append((row["id"], by_id[row["id"]]))
    empty = [c for c, v in out.items() if not v]
    if empty:
        raise DataError(f"{path}: no training images for class '{empty[0]}' to guide img2img")
    return out


def _sampler(pipe: Any, prompts: dict[str, str], negative: str | None, steps: int, guidance: float,
             strength: float | None, sources: dict[str, list[tuple[str, np.ndarray]]], resolution: int,
             data: RealData) -> Callable[[list[PlanItem]], np.ndarray]:
    """``sample(batch) -> (B, H, W, C) uint8`` at the dataset's geometry; image i depends only on its item."""
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    i2i = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False) if strength is not None else None
    if i2i is not None:
        i2i.set_progress_bar_config(disable=True)

    def sample(batch: list[PlanItem]) -> np.ndarray:
        kw: dict[str, Any] = dict(
            prompt=[prompts[it.class_name] for it in batch], num_inference_steps=steps, guidance_scale=guidance,
            negative_prompt=[negative] * len(batch) if negative else None, output_type="np",
            generator=[torch.Generator("cpu").manual_seed(int(it.seed)) for it in batch],
        )
        with torch.inference_mode():
            if i2i is None:
                out = pipe(height=resolution, width=resolution, **kw).images
            else:
                srcs = [to_sd_image(sources[it.class_name][it.index % len(sources[it.class_name])][1], resolution)
                        for it in batch]
                out = i2i(image=srcs, strength=strength, **kw).images
        imgs = float_to_uint8(np.asarray(out))
        return np.stack([to_data_geometry(a, data.size, data.channels) for a in imgs])

    return sample
