"""The on-disk synthetic set: ``RUN_DIR/synthetic/<class_name>/<id>.png`` plus ``manifest.csv``.

Every generator writes this format and every consumer (quality, filter, mixing, report) reads it. PNGs are written
atomically, so a file that exists is complete; the manifest is rewritten atomically. The ``kept`` column (set by the
quality gate) decides which images training may use.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.data.dataset import ImageSet
from synthmed.errors import DataError, MissingStageError
from synthmed.io import atomic_write_csv
from synthmed.layout import RunLayout

SYNTHETIC_DIR = RunLayout(".").synthetic.name  # ids of synthetic images start with "synthetic/"
MANIFEST_COLUMNS = [
    "id", "path", "label", "class_name", "seed", "generator", "sampler", "steps", "guidance", "model_sha256",
    "prompt", "strength", "source_image", "guide", "adapter", "precision", "kept", "filter_reason", "confidence",
]


def image_seed(base_seed: int, class_index: int, index: int) -> int:
    """The seed of image ``index`` of class ``class_index``: independent of batch size and of earlier images."""
    digest = hashlib.sha256(f"synthmed:{base_seed}:{class_index}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def image_id(class_index: int, index: int) -> str:
    return f"c{class_index:02d}_{index:06d}"


def _parse_bool(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes")


class SyntheticSet:
    """Read/write access to ``RUN_DIR/synthetic``."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        layout = RunLayout(self.run_dir)
        self.root = layout.synthetic
        self.manifest_path = layout.manifest

    # ------------------------------------------------------------------ paths
    def relpath(self, class_name: str, id_: str) -> str:
        return f"{class_name}/{id_}.png"

    def abspath(self, relpath: str) -> Path:
        return self.root / relpath

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    # ------------------------------------------------------------------ manifest
    def read_manifest(self) -> list[dict[str, Any]]:
        """Rows of the manifest (``kept`` parsed to bool, ``label`` to int). Exit 2 when the set is missing."""
        import csv

        if not self.exists():
            raise MissingStageError(f"synthetic set ({self.manifest_path})", "generate")
        with open(self.manifest_path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        for row in rows:
            try:
                row["label"] = int(row["label"])
            except (KeyError, ValueError):
                raise DataError(f"{self.manifest_path}: bad label in row {row.get('id')!r}") from None
            row["kept"] = _parse_bool(row.get("kept", "true") or "true")
        return rows

    def write_manifest(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        extra = [k for r in rows for k in r if k not in MANIFEST_COLUMNS]
        columns = MANIFEST_COLUMNS + sorted(set(extra))
        atomic_write_csv(self.manifest_path, rows, columns)

    # ------------------------------------------------------------------ images
    def load(self, kept_only: bool = True, rows: Sequence[dict[str, Any]] | None = None) -> ImageSet:
        """Load the synthetic images as an ImageSet (ids are ``synthetic/<relpath>``)."""
        from PIL import Image

        rows = self.read_manifest() if rows is None else rows
        if kept_only:
            rows = [r for r in rows if r["kept"]]
        images, labels, ids = [], [], []
        for row in rows:
            path = self.abspath(row["path"])
            try:
                with Image.open(path) as im:
                    arr = np.asarray(im)
            except (OSError, ValueError) as err:
                raise DataError(f"synthetic image {path}: unreadable ({err.__class__.__name__})") from None
            if arr.ndim == 2:
                arr = arr[:, :, None]
            images.append(arr)
            labels.append(int(row["label"]))
            ids.append(f"{SYNTHETIC_DIR}/{row['path']}")
        if not images:
            return ImageSet(np.zeros((0, 1, 1, 1), np.uint8), np.zeros(0, np.int64), [])
        shapes = {a.shape for a in images}
        if len(shapes) != 1:
            raise DataError(f"{self.root}: synthetic images differ in shape {sorted(shapes)[:3]}")
        return ImageSet(np.stack(images), np.asarray(labels), ids)
