"""Leakage guards: no synthetic image and no generator-training image may reach val or test.

Exact: checked by id (``synthetic/...`` ids; ids in ``RUN_DIR/generator/training_images.csv``) and by pixel hash
(:func:`synthmed.io.pixel_hash`) of synthetic and generator-training images against every val/test image
(:func:`check_no_leakage`, an error). Near: :func:`near_duplicate_guard` finds synthetic images and generator-training
images that nearly copy a val/test image (perceptual hash, ``data/neardup.py``): such synthetic images are dropped
from training with a warning, a generator that trained on a near-copy of a val/test image is a warning (retrain it);
both are errors under ``data.strict``.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.data import neardup
from synthmed.data.dataset import ImageSet
from synthmed.errors import LeakageError
from synthmed.io import pixel_hash
from synthmed.layout import RunLayout

GENERATOR_TRAINING_CSV = RunLayout(".").rel(RunLayout(".").generator_training_images)  # for messages


def image_hashes(s: ImageSet) -> dict[str, str]:
    """pixel hash -> id of every image of a set."""
    return {pixel_hash(s.images[i]): s.ids[i] for i in range(len(s))}


def read_generator_training(run_dir: str | Path) -> tuple[set[str], set[str]]:
    """(ids, pixel hashes) listed in ``RUN_DIR/generator/training_images.csv`` (empty when the file is absent)."""
    path = RunLayout(run_dir).generator_training_images
    if not path.is_file():
        return set(), set()
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {r["id"] for r in rows if r.get("id")}, {r["pixel_hash"] for r in rows if r.get("pixel_hash")}


def check_no_leakage(run_dir: str | Path | None, val: ImageSet, test: ImageSet,
                     synthetic: ImageSet | None = None) -> None:
    """Raise LeakageError if a synthetic or generator-training image is among the val/test images."""
    gen_ids, gen_hashes = read_generator_training(run_dir) if run_dir is not None else (set(), set())
    for name, s in (("val", val), ("test", test)):
        for id_ in s.ids:
            if id_.startswith("synthetic/"):
                raise LeakageError(f"{name} image '{id_}' is a synthetic image; val/test must be real only")
            if id_ in gen_ids:
                raise LeakageError(f"{name} image '{id_}' was used to train the generator "
                                   f"({GENERATOR_TRAINING_CSV}); val/test must be unseen by the generator")
        held = image_hashes(s)
        if gen_hashes:
            hit = next((h for h in gen_hashes if h in held), None)
            if hit is not None:
                raise LeakageError(f"{name} image '{held[hit]}' has the same pixels as a generator-training image")
        if synthetic is not None and len(synthetic):
            for i in range(len(synthetic)):
                h = pixel_hash(synthetic.images[i])
                if h in held:
                    raise LeakageError(f"synthetic image '{synthetic.ids[i]}' has the same pixels as {name} image "
                                       f"'{held[h]}'; refusing to train (the synthetic set holds a val/test image)")


def near_duplicate_guard(run_dir: str | Path | None, val: ImageSet, test: ImageSet, synthetic: ImageSet | None = None,
                         pool: ImageSet | None = None, distance: int | None = None, strict: bool = False,
                         echo: bool = True) -> tuple[ImageSet | None, dict[str, Any]]:
    """Near-copies of val/test images among the synthetic images and the generator's training images.

    Returns the synthetic set without its near-copies of val/test images (never val/test themselves) and a JSON-able
    report ``{"synthetic": {...}, "generator_training": {...}}`` (counts per split and examples). ``pool`` (the real
    training split) resolves the ids of ``training_images.csv`` to images. ``strict`` raises LeakageError instead.
    """
    dist = neardup.resolve_distance(distance)
    held = {name: (neardup.phash(s.images), s.ids, neardup.informative(s.images))
            for name, s in (("val", val), ("test", test)) if len(s)}
    out: dict[str, Any] = {}
    kept = synthetic
    if synthetic is not None and len(synthetic):
        cand, ok = neardup.phash_shifted(synthetic.images), neardup.informative(synthetic.images)
        found = [neardup.find(cand, synthetic.ids, h, ids, dist, name, cand_ok=ok, held_ok=h_ok)
                 for name, (h, ids, h_ok) in held.items()]
        drop = np.zeros(len(synthetic), bool)
        for f in found:
            drop |= f.mask
        msg = neardup.message(found, "synthetic set")
        if msg is not None:
            if strict:
                raise LeakageError(msg + "; refusing to train on them (data.strict)")
            _warn(msg + f"; {int(drop.sum())} synthetic image(s) left out of training", echo)
        kept = synthetic.subset(np.flatnonzero(~drop))
        out["synthetic"] = neardup.report(found, "synthetic vs val/test", int(drop.sum()))
    gen_ids, _ = read_generator_training(run_dir) if run_dir is not None else (set(), set())
    if gen_ids and pool is not None and len(pool):
        pos = [i for i, id_ in enumerate(pool.ids) if id_ in gen_ids]
        if pos:
            seen = pool.subset(pos)
            cand, ok = neardup.phash_shifted(seen.images), neardup.informative(seen.images)
            found = [neardup.find(cand, seen.ids, h, ids, dist, name, cand_ok=ok, held_ok=h_ok)
                     for name, (h, ids, h_ok) in held.items()]
            msg = neardup.message(found, "generator training images")
            if msg is not None:
                msg += "; the generator saw near-copies of evaluation images: retrain it (`synthmed run --force finetune`)"
                if strict:
                    raise LeakageError(msg + " (data.strict)")
                _warn(msg, echo)
            out["generator_training"] = neardup.report(found, "generator training images vs val/test", 0)
    return kept, out


def _warn(msg: str, echo: bool) -> None:
    if echo:
        print(f"warning: {msg}", file=sys.stderr)
