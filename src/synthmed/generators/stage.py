"""The ``finetune`` and ``generate`` stages: load the real data, dispatch on ``generator.kind``.

``finetune`` writes ``RUN_DIR/generator/`` (resuming from ``RUN_DIR/generator_work/checkpoints``); ``generate``
writes ``RUN_DIR/synthetic/<class>/<id>.png`` + ``manifest.csv`` and skips images that already exist.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from synthmed.errors import DataError, MissingStageError

GENERATOR_DIR = "generator"
WORK_DIR = "generator_work"


def _load(cfg: Any, run_dir: Path) -> Any:
    from synthmed.data.load import load_data

    return load_data(cfg.data, run_dir)


def finetune(cfg: Any, run_dir: str | Path, data: Any = None) -> Path:
    """Train (ddpm) or fine-tune (stable_diffusion) the generator; returns ``RUN_DIR/generator``."""
    run_dir = Path(run_dir)
    data = _load(cfg, run_dir) if data is None else data
    if cfg.generator.kind == "stable_diffusion":
        from synthmed.generators.stable_diffusion import finetune_sd

        return Path(finetune_sd(cfg, run_dir, data))
    return finetune_ddpm(cfg, run_dir, data)


def generate(cfg: Any, run_dir: str | Path, data: Any = None) -> Path:
    """Sample the synthetic set; returns ``RUN_DIR/synthetic``."""
    run_dir = Path(run_dir)
    if not (run_dir / GENERATOR_DIR).is_dir():
        raise MissingStageError(f"generator ({run_dir / GENERATOR_DIR})", "finetune")
    data = _load(cfg, run_dir) if data is None else data
    if cfg.generator.kind == "stable_diffusion":
        from synthmed.generators.stable_diffusion import generate_sd

        return Path(generate_sd(cfg, run_dir, data))
    return generate_ddpm(cfg, run_dir, data)


# ---------------------------------------------------------------------------------------------- ddpm


def _existing_fingerprint(gen_dir: Path) -> str | None:
    try:
        meta = json.loads((gen_dir / "synthmed.json").read_text(encoding="utf-8"))
        return meta.get("training", {}).get("fingerprint")
    except (OSError, ValueError):
        return None


def finetune_ddpm(cfg: Any, run_dir: Path, data: Any, stop_after: int | None = None, progress: bool = True) -> Path:
    """Train the class-conditional UNet on ``data.train``; a finished generator with the same fingerprint is kept."""
    from synthmed.generators.ddpm import TRAINING_IMAGES, write_training_images
    from synthmed.generators.ddpm_train import fingerprint, make_accelerator, train_ddpm

    gen_dir = run_dir / GENERATOR_DIR
    dcfg = cfg.generator.ddpm
    acc = make_accelerator(cfg.device)
    if _existing_fingerprint(gen_dir) == fingerprint(dcfg, cfg.seed, data.train, acc.num_processes):
        return gen_dir
    result = train_ddpm(dcfg, data.train, list(data.classes), run_dir / WORK_DIR, seed=cfg.seed, device=cfg.device,
                        stop_after=stop_after, progress=progress)
    if acc.is_main_process:
        tmp = run_dir / f".tmp-{GENERATOR_DIR}"
        if tmp.exists():
            shutil.rmtree(tmp)
        summary = data.summary()
        result.generator.save(tmp, extra={
            "data": {"source": data.source, "classes": summary["classes"], "train": summary["splits"]["train"]},
            "training_images": TRAINING_IMAGES,
        })
        write_training_images(tmp / TRAINING_IMAGES, data.train)
        if gen_dir.exists():
            shutil.rmtree(gen_dir)
        os.replace(tmp, gen_dir)
    acc.wait_for_everyone()
    return gen_dir


def generate_ddpm(cfg: Any, run_dir: Path, data: Any, progress: bool = True) -> Path:
    """Sample the plan (this process's shard under ``accelerate launch``); rank 0 writes the manifest."""
    from synthmed.generators.ddpm import DEFAULT_GUIDANCE, DDPMGenerator
    from synthmed.generators.ddpm_train import make_accelerator
    from synthmed.generators.plan import (
        default_steps, merge_manifest, pending_items, plan_generation, run_plan, shard)
    from synthmed.synthetic.dataset import SyntheticSet

    gcfg = cfg.generation
    if gcfg.strength is not None:
        raise DataError("generation.strength (img2img) is for generator.kind=stable_diffusion only")
    acc = make_accelerator(cfg.device)
    gen = DDPMGenerator.load(run_dir / GENERATOR_DIR, device=acc.device)
    if list(gen.classes) != list(data.classes):
        raise DataError(f"the generator was trained on classes {gen.classes}, the data has {data.classes}: "
                        "rerun `synthmed finetune`")
    p = gen.policy
    if (p.height, p.width, p.channels) != (*data.size, data.channels):
        raise DataError(f"the generator makes {p.height}x{p.width}x{p.channels} images, the data is "
                        f"{data.size[0]}x{data.size[1]}x{data.channels}: rerun `synthmed finetune`")
    steps = gcfg.steps or default_steps(gcfg.sampler)
    guidance = DEFAULT_GUIDANCE if gcfg.guidance is None else float(gcfg.guidance)
    items = plan_generation(cfg, data.classes, data.train.counts(data.n_classes))
    mine = shard(items, acc.process_index, acc.num_processes)
    provenance = {"generator": "ddpm", "sampler": gcfg.sampler, "steps": steps, "guidance": guidance,
                  "model_sha256": gen.meta.get("model_sha256", "")}

    def sample(batch: list[Any]) -> Any:
        return gen.sample([i.class_index for i in batch], [i.seed for i in batch], sampler=gcfg.sampler,
                          steps=steps, guidance=guidance, batch_size=gcfg.batch_size)

    synth = SyntheticSet(run_dir)
    multi = acc.num_processes > 1
    reuse = pending_items(synth, items, provenance)[1] if multi and acc.is_main_process else {}
    acc.wait_for_everyone()
    run_plan(run_dir, mine, sample, provenance, batch_size=gcfg.batch_size, write_manifest=not multi,
             progress=progress and acc.is_main_process)
    if multi:
        acc.wait_for_everyone()
        if acc.is_main_process:
            merge_manifest(synth, items, provenance, reuse)
        acc.wait_for_everyone()
    return synth.root
