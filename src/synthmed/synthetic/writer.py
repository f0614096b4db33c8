"""The one sharded, resumable writer of the synthetic set, for every generator kind.

``plan_generation`` lists one :class:`PlanItem` per image (class, index, per-image seed, id, path; optionally the real
training image it starts from, see ``plan_sources``). ``write_synthetic`` forms batches over the *whole* plan
(optionally grouped, e.g. per LoRA adapter), shards whole batches round robin over the processes (accelerate's
``process_index`` / ``num_processes``, passed in by the stage), samples every batch that still misses a PNG and writes
only the missing PNGs atomically. So every image is computed in the same batch whatever the number of processes or
what an interrupted run already made: bit-identical PNGs on CPU. Each process records its rows in
``synthetic/manifest.rank<r>.partial.csv`` after every batch; after a barrier the main process merges them with the
reusable rows of the old manifest (keeping the quality stage's decisions) into ``manifest.csv`` in plan order.

This module knows no generator: it calls ``sample(batch) -> uint8 (B, H, W, C)`` and writes ``provenance`` columns
(a value that is a list is indexed by the item's class).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.errors import ConfigError
from synthmed.io import atomic_save_png, atomic_write_csv, remove_stale_temps
from synthmed.synthetic.dataset import MANIFEST_COLUMNS, SyntheticSet, image_id, image_seed

PARTIAL = "manifest.rank{rank}.partial.csv"
#: manifest columns that describe how an image was made: a row whose values differ from the wanted ones is stale
PROVENANCE_KEYS = ("seed", "generator", "sampler", "steps", "guidance", "model_sha256", "prompt", "strength",
                   "source_image", "guide", "adapter", "precision")
GUIDES = ("none", "same_class", "head_to_tail")


@dataclass(frozen=True)
class PlanItem:
    """One synthetic image to make (``source_id``: the real training image it starts from, guided generation)."""

    class_index: int
    class_name: str
    index: int
    seed: int
    id: str
    relpath: str
    source_id: str = ""


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
    """The full plan for ``cfg`` (a Config or GenerationConfig), ordered by index then class (classes interleave,
    so that every class progresses together and an interrupted run has images of every class)."""
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


def plan_sources(items: Sequence[PlanItem], candidates: dict[int, list[str]], train_counts: Sequence[int],
                 guide: str) -> list[PlanItem]:
    """Give every item a source image id from ``candidates`` (class -> training image ids, in a fixed order).

    ``same_class``: image ``index % n`` of the item's own class (images cycle over the class's sources).
    ``head_to_tail``: an image of a more frequent class (class drawn with p ~ its training count among the classes
    with more images than the item's class, image uniform within it; seeded by the item's seed), to be translated
    under the item's (rarer) label; the most frequent class falls back to ``same_class``.
    """
    if guide not in GUIDES:
        raise ConfigError(f"unknown generation.guide '{guide}' (choose from {', '.join(GUIDES)})")
    if guide == "none":
        return list(items)
    out = []
    for it in items:
        own = candidates.get(it.class_index, [])
        donors = [c for c, ids in sorted(candidates.items()) if ids and train_counts[c] > train_counts[it.class_index]]
        if guide == "head_to_tail" and donors:
            rng = np.random.default_rng(it.seed)
            w = np.asarray([float(train_counts[c]) for c in donors])
            c = donors[int(rng.choice(len(donors), p=w / w.sum()))]
            src = candidates[c][int(rng.integers(len(candidates[c])))]
        elif own:
            src = own[it.index % len(own)]
        else:
            raise ConfigError(f"class '{it.class_name}' has no training images to guide generation from")
        out.append(replace(it, source_id=src))
    return out


def shard(items: Sequence[Any], rank: int, world: int) -> list[Any]:
    """The entries process ``rank`` of ``world`` handles (round robin)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad shard {rank}/{world}")
    return list(items[rank::world])


def batches(items: Sequence[PlanItem], size: int) -> Iterable[list[PlanItem]]:
    for start in range(0, len(items), max(1, size)):
        yield list(items[start : start + size])


