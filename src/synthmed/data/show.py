"""``data show``: a PNG grid with one labelled row per class (written atomically)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from synthmed.data.dataset import RealData
from synthmed.io import atomic_write_bytes


def save_grid(data: RealData, out: Path, per_class: int = 8, seed: int = 0) -> Path:
    """One row per class: a class-name label, then up to ``per_class`` training images (pool if the subset is short)."""
    out = Path(out)
    src = data.train_pool if len(data.train_pool) else data.train
    h, w = src.size
    cell = max(h, w, 48)
    gap = 2
    font = ImageFont.load_default()
    label_w = max(80, 7 * max(len(c) for c in data.classes) + 10)
    canvas = Image.new("RGB", (label_w + per_class * (cell + gap), len(data.classes) * (cell + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    rng = np.random.default_rng(seed)
    for c, name in enumerate(data.classes):
        y0 = c * (cell + gap)
        idx = np.flatnonzero(src.labels == c)
        n = len(idx)
        draw.text((4, y0 + cell // 2 - 6), f"{name} ({n})", fill="black", font=font)
        pick = idx[rng.permutation(n)[:per_class]] if n else []
        for k, i in enumerate(pick):
            arr = src.images[i]
            im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).convert("RGB")
            if (h, w) != (cell, cell):
                s = cell / max(h, w)
                im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.NEAREST)
            canvas.paste(im, (label_w + k * (cell + gap), y0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    if out.suffix.lower() != ".png":
        out = out.with_suffix(out.suffix + ".png") if out.suffix else out.with_suffix(".png")
    atomic_write_bytes(out, buf.getvalue())
    return out
