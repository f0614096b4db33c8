"""The generator folder contract: what every generator kind writes into ``RunLayout.generator``.

A generator folder holds, whatever the kind:

* ``synthmed.json`` (:data:`METADATA`): ``kind`` (a registry key), ``classes`` (index order = labels),
  ``fingerprint`` (hash of everything that determines the weights: a finished generator with the same fingerprint
  is not retrained), ``model_sha256`` or per-adapter sha256s, ``training_images`` (= :data:`TRAINING_IMAGES`) and
  the kind's own metadata (training summary, image geometry, data source ...);
* ``generator_config.json`` (:data:`CONFIG`): ``{"kind", "settings", "seed"}``, the kind's config section
  (``generator.<kind>``) the weights were trained with;
* ``training_images.csv`` (:data:`TRAINING_IMAGES`): one row per real image the generator saw, columns
  :data:`TRAINING_COLUMNS` (``id`` as in the data split, ``label``, ``class_name``, ``pixel_hash`` =
  ``synthmed.io.pixel_hash``). The leakage guard (``classifiers/guards.py``) refuses val/test images listed here;
  the memorization audit (``metrics/memorization.py``) compares synthetic images with them; real-image guidance
  (``generation.guide``) draws its sources from them;
* the weights, in safetensors only, in the kind's layout: ``unet/`` + ``scheduler/`` (ddpm, diffusers layout),
  ``lora/<class>/pytorch_lora_weights.safetensors`` or ``unet/`` (stable_diffusion) ...

The folder is written under a temp name and renamed into place by the generator stage, so a folder named
``generator`` is always whole. Packages that may not import ``synthmed.generators`` (classifiers, metrics) read the
CSV through ``RunLayout(run_dir).generator / "training_images.csv"``; the columns above are what they may rely on.

Sampling outputs (manifest columns), by contrast, are the synthetic-set contract in ``synthmed.synthetic``.

Optional members of a generator class that the stage uses when present (not part of ``base.Generator``):
``supports_guidance: ClassVar[bool]`` (``sample`` honours ``SampleOptions.sources`` / ``strength``; without it
``generation.strength`` / ``guide`` is refused), ``supports_precision: ClassVar[bool]`` (``sample`` honours
``SampleOptions.precision``; without it ``generation.precision=bf16`` is refused), ``image_shape`` ((H, W, C) it
makes: checked against the data) and ``batch_group(label) -> str`` (the writer batches only labels of one group
together, e.g. one LoRA adapter).
``provenance(options)`` values that are lists are per class (indexed by label).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from synthmed.data.dataset import ImageSet
from synthmed.errors import DataError, MissingStageError
from synthmed.io import atomic_write_csv, pixel_hash

METADATA = "synthmed.json"
CONFIG = "generator_config.json"
TRAINING_IMAGES = "training_images.csv"
TRAINING_COLUMNS = ["id", "label", "class_name", "pixel_hash"]
TRAINING_LOG = "training_log.csv"  # step, loss of the training steps this process ran (after a resume: from there)


def write_training_log(folder: str | Path, losses: list[float], first_step: int = 1) -> Path:
    """``training_log.csv`` (step, loss): the generator's loss curve, which the report plots."""
    path = Path(folder) / TRAINING_LOG
    atomic_write_csv(path, ({"step": first_step + i, "loss": f"{v:.6g}"} for i, v in enumerate(losses)),
                     ["step", "loss"])
    return path


def write_training_images(folder: str | Path, train: ImageSet, classes: list[str] | None = None) -> Path:
    """Write ``folder/training_images.csv`` for the images of ``train`` (the generator's training images)."""
    path = Path(folder) / TRAINING_IMAGES
    names = list(classes or [])
    rows = ({"id": i, "label": int(y), "class_name": names[int(y)] if names else "", "pixel_hash": pixel_hash(a)}
            for i, y, a in zip(train.ids, train.labels, train.images))
    atomic_write_csv(path, rows, TRAINING_COLUMNS)
    return path


def read_training_images(folder: str | Path) -> list[dict[str, str]]:
    """Rows of ``folder/training_images.csv`` (``label`` stays a string); a missing file is a DataError."""
    path = Path(folder) / TRAINING_IMAGES
    if not path.is_file():
        raise DataError(f"{path} missing: rerun `synthmed finetune`")
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def read_metadata(folder: str | Path, kind: str | None = None) -> dict[str, Any]:
    """``synthmed.json`` of a generator folder; checks the kind when given. Missing folder: MissingStageError."""
    path = Path(folder) / METADATA
    if not path.is_file():
        raise MissingStageError(f"generator ({Path(folder)})", "finetune")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise DataError(f"{path}: not valid JSON") from None
    if kind is not None and meta.get("kind") != kind:
        raise DataError(f"{Path(folder)} holds a '{meta.get('kind')}' generator, not {kind}: rerun `synthmed finetune`")
    return meta


def stored_fingerprint(folder: str | Path) -> str | None:
    """The ``fingerprint`` a finished generator folder was trained with (None when absent or unreadable)."""
    try:
        meta = json.loads((Path(folder) / METADATA).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    fp = meta.get("fingerprint") or meta.get("training", {}).get("fingerprint")
    return str(fp) if fp else None


def stored_kind(folder: str | Path) -> str:
    """The ``kind`` of a saved generator folder (MissingStageError when there is none)."""
    return str(read_metadata(folder).get("kind", ""))