def plan_batches(items: Sequence[PlanItem], batch_size: int,
                 group: Callable[[PlanItem], str] | None = None) -> list[list[PlanItem]]:
    """Batches over the whole plan: per group (sorted by key) in plan order, then cut into ``batch_size``."""
    if group is None:
        return list(batches(items, batch_size))
    keys = sorted({group(it) for it in items})
    return [b for k in keys for b in batches([it for it in items if group(it) == k], batch_size)]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def manifest_row(item: PlanItem, provenance: dict[str, Any]) -> dict[str, str]:
    """The manifest row of ``item`` made with ``provenance`` (list values are per class)."""
    row: dict[str, Any] = {"id": item.id, "path": item.relpath, "label": item.class_index,
                           "class_name": item.class_name, "seed": item.seed, "kept": "true", "filter_reason": "",
                           "confidence": ""}
    for k, v in provenance.items():
        row[k] = v[item.class_index] if isinstance(v, (list, tuple)) else v
    if not item.source_id:
        row.update({"source_image": "", "strength": "", "guide": ""})
    else:
        row["source_image"] = item.source_id
    return {k: _cell(v) for k, v in row.items()}


def _same(have: dict[str, str] | None, want: dict[str, str]) -> bool:
    return have is not None and all((have.get(k) or "") == (want.get(k) or "") for k in PROVENANCE_KEYS)


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


def write_synthetic(
    run_dir: str | Path,
    items: Sequence[PlanItem],
    sample: Callable[[list[PlanItem]], np.ndarray],
    provenance: dict[str, Any],
    *,
    batch_size: int = 64,
    group: Callable[[PlanItem], str] | None = None,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] | None = None,
    progress: bool = True,
) -> list[PlanItem]:
    """Make this process's share of the missing or stale images of ``items``; returns the items it made.

    Every process calls it with the same arguments but its own ``rank``; ``barrier`` waits for all of them.
    """
    wait = barrier or (lambda: None)
    synth = SyntheticSet(run_dir)
    synth.root.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        remove_stale_temps(synth.root)
    wait()
    want = {it.id: manifest_row(it, provenance) for it in items}
    old, partial = _known_rows(synth)
    mine = shard(plan_batches(items, batch_size, group), rank, world)
    done_rows: dict[str, dict[str, str]] = {}
    todo: set[str] = set()
    for batch in mine:
        for it in batch:
            known = partial.get(it.id) or old.get(it.id)
            if synth.abspath(it.relpath).is_file() and _same(known, want[it.id]):
                if it.id in partial:
                    done_rows[it.id] = partial[it.id]
            else:
                todo.add(it.id)
    partial_path = synth.root / PARTIAL.format(rank=rank)
    made: list[PlanItem] = []
    bar = None
    if progress and rank == 0 and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="generate", unit="img", dynamic_ncols=True, leave=False)
    try:
        for batch in mine:
            if not any(it.id in todo for it in batch):
                continue
            images = np.asarray(sample(batch))
            if images.dtype != np.uint8 or len(images) != len(batch):
                raise RuntimeError(f"sampler returned {images.dtype} {images.shape} for {len(batch)} items")
            for it, image in zip(batch, images):
                if it.id in todo:  # the rest of the batch exists already (same bytes)
                    atomic_save_png(synth.abspath(it.relpath), image)
                    made.append(it)
                done_rows[it.id] = want[it.id]
            atomic_write_csv(partial_path, done_rows.values(), MANIFEST_COLUMNS)
            if bar is not None:
                bar.update(sum(it.id in todo for it in batch))
    finally:  # closes the bar on errors too, so a message never lands on the bar's line
        if bar is not None:
            bar.close()
    atomic_write_csv(partial_path, done_rows.values(), MANIFEST_COLUMNS)
    wait()
    if rank == 0:
        _merge(synth, items, old, want)
    wait()
    return made


def _merge(synth: SyntheticSet, items: Sequence[PlanItem], old: dict[str, dict[str, str]],
           want: dict[str, dict[str, str]]) -> None:
    """Write ``manifest.csv`` (plan order) from the partial manifests and the reusable old rows; drop partials."""
    _, partial = _known_rows(synth)
    rows = []
    for it in items:
        if not synth.abspath(it.relpath).is_file():
            continue
        prev, new = old.get(it.id), partial.get(it.id)
        if _same(prev, want[it.id]):  # unchanged: keep the old row (and the quality stage's decisions)
            rows.append(prev)
        elif _same(new, want[it.id]):
            rows.append(new)
    synth.write_manifest(rows)
    for p in synth.root.glob(PARTIAL.format(rank="*")):
        p.unlink(missing_ok=True)


__all__ = [
    "GUIDES", "PROVENANCE_KEYS", "PlanItem", "batches", "counts_to_generate", "generation_seed", "manifest_row",
    "plan_batches", "plan_generation", "plan_sources", "shard", "write_synthetic",
]
