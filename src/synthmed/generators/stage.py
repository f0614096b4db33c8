"""The kind-agnostic ``finetune`` and ``generate`` stages: every generator kind through the registry and the protocol.

``finetune`` writes ``RunLayout.generator`` (see ``contract.py``; checkpoints under ``RunLayout.generator_work``); a
finished generator with the same fingerprint is kept. ``generate`` writes ``RunLayout.synthetic`` with the one
synthetic-set writer (``synthetic/writer.py``), skipping images that already exist.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.errors import ConfigError, DataError, MissingStageError
from synthmed.generators import contract
from synthmed.generators.accel import processes
from synthmed.generators.base import SampleOptions
from synthmed.generators.registry import generator_class
from synthmed.io import TMP_PREFIX
from synthmed.layout import RunLayout


def _data(cfg: Any, layout: RunLayout, data: Any) -> Any:
    from synthmed.data.load import load_data

    return load_data(cfg.data, layout.root) if data is None else data


def finetune(cfg: Any, run_dir: str | Path, data: Any = None, *, progress: bool = True,
             stop_after: int | None = None) -> Path:
    """Fit ``generator.kind`` on ``data.train`` and write the generator folder; returns ``RunLayout.generator``."""
    layout = RunLayout(run_dir)
    data = _data(cfg, layout, data)
    gen = generator_class(cfg.generator.kind).from_config(cfg, data)
    if contract.stored_fingerprint(layout.generator) == gen.fingerprint():
        return layout.generator
    gen.fit(data.train, layout.generator_work, progress=progress, stop_after=stop_after)
    rank, _, barrier = processes(cfg.device)
    if rank == 0:  # written under a temp name, renamed when whole
        tmp = layout.generator.with_name(TMP_PREFIX + layout.generator.name)
        shutil.rmtree(tmp, ignore_errors=True)
        gen.save(tmp)
        if layout.generator.exists():
            shutil.rmtree(layout.generator)
        os.replace(tmp, layout.generator)
    barrier()
    return layout.generator


def generate(cfg: Any, run_dir: str | Path, data: Any = None, *, progress: bool = True) -> Path:
    """Sample the synthetic set (this process's shard under ``accelerate launch``); returns ``RunLayout.synthetic``."""
    from synthmed.generators.guidance import resolve_guide, training_sources
    from synthmed.synthetic.writer import plan_generation, plan_sources, write_synthetic

    layout = RunLayout(run_dir)
    if not layout.generator.is_dir():
        raise MissingStageError(f"generator ({layout.generator})", "finetune")
    data = _data(cfg, layout, data)
    g = cfg.generation
    cls = generator_class(cfg.generator.kind)
    guide = resolve_guide(g)
    if guide != "none" and not getattr(cls, "supports_guidance", False):
        raise DataError(f"generation.strength / generation.guide: generator.kind={cls.kind} has no real-image guidance")
    if g.precision == "bf16" and not getattr(cls, "supports_precision", False):
        raise ConfigError(f"generation.precision=bf16: generator.kind={cls.kind} sets its own precision; use fp32 or "
                          "auto")
    gen = cls.load(layout.generator, cfg)
    if list(gen.classes) != list(data.classes):
        raise DataError(f"the generator was trained on classes {gen.classes}, the data has {data.classes}: "
                        "rerun `synthmed finetune`")
    shape = getattr(gen, "image_shape", None)
    if shape is not None and tuple(shape) != (*data.size, data.channels):
        raise DataError(f"the generator makes {'x'.join(map(str, shape))} images, the data is "
                        f"{data.size[0]}x{data.size[1]}x{data.channels}: rerun `synthmed finetune`")
    counts = data.train.counts(data.n_classes)
    items = plan_generation(cfg, data.classes, counts)
    opts = SampleOptions(sampler=g.sampler, steps=g.steps, guidance=g.guidance, batch_size=g.batch_size,
                         strength=g.strength, precision=g.precision, extra={"negative_prompt": g.negative_prompt})
    provenance = gen.provenance(opts)
    images: dict[str, np.ndarray] = {}
    if guide != "none":
        candidates, images = training_sources(layout.generator, data)
        items = plan_sources(items, candidates, counts, guide)
        provenance.update(strength=g.strength, guide=guide)

    def sample(batch: list[Any]) -> np.ndarray:
        o = dataclasses.replace(opts, sources=np.stack([images[it.source_id] for it in batch])) if images else opts
        return gen.sample([it.class_index for it in batch], [it.seed for it in batch], o)

    group = getattr(gen, "batch_group", None)
    rank, world, barrier = processes(cfg.device)
    write_synthetic(layout.root, items, sample, provenance, batch_size=g.batch_size,
                    group=(lambda it: group(it.class_index)) if group else None, rank=rank, world=world,
                    barrier=barrier, progress=progress)
    return layout.synthetic
