"""``load_data``: source -> image policy -> real-only splits -> leakage guards -> training subset.

Leakage guards on the training split: exact pixel copies of val/test images (``io.pixel_hash``) and near-copies
(re-encoded, shifted, resized, brightened: ``data/neardup.py``) are removed from training, never from val/test, with
a warning (an error under ``data.strict``). The near-duplicate report is ``RealData.near_duplicates``.

With a run directory the chosen split is written to ``RUN_DIR/data/split.csv`` (atomically) and the near-duplicate
report to ``RUN_DIR/data/near_duplicates.json``; a rerun recomputes the split and refuses to go on when it differs
from the file (a different data config needs a new run dir).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from synthmed.data import neardup
from synthmed.data.config import DataConfig
from synthmed.data.dataset import ImageSet, RealData
from synthmed.data.sources import read_source
from synthmed.data.splits import duplicate_pairs, make_splits, subset_indices
from synthmed.errors import DataError
from synthmed.io import atomic_write_csv, atomic_write_json, pixel_hash
from synthmed.layout import RunLayout

SPLIT_COLUMNS = ["id", "split", "label", "class_name", "in_train_subset"]


def load_data(cfg: DataConfig, run_dir: Path | None = None, echo_warnings: bool = True) -> RealData:
    """Load the real data described by ``cfg``; warnings go to ``RealData.warnings`` (and stderr)."""
    raw = read_source(cfg)
    warn = list(raw.warnings)
    split = make_splits(raw.labels, raw.split, raw.groups, cfg)
    full = ImageSet(raw.images, raw.labels, raw.ids)
    sets = {s: full.subset(np.flatnonzero(split == s)) for s in ("train", "val", "test")}
    for s in ("train", "val", "test"):
        if len(sets[s]) == 0:
            raise DataError(f"{cfg.source}: the {s} split is empty (too few images? lower data.val_fraction/test_fraction or add images)")
    pool = sets["train"]
    exact = eval_duplicate_mask(pool, sets["val"], sets["test"], cfg, warn)
    near, near_report = near_duplicate_mask(pool, sets["val"], sets["test"], cfg, warn, skip=exact)
    usable = np.flatnonzero(~(exact | near))
    keep = subset_indices(pool.labels[usable], raw.classes, cfg, warn)
    train = pool.subset(usable[keep])
    excluded = sorted(set(pool.ids) - {pool.ids[i] for i in usable.tolist()})
    subset_applied = cfg.shots is not None or cfg.long_tail is not None or cfg.fraction is not None

    policy = dict(raw.policy, source=cfg.source)
    data = RealData(raw.classes, train, sets["val"], sets["test"], pool, cfg.source, policy, warn,
                    subset_applied=subset_applied, excluded_ids=excluded)
    data.near_duplicates = near_report  # type: ignore[attr-defined]  # (a RealData field once dataset.py has it)
    if echo_warnings:
        for w in warn:
            print(f"warning: {w}", file=sys.stderr)
    if run_dir is not None:
        layout = RunLayout(run_dir)
        write_or_check_split(data, layout.split)
        atomic_write_json(neardup_report_path(run_dir), near_report)
    return data


def neardup_report_path(run_dir: str | Path) -> Path:
    """Where ``load_data`` writes the near-duplicate report of a run (read by the report)."""
    return RunLayout(run_dir).near_duplicates


def near_duplicate_mask(pool: ImageSet, val: ImageSet, test: ImageSet, cfg: DataConfig, warn: list[str],
                        skip: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Mark the training-split images that nearly copy a val or test image (pHash, ``data.near_duplicate_distance``).

    Returns the mask and the report (counts per split and examples). Exact copies (``skip``) are counted by
    :func:`eval_duplicate_mask` and left out here. Under ``strict`` a near-duplicate is an error.
    """
    distance = neardup.resolve_distance(cfg.near_duplicate_distance)
    keep = np.flatnonzero(~skip) if skip is not None else np.arange(len(pool))
    drop = np.zeros(len(pool), dtype=bool)
    found = []
    if len(keep):
        cand = neardup.phash_shifted(pool.images[keep])
        cand_ok = neardup.informative(pool.images[keep])
        ids = [pool.ids[i] for i in keep.tolist()]
        for name, other in (("val", val), ("test", test)):
            hit = neardup.find(cand, ids, neardup.phash(other.images), other.ids, distance, name,
                               cand_ok=cand_ok, held_ok=neardup.informative(other.images))
            found.append(hit)
            drop[keep[hit.mask]] = True
    else:
        found = [neardup.NearDuplicates(n, distance, np.zeros(0, bool)) for n in ("val", "test")]
    msg = neardup.message(found, "train split")
    if msg is not None:
        if cfg.strict:
            raise DataError(msg + "; remove them from the train split, lower data.near_duplicate_distance or drop --strict")
        warn.append(msg + f"; {int(drop.sum())} such train image(s) removed from training")
    return drop, neardup.report(found, "train split vs val/test", int(drop.sum()))


