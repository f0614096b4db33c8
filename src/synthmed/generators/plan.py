"""What to generate (the plan), sharding over processes, and the resumable write loop shared by all generators.

A plan is a list of :class:`PlanItem`: one per synthetic image, with its class, index within the class, per-image
seed (``image_seed``) and output path. ``run_plan`` samples only the items whose PNG is missing (or stale),
writes each PNG atomically and rewrites ``manifest.csv`` periodically and at the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.errors import ConfigError
from synthmed.io import atomic_save_png, remove_stale_temps
from synthmed.synthetic.dataset import MANIFEST_COLUMNS, SyntheticSet, image_id, image_seed

#: manifest columns that describe *how* an image was made; a row whose values differ from the current settings is stale
PROVENANCE_KEYS = ("generator", "sampler", "steps", "guidance", "model_sha256", "prompt", "strength", "adapter")


@dataclass(frozen=True)
class PlanItem:
    """One synthetic image to make."""

    class_index: int
    class_name: str
    index: int
    seed: int
    id: str
    relpath: str


def generation_seed(cfg: Any) -> int:
    """The base seed of generation: ``generation.seed`` or else the global ``seed`` (accepts a full Config)."""
    gen = getattr(cfg, "generation", cfg)
    seed = getattr(gen, "seed", None)
    if seed is None:
        seed = getattr(cfg, "seed", 0)
    return int(seed)


def counts_to_generate(gen_cfg: Any, train_counts: Sequence[int]) -> list[int]:
    """Images per class: ``balance_to: N`` -> max(0, N - count) per class, else ``n_per_class`` for every class."""
    balance_to = getattr(gen_cfg, "balance_to", None)
    if balance_to is not None:
        return [max(0, int(balance_to) - int(c)) for c in train_counts]
    n = getattr(gen_cfg, "n_per_class", None)
    if n is None:
        raise ConfigError("set generation.n_per_class or generation.balance_to")
    return [int(n)] * len(train_counts)


def plan_generation(cfg: Any, classes: Sequence[str], train_counts: Sequence[int]) -> list[PlanItem]:
    """The full plan for ``cfg`` (a Config or GenerationConfig), ordered by index then class (classes interleave).

    Interleaving lets one batch hold several classes, so that every class progresses together and an interrupted
    run has images of every class.
    """
    if len(classes) != len(train_counts):
        raise ValueError("classes and train_counts differ in length")
    gen = getattr(cfg, "generation", cfg)
    base = generation_seed(cfg)
    counts = counts_to_generate(gen, train_counts)
    synth = SyntheticSet(".")
    items = []
    for i in range(max(counts, default=0)):
        for c, name in enumerate(classes):
            if i < counts[c]:
                id_ = image_id(c, i)
                items.append(PlanItem(c, str(name), i, image_seed(base, c, i), id_, synth.relpath(str(name), id_)))
    return items


def shard(items: Sequence[PlanItem], rank: int, world: int) -> list[PlanItem]:
    """The items process ``rank`` of ``world`` makes (round robin, so every shard gets every class)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad shard {rank}/{world}")
    return list(items[rank::world])


def batches(items: Sequence[PlanItem], size: int) -> Iterable[list[PlanItem]]:
    for start in range(0, len(items), max(1, size)):
        yield list(items[start : start + size])


