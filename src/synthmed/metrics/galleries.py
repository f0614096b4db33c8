"""PNG galleries of the quality stage: good/poor synthetic images per class, real vs synthetic, closest copies."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from synthmed.io import atomic_write_bytes

if TYPE_CHECKING:
    from PIL import Image

GALLERY_DIR = "galleries"


def safe_name(name: str) -> str:
    """A class name usable as a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "class"


def _cell(img: np.ndarray, px: int) -> Image.Image:
    from PIL import Image

    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    im = Image.fromarray(arr).convert("RGB")
    scale = px / max(im.size)
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), resample)


def save_grid(images: Sequence[np.ndarray], path: str | Path, titles: Sequence[str] | None = None,
              ncol: int = 8, suptitle: str | None = None, cell: int = 96) -> Path:
    """Save uint8 HWC images as a captioned grid PNG (atomically); an empty list gives a 'no images' panel."""
    from PIL import Image, ImageDraw

    n = max(len(images), 1)
    ncol = max(1, min(ncol, n))
    nrow = (n + ncol - 1) // ncol
    cap, pad, head = (14 if titles is not None else 0), 4, (18 if suptitle else 0)
    width = max(ncol * (cell + pad) + pad, 6 * len(suptitle or "") + 2 * pad)
    canvas = Image.new("RGB", (width, head + nrow * (cell + cap + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    if suptitle:
        draw.text((pad, 3), suptitle, fill="black")
    for k in range(len(images)):
        r, c = divmod(k, ncol)
        x, y = pad + c * (cell + pad), head + pad + r * (cell + cap + pad)
        if titles is not None:
            draw.text((x, y), str(titles[k])[: max(4, cell // 6)], fill="black")
        canvas.paste(_cell(images[k], cell), (x, y + cap))
    if not images:
        draw.text((pad, head + pad + cell // 2), "no images", fill="black")
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", compress_level=6)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def class_galleries(images: np.ndarray, labels: np.ndarray, confidences: np.ndarray, classes: Sequence[str],
                    out_dir: str | Path, k: int = 8, real_images: np.ndarray | None = None,
                    real_labels: np.ndarray | None = None) -> dict[str, dict[str, str]]:
    """Per class: top-k ``<class>_good.png`` and bottom-k ``<class>_poor.png`` by confidence (and real vs synthetic)."""
    out_dir = Path(out_dir)
    written: dict[str, dict[str, str]] = {}
    for c, name in enumerate(classes):
        idx = np.flatnonzero(labels == c)
        order = idx[np.argsort(-confidences[idx], kind="stable")]
        files = {}
        for kind, sel in (("good", order[:k]), ("poor", order[::-1][:k])):
            p = save_grid([images[i] for i in sel], out_dir / f"{safe_name(name)}_{kind}.png",
                          [f"p={confidences[i]:.2f}" for i in sel], ncol=k,
                          suptitle=f"{name}: {'most' if kind == 'good' else 'least'} confident synthetic images")
            files[kind] = p.name
        if real_images is not None and real_labels is not None:
            real_idx = np.flatnonzero(real_labels == c)[:k]
            syn = [images[i] for i in idx[:k]]
            grid = [real_images[i] for i in real_idx] + syn
            titles = ["real"] * len(real_idx) + ["synthetic"] * len(syn)
            p = save_grid(grid, out_dir / f"{safe_name(name)}_real_vs_synthetic.png", titles, ncol=k,
                          suptitle=f"{name}: real (top) vs synthetic (bottom)")
            files["real_vs_synthetic"] = p.name
        written[name] = files
    return written


def closest_pairs(syn_images: np.ndarray, train_images: np.ndarray, distances: np.ndarray, nn_index: np.ndarray,
                  syn_ids: Sequence[str], path: str | Path, n: int = 12, flags: np.ndarray | None = None) -> Path:
    """The n synthetic images closest to a training image, each next to its nearest training image."""
    order = np.argsort(distances, kind="stable")[:n]
    grid, titles = [], []
    for i in order.tolist():
        mark = " COPY" if flags is not None and flags[i] else ""
        grid += [syn_images[i], train_images[nn_index[i]]]
        titles += [f"{Path(syn_ids[i]).stem}{mark}", f"train d={distances[i]:.4f}"]
    return save_grid(grid, path, titles, ncol=6, suptitle="closest synthetic / training pairs (pixel RMS distance)")