def eval_duplicate_mask(pool: ImageSet, val: ImageSet, test: ImageSet, cfg: DataConfig, warn: list[str]) -> np.ndarray:
    """Mark the training-split images whose pixels equal a val or test image: they are never used for training.

    Val and test are frozen first and never change; a training copy of an evaluation image would leak it into the
    classifier and the generator, so it goes (with a warning; an error under ``strict``).
    """
    drop = np.zeros(len(pool), dtype=bool)
    pool_hashes = [pixel_hash(img) for img in pool.images]  # each image is hashed once
    for name, other in (("val", val), ("test", test)):
        other_hashes = [pixel_hash(img) for img in other.images]
        pairs = duplicate_pairs(pool_hashes, pool.ids, other_hashes, other.ids)
        if not pairs:
            continue
        a, b = pairs[0]
        msg = (f"{len(pairs)} {name} image(s) have exact pixel duplicates in the train split "
               f"(e.g. train '{a}' = {name} '{b}')")
        if cfg.strict:
            raise DataError(msg + "; remove the duplicates or drop --strict")
        hashes = set(other_hashes)
        hit = np.array([h in hashes for h in pool_hashes], dtype=bool)
        drop |= hit
        warn.append(msg + f"; {int(hit.sum())} such train image(s) removed from training")
    return drop


def split_rows(data: RealData) -> list[dict[str, str]]:
    in_sub = set(data.train.ids)
    rows = []
    for s, part in (("train", data.train_pool), ("val", data.val), ("test", data.test)):
        for i, y in zip(part.ids, part.labels.tolist()):
            rows.append({"id": i, "split": s, "label": str(y), "class_name": data.classes[y],
                         "in_train_subset": "1" if s == "train" and i in in_sub else "0"})  # fmt: skip
    return rows


def read_split_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames != SPLIT_COLUMNS:
                raise DataError(f"{path}: unexpected columns {reader.fieldnames} (expected {','.join(SPLIT_COLUMNS)})")
            return list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: unreadable split file ({err}); use a new run dir") from None


def write_or_check_split(data: RealData, path: Path) -> Path:
    """Write ``split.csv``, or check that an existing one chose exactly the same ids."""
    rows = split_rows(data)
    if path.exists():
        old = read_split_csv(path)
        if old != rows:
            diff = _first_difference(old, rows)
            raise DataError(
                f"{path} was written for a different data config ({diff}); use a new run dir (-o) "
                f"or delete {path.parent} to re-split"
            )
        return path
    atomic_write_csv(path, rows, SPLIT_COLUMNS)
    return path


def _first_difference(old: list[dict[str, str]], new: list[dict[str, str]]) -> str:
    before = {r.get("id"): r for r in old}
    for b in new:
        a = before.get(b["id"])
        if a is None:
            return f"id '{b['id']}' is new"
        if a != b:
            key = next(k for k in SPLIT_COLUMNS if a.get(k) != b.get(k))
            return f"id '{b['id']}': {key} was '{a.get(key)}', now '{b.get(key)}'"
    return f"{len(old)} rows on disk, {len(new)} now"