def _norm(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(round(value, 6))
    text = str(value)
    try:
        return repr(round(float(text), 6)) if "." in text else text
    except ValueError:
        return text


def base_row(item: PlanItem, provenance: dict[str, Any]) -> dict[str, Any]:
    """A manifest row for ``item`` made with ``provenance`` (generator, sampler, steps, guidance, model_sha256, ...)."""
    row: dict[str, Any] = {
        "id": item.id, "path": item.relpath, "label": item.class_index, "class_name": item.class_name,
        "seed": item.seed, "kept": "true", "filter_reason": "", "confidence": "",
    }
    row.update({k: ("" if v is None else v) for k, v in provenance.items()})
    return row


def pending_items(
    synth: SyntheticSet, items: Sequence[PlanItem], provenance: dict[str, Any]
) -> tuple[list[PlanItem], dict[str, dict[str, Any]]]:
    """Items whose PNG is missing or was made with other settings, and the reusable old manifest rows by id."""
    old: dict[str, dict[str, Any]] = {}
    if synth.exists():
        old = {str(r["id"]): r for r in synth.read_manifest()}
    todo, reuse = [], {}
    for item in items:
        path = synth.abspath(item.relpath)
        prev = old.get(item.id)
        stale = prev is not None and any(
            k in prev and _norm(prev.get(k)) != _norm(provenance.get(k)) for k in PROVENANCE_KEYS if k in provenance
        )
        if not path.is_file() or stale:
            todo.append(item)
        elif prev is not None:
            reuse[item.id] = prev
    return todo, reuse


def merge_manifest(
    synth: SyntheticSet, items: Sequence[PlanItem], provenance: dict[str, Any], reuse: dict[str, dict[str, Any]]
) -> int:
    """Rewrite the manifest with one row per plan item whose PNG exists; old rows (filter decisions) are kept."""
    rows = []
    for item in items:
        if not synth.abspath(item.relpath).is_file():
            continue
        prev = reuse.get(item.id)
        if prev is not None:
            row = dict(prev)
            row["kept"] = "true" if prev.get("kept", True) in (True, "true", "True", "1") else "false"
        else:
            row = base_row(item, provenance)
        rows.append(row)
    synth.write_manifest(rows)
    return len(rows)


def run_plan(
    run_dir: str | Path,
    items: Sequence[PlanItem],
    sample: Callable[[list[PlanItem]], np.ndarray],
    provenance: dict[str, Any],
    batch_size: int = 64,
    manifest_every_s: float = 30.0,
    write_manifest: bool = True,
    all_items: Sequence[PlanItem] | None = None,
    progress: bool = True,
) -> list[PlanItem]:
    """Make the missing/stale images of ``items`` with ``sample(batch) -> uint8 (B, H, W, C)``; returns those made.

    ``all_items`` is the whole plan (when ``items`` is one shard); only the process that passes
    ``write_manifest=True`` writes the manifest (rank 0 after the others finished).
    """
    synth = SyntheticSet(run_dir)
    synth.root.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(synth.root)
    todo, reuse = pending_items(synth, items, provenance)
    everything = list(all_items) if all_items is not None else list(items)
    last = time.monotonic()
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="generate", unit="img", dynamic_ncols=True, leave=False)
    try:
        for batch in batches(todo, batch_size):
            images = np.asarray(sample(batch))
            if images.dtype != np.uint8 or len(images) != len(batch):
                raise RuntimeError(f"sampler returned {images.dtype} {images.shape} for {len(batch)} items")
            for item, image in zip(batch, images):
                reuse.pop(item.id, None)
                atomic_save_png(synth.abspath(item.relpath), image)
            if bar is not None:
                bar.update(len(batch))
            if write_manifest and time.monotonic() - last > manifest_every_s:
                merge_manifest(synth, everything, provenance, reuse)
                last = time.monotonic()
    finally:  # closes the bar on errors too, so a message never lands on the bar's line
        if bar is not None:
            bar.close()
    if write_manifest:
        # rows of other shards: reuse what the old manifest had, else the current provenance
        if all_items is not None and synth.exists():
            old = {str(r["id"]): r for r in synth.read_manifest()}
            done = {i.id for i in todo}
            for item in everything:
                if item.id not in done and item.id not in reuse and item.id in old:
                    reuse[item.id] = old[item.id]
        merge_manifest(synth, everything, provenance, reuse)
    return todo


def default_steps(sampler: str, kind: str = "ddpm") -> int:
    """Default sampling steps: dpmpp 20 (stable diffusion 25), ddim 50, ddpm 1000."""
    if sampler == "dpmpp":
        return 25 if kind == "stable_diffusion" else 20
    return {"ddim": 50, "ddpm": 1000}[sampler]


def n_batches(n: int, batch_size: int) -> int:
    return math.ceil(n / max(1, batch_size))


__all__ = [
    "MANIFEST_COLUMNS", "PROVENANCE_KEYS", "PlanItem", "base_row", "batches", "counts_to_generate", "default_steps",
    "generation_seed", "merge_manifest", "pending_items", "plan_generation", "run_plan", "shard",
]
