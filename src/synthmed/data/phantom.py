"""``phantom:blood``: a procedural blood-smear look-alike that needs no download.

Each image shows a pinkish background with a few pale red blood cells and one white cell (or, for the platelet
class, a small cluster of platelets). The class decides the nucleus shape (round, bilobed, kidney, multi-lobed,
small and dense ...), the granules, the cytoplasm colour and the cell size; every image also gets its own
position, rotation, size jitter, stain variation, blur and noise. Rendering is vectorised numpy over a batch of
images, and the result is a pure function of ``(n_classes, n_per_class, size, seed)``.

The class order follows BloodMNIST; ``n_classes < 8`` keeps the first ``n_classes`` of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PHANTOM_CLASSES = [
    "basophil", "eosinophil", "erythroblast", "immature granulocytes",
    "lymphocyte", "monocyte", "neutrophil", "platelet",
]  # fmt: skip

MAX_LOBES = 6
MAX_RBC = 6


@dataclass(frozen=True)
class _Kind:
    """How one class looks (colours RGB 0-255; lengths in units of the image half-width)."""

    cell_r: float  # white-cell radius (0 = no white cell)
    cyto: tuple[int, int, int]
    nucleus: tuple[int, int, int]
    layout: str  # round | bilobed | kidney | multi | oval | fragments
    nuc_r: float  # nucleus (or lobe) radius as a fraction of cell_r
    gran: tuple[int, int, int] = (0, 0, 0)
    gran_density: float = 0.0
    gran_over_nucleus: bool = False


_KINDS = {
    "basophil": _Kind(0.44, (175, 140, 195), (85, 45, 120), "bilobed", 0.42, (55, 20, 85), 0.40, True),
    "eosinophil": _Kind(0.47, (240, 180, 150), (95, 55, 135), "bilobed", 0.33, (225, 105, 65), 0.50),
    "erythroblast": _Kind(0.30, (205, 165, 190), (45, 18, 65), "round", 0.66),
    "immature granulocytes": _Kind(0.56, (190, 175, 215), (125, 75, 160), "oval", 0.62, (150, 90, 175), 0.12),
    "lymphocyte": _Kind(0.35, (145, 170, 230), (80, 42, 125), "round", 0.84),
    "monocyte": _Kind(0.57, (190, 185, 220), (135, 90, 170), "kidney", 0.58, (250, 245, 250), 0.05),
    "neutrophil": _Kind(0.47, (228, 198, 218), (95, 50, 140), "multi", 0.22, (185, 135, 190), 0.18),
    "platelet": _Kind(0.0, (0, 0, 0), (135, 80, 175), "fragments", 0.0),
}


def phantom_classes(n_classes: int) -> list[str]:
    """The first ``n_classes`` class names (BloodMNIST order)."""
    if not 2 <= n_classes <= len(PHANTOM_CLASSES):
        raise ValueError(f"phantom n_classes must be 2..{len(PHANTOM_CLASSES)}, got {n_classes}")
    return PHANTOM_CLASSES[:n_classes]


def make_phantom(
    n_classes: int = 8, n_per_class: int = 120, size: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Render ``n_classes * n_per_class`` images; returns (uint8 (N, size, size, 3), int64 labels, class names).

    Images are interleaved by class (0, 1, ..., C-1, 0, 1, ...), so any prefix is roughly balanced.
    """
    classes = phantom_classes(n_classes)
    if size < 8:
        raise ValueError(f"phantom size must be >= 8, got {size}")
    n = n_classes * n_per_class
    labels = np.tile(np.arange(n_classes, dtype=np.int64), n_per_class)
    rng = np.random.default_rng([seed, n_classes, size, 0x5EED])
    params = _sample_params(rng, labels, classes)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    chunk = max(1, 1_500_000 // (size * size))
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        out[sl] = _render({k: v[sl] for k, v in params.items()}, size, rng)
    return out, labels, classes


# ------------------------------------------------------------------------------------------------ parameters


def _sample_params(rng: np.random.Generator, labels: np.ndarray, classes: list[str]) -> dict[str, np.ndarray]:
    """Per-image geometry and colours, drawn in one fixed order (deterministic by the generator state)."""
    n = len(labels)
    kinds = [_KINDS[c] for c in classes]
    table = lambda f: np.array([f(k) for k in kinds], dtype=np.float64)[labels]  # noqa: E731
    cell_r = table(lambda k: k.cell_r) * rng.uniform(0.88, 1.12, n)
    cx, cy = rng.uniform(-0.1, 0.1, n), rng.uniform(-0.1, 0.1, n)
    theta = rng.uniform(0, 2 * np.pi, n)
    nuc_r = table(lambda k: k.nuc_r) * rng.uniform(0.9, 1.1, n)

    # lobes in the cell frame (units of cell_r), then rotated and placed
    lx = np.zeros((n, MAX_LOBES))
    ly = np.zeros((n, MAX_LOBES))
    lr = np.zeros((n, MAX_LOBES))
    cut_x, cut_y, cut_r = np.zeros(n), np.zeros(n), np.zeros(n)
    layout = np.array([k.layout for k in kinds])[labels]
    n_multi = rng.integers(3, 6, n)
    n_frag = rng.integers(2, 6, n)
    frag_xy = rng.uniform(-0.28, 0.28, (n, MAX_LOBES, 2))
    frag_r = rng.uniform(0.05, 0.09, (n, MAX_LOBES))
    wobble = rng.uniform(-0.06, 0.06, (n, MAX_LOBES, 2))
    for i in range(n):  # cheap: a few numbers per image
        lay, r = layout[i], nuc_r[i]
        if lay == "round":
            lx[i, 0], ly[i, 0], lr[i, 0] = wobble[i, 0, 0], wobble[i, 0, 1], r
        elif lay == "oval":  # large, eccentric, two overlapping discs
            lx[i, :2], ly[i, :2], lr[i, :2] = [0.12, -0.12], [0.05, -0.05], [r, r * 0.9]
        elif lay == "bilobed":
            lx[i, :3], ly[i, :3], lr[i, :3] = [-0.42, 0.42, 0.0], [0.05, 0.05, -0.1], [r, r, r * 0.35]
        elif lay == "kidney":
            lx[i, 0], ly[i, 0], lr[i, 0] = -0.05, 0.0, r
            cut_x[i], cut_y[i], cut_r[i] = r * 0.95, 0.0, r * 0.55
        elif lay == "multi":
            k = n_multi[i]
            ang = np.linspace(-1.9, 1.9, k) + wobble[i, :k, 0] * 3
            lx[i, :k] = 0.5 * np.cos(ang) - 0.1
            ly[i, :k] = 0.5 * np.sin(ang)
            lr[i, :k] = r
        elif lay == "fragments":
            k = n_frag[i]
            lx[i, :k], ly[i, :k], lr[i, :k] = frag_xy[i, :k, 0], frag_xy[i, :k, 1], frag_r[i, :k]
    frag = layout == "fragments"
    scale = np.where(frag, 1.0, cell_r)[:, None]
    lx, ly, lr = lx + np.where(frag[:, None], 0, wobble[:, :, 0] * 0.3), ly, lr * scale
    cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]
    px = cx[:, None] + scale * (lx * cos - ly * sin)
    py = cy[:, None] + scale * (lx * sin + ly * cos)
    cut_px = cx + cell_r * (cut_x * cos[:, 0] - cut_y * sin[:, 0])
    cut_py = cy + cell_r * (cut_x * sin[:, 0] + cut_y * cos[:, 0])

    # red blood cells around (drawn first, partly hidden by the white cell)
    n_rbc = rng.integers(2, MAX_RBC + 1, n)
    rbc_ang = rng.uniform(0, 2 * np.pi, (n, MAX_RBC))
    rbc_dist = rng.uniform(0.55, 1.15, (n, MAX_RBC))
    rbc_r = rng.uniform(0.22, 0.3, (n, MAX_RBC)) * (np.arange(MAX_RBC)[None, :] < n_rbc[:, None])

    def colour(f, jitter: float) -> np.ndarray:
        base = np.array([f(k) for k in kinds], dtype=np.float64)[labels]
        return np.clip(base + rng.normal(0, jitter, base.shape), 0, 255)

    return {
        "cx": cx, "cy": cy, "cell_r": np.where(frag, 0.0, cell_r),
        "lobe_x": px, "lobe_y": py, "lobe_r": lr,
        "cut_x": cut_px, "cut_y": cut_py, "cut_r": cut_r * cell_r,
        "rbc_x": rbc_dist * np.cos(rbc_ang), "rbc_y": rbc_dist * np.sin(rbc_ang), "rbc_r": rbc_r,
        "bg": np.clip(np.array([238.0, 220.0, 214.0]) + rng.normal(0, 5, (n, 3)), 0, 255),
        "rbc_col": np.clip(np.array([222.0, 150.0, 150.0]) + rng.normal(0, 8, (n, 3)), 0, 255),
        "cyto": colour(lambda k: k.cyto, 8),
        "nucleus": colour(lambda k: k.nucleus, 8),
        "gran": colour(lambda k: k.gran, 6),
        "gran_density": table(lambda k: k.gran_density) * rng.uniform(0.8, 1.2, n),
        "gran_over": table(lambda k: float(k.gran_over_nucleus)),
        "stain": rng.normal(1.0, 0.035, (n, 3)),
        "bright": rng.normal(0.0, 6.0, n),
        "blur": rng.uniform(0.0, 1.0, n),
        "noise": rng.uniform(1.5, 5.0, n),
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ rendering


def _disc(dx: np.ndarray, dy: np.ndarray, r: np.ndarray, edge: float) -> np.ndarray:
    """Soft disc mask in [0, 1]; ``r`` broadcasts against ``dx``."""
    d = np.sqrt(dx * dx + dy * dy)
    return np.clip((r - d) / edge + 0.5, 0.0, 1.0) * (r > 0)


def _over(img: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Alpha-composite a flat colour (N, 3) with mask (N, H, W) over img (N, H, W, 3)."""
    a = alpha[..., None]
    return img * (1 - a) + colour[:, None, None, :] * a


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over the two image axes of (N, H, W, C) (reflect padding)."""
    if sigma <= 0.05:
        return x
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="reflect", truncate=2.5)


def _render(p: dict[str, np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    n = len(p["cx"])
    f32 = np.float32
    coords = ((np.arange(size, dtype=f32) + 0.5) / size) * 2 - 1
    gx = coords[None, None, :]
    gy = coords[None, :, None]
    edge = f32(3.0 / size)

    def col(name: str) -> np.ndarray:
        return p[name].astype(f32)

    img = np.broadcast_to(col("bg")[:, None, None, :], (n, size, size, 3)).astype(f32)

    # red blood cells: union of soft discs with a pale centre
    rbc_alpha = np.zeros((n, size, size), f32)
    for j in range(MAX_RBC):
        dx = gx - col("rbc_x")[:, j, None, None]
        dy = gy - col("rbc_y")[:, j, None, None]
        r = col("rbc_r")[:, j, None, None]
        m = _disc(dx, dy, r, edge)
        pale = 1 - 0.45 * np.exp(-(dx * dx + dy * dy) / np.maximum(0.25 * r * r, 1e-6))
        rbc_alpha = np.maximum(rbc_alpha, m * pale * 0.85)
    img = _over(img, col("rbc_col"), rbc_alpha)

    # white cell: cytoplasm, nucleus (union of lobes minus cut-out), granules
    cell = _disc(gx - col("cx")[:, None, None], gy - col("cy")[:, None, None], col("cell_r")[:, None, None], edge)
    nuc = np.zeros((n, size, size), f32)
    for j in range(MAX_LOBES):
        m = _disc(gx - col("lobe_x")[:, j, None, None], gy - col("lobe_y")[:, j, None, None],
                  col("lobe_r")[:, j, None, None], edge)  # fmt: skip
        nuc = np.maximum(nuc, m)
    cut = _disc(gx - col("cut_x")[:, None, None], gy - col("cut_y")[:, None, None], col("cut_r")[:, None, None], edge)
    nuc = nuc * (1 - cut)

    # granules: coarse uniform noise (about 1 px at 32 px), thresholded by the class density
    g = max(1, round(size / 36))
    low = -(-size // g)
    u = rng.random((n, low, low), dtype=f32)
    u = np.repeat(np.repeat(u, g, axis=1), g, axis=2)[:, :size, :size]
    gran = (u < col("gran_density")[:, None, None]).astype(f32)
    over = col("gran_over")[:, None, None]
    gran_alpha = gran * cell * (1 - nuc * (1 - over)) * 0.9

    shade = 1 + 0.12 * (rng.random((n, low, low), dtype=f32) - 0.5)  # chromatin texture
    shade = np.repeat(np.repeat(shade, g, axis=1), g, axis=2)[:, :size, :size, None]
    img = _over(img, col("cyto"), cell)
    img = img * (1 - nuc[..., None]) + (col("nucleus")[:, None, None, :] * shade) * nuc[..., None]
    img = _over(img, col("gran"), gran_alpha)

    # stain variation, blur (per-image mix of a light and a stronger blur), noise
    img = img * col("stain")[:, None, None, :] + col("bright")[:, None, None, None]
    s = size / 32.0
    light, strong = _blur(img, 0.35 * s), _blur(img, 0.9 * s)
    b = col("blur")[:, None, None, None]
    img = light * (1 - b) + strong * b
    img = img + rng.standard_normal(img.shape, dtype=f32) * col("noise")[:, None, None, None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
