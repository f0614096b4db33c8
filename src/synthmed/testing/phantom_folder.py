"""A small class-per-folder image set (JPEGs, PBC-like folder names) rendered from the ``phantom:blood`` source.

Tests and smoke runs that need a ``folder:`` dataset (few-shot Stable Diffusion fine-tuning) use it instead of the
real PBC images in ``../shared``, so that they run on a fresh clone, offline::

    python -m synthmed.testing.phantom_folder runs/phantom-pbc --per-class 12

The content is a pure function of (classes, per_class, size, seed); JPEG encoding (PIL, quality 95) is deterministic.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

#: phantom class name -> folder name, as in the PBC dataset (``ig`` = immature granulocytes)
PBC_FOLDER_NAMES = {"immature granulocytes": "ig"}


def write_phantom_folder(out_dir: str | os.PathLike[str], classes: list[str] | None = None, per_class: int = 12,
                         size: int = 96, seed: int = 0) -> Path:
    """Write ``out_dir/<class>/<class>_<i>.jpg`` for the phantom ``classes`` (folder names; default all eight).

    ``out_dir`` is replaced when it exists (written to a temp folder, then renamed)."""
    from PIL import Image

    from synthmed.data.phantom import PHANTOM_CLASSES, make_phantom

    folders = [PBC_FOLDER_NAMES.get(c, c) for c in PHANTOM_CLASSES]
    wanted = list(classes) if classes is not None else folders
    unknown = [c for c in wanted if c not in folders]
    if unknown:
        raise ValueError(f"unknown phantom classes {unknown}; known: {folders}")
    images, labels, _ = make_phantom(len(PHANTOM_CLASSES), per_class, size, seed)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-" + out.name + ".", dir=out.parent))
    try:
        for name in wanted:
            k = folders.index(name)
            (tmp / name).mkdir()
            for i, img in enumerate(images[labels == k]):
                Image.fromarray(img).save(tmp / name / f"{name}_{i:03d}.jpg", quality=95)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Write a PBC-like class-per-folder JPEG set from the phantom source.")
    ap.add_argument("out_dir", help="folder to write (replaced if it exists)")
    ap.add_argument("--per-class", type=int, default=12)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    path = write_phantom_folder(args.out_dir, per_class=args.per_class, size=args.size, seed=args.seed)
    print(f"phantom folder written to {path}")


if __name__ == "__main__":
    main()
