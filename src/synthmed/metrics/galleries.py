"""PNG galleries of the quality stage: good/poor synthetic images per class, real vs synthetic, closest copies."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from synthmed.io import atomic_write_bytes

GALLERY_DIR = "galleries"


def safe_name(name: str) -> str:
    """A class name usable as a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "class"


def save_grid(images: Sequence[np.ndarray], path: str | Path, titles: Sequence[str] | None = None,
              ncol: int = 8, suptitle: str | None = None, cell: float = 1.3) -> Path:
    """Save uint8 HWC images as a titled grid PNG (atomically); an empty list gives a 'no images' panel."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = max(len(images), 1)
    ncol = max(1, min(ncol, n))
    nrow = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(cell * ncol, (cell + 0.25) * nrow + (0.4 if suptitle else 0)),
                             squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k < len(images):
            img = np.asarray(images[k])
            if img.ndim == 3 and img.shape[2] == 1:
                ax.imshow(img[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            else:
                ax.imshow(img, interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[k], fontsize=6)
        elif not images and k == 0:
            ax.text(0.5, 0.5, "no images", ha="center", va="center", fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
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
