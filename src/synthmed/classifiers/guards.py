"""Leakage guards: no synthetic image and no generator-training image may reach val or test.

Checked by id (``synthetic/...`` ids; ids in ``RUN_DIR/generator/training_images.csv``) and by pixel hash
(:func:`synthmed.io.pixel_hash`) of synthetic and generator-training images against every val/test image.
"""

from __future__ import annotations

import csv
from pathlib import Path

from synthmed.data.dataset import ImageSet
from synthmed.errors import LeakageError
from synthmed.io import pixel_hash

GENERATOR_TRAINING_CSV = Path("generator") / "training_images.csv"


def image_hashes(s: ImageSet) -> dict[str, str]:
    """pixel hash -> id of every image of a set."""
    return {pixel_hash(s.images[i]): s.ids[i] for i in range(len(s))}


def read_generator_training(run_dir: str | Path) -> tuple[set[str], set[str]]:
    """(ids, pixel hashes) listed in ``RUN_DIR/generator/training_images.csv`` (empty when the file is absent)."""
    path = Path(run_dir) / GENERATOR_TRAINING_CSV
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
