"""Near-duplicate guard: a 64-bit DCT perceptual hash and vectorised Hamming distances (numpy + scipy only).

The exact guard (``io.pixel_hash``) finds pixel-for-pixel copies only. A re-encoded (JPEG), slightly shifted,
resized or brightened copy of an image has different pixels but nearly the same low-frequency content, which the
pHash captures: grayscale -> box-resample to 32x32 -> 2-D DCT -> the 128 lowest frequencies after DC (zig-zag
order) -> one bit per coefficient (above their median). The training side is hashed under the nine 1-pixel shifts
(the best one counts), so a shifted copy is found too. Two images whose hashes differ in at most
``data.near_duplicate_distance`` of the 128 bits (default :data:`DEFAULT_DISTANCE`) count as near-duplicates.
(64 bits from the 8x8 block separated near-copies from distinct BloodMNIST cells too poorly: docs/errors.md.)

Hashes are packed in two ``uint64`` each; distances are ``popcount(a ^ b)`` over chunks of pairs, so 12k train x
5k val/test images take well under a second. Near-duplicates of val/test images are removed from *training* (never
from val/test), reported, and under ``data.strict`` are an error. The false-positive rate measured on the real
BloodMNIST val/test split is in docs/errors.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.fft import dctn

HASH_NAME = "dct-phash-128"
REPORT_NAME = "near_duplicates.json"  # in RUN_DIR/data/ (RunLayout.near_duplicates once layout.py has it)
BITS = 128
DEFAULT_DISTANCE = 16  # bits out of 128; calibrated on BloodMNIST val/test (docs/errors.md)
SHIFTS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 0), (0, 1), (1, -1), (1, 0), (1, 1))
_SIDE = 32
MIN_STD = 2.0  # grey-level standard deviation (0-255) below which an image counts as flat (see informative)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# the 128 lowest DCT frequencies after DC, in zig-zag order (u + v, then u)
_ORDER = sorted(((u, v) for u in range(16) for v in range(16)), key=lambda p: (p[0] + p[1], p[0]))[1 : BITS + 1]
_U = np.array([p[0] for p in _ORDER])
_V = np.array([p[1] for p in _ORDER])
_WEIGHTS = 2 ** np.arange(63, -1, -1, dtype=np.uint64)


def _box_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of an area (box) resample: each output pixel averages the input span it covers."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    lo, hi = edges[:-1, None], edges[1:, None]
    pix = np.arange(n_in, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(hi, pix + 1) - np.maximum(lo, pix), 0.0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def _as_nhwc(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4) or min(images.shape[1:3], default=0) < 1:
        raise ValueError(f"images must be (N, H, W, C) with C in 1, 3, 4; got {images.shape}")
    return images


def phash(images: np.ndarray, batch: int = 1024) -> np.ndarray:
    """128-bit DCT perceptual hashes of images ``(N, H, W[, C])`` -> ``uint64 (N, 2)``."""
    images = _as_nhwc(images)
    n, h, w, c = images.shape
    rh, rw = _box_matrix(h, _SIDE), _box_matrix(w, _SIDE)
    out = np.empty((n, BITS // 64), dtype=np.uint64)
    for s in range(0, n, batch):
        x = images[s : s + batch].astype(np.float32)
        gray = x[..., 0] if c == 1 else x[..., :3] @ _LUMA
        small = np.einsum("ih,nhw,jw->nij", rh, gray, rw, optimize=True)
        coef = dctn(small, type=2, axes=(1, 2), norm="ortho")[:, _U, _V]
        bits = (coef > np.median(coef, axis=1, keepdims=True)).astype(np.uint64).reshape(len(gray), -1, 64)
        out[s : s + batch] = (bits * _WEIGHTS).sum(axis=2, dtype=np.uint64)
    return out


def shifted(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The images moved by (dy, dx) pixels (|d| <= 1), edges replicated."""
    images = _as_nhwc(images)
    h, w = images.shape[1:3]
    pad = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    return pad[:, 1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]


def phash_shifted(images: np.ndarray) -> np.ndarray:
    """Hashes of the images under every 1-pixel shift in :data:`SHIFTS`: ``uint64 (len(SHIFTS), N, 2)``.

    Hashing one side under small shifts makes the distance tolerant to a copy shifted by a pixel (a plain pHash
    of a 28-pixel image moves by 10-20 bits under a 1-pixel shift)."""
    return np.stack([phash(shifted(images, dy, dx)) for dy, dx in SHIFTS])


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All pairwise Hamming distances ``(len(a), len(b))`` (uint8) of packed hashes ``(n, words)``."""
    a, b = np.asarray(a, np.uint64), np.asarray(b, np.uint64)
    out = np.bitwise_count(a[:, None, 0] ^ b[None, :, 0])
    for w in range(1, a.shape[1]):
        out += np.bitwise_count(a[:, None, w] ^ b[None, :, w])
    return out


def within(a: np.ndarray, b: np.ndarray, distance: int, chunk_pairs: int = 1_000_000) -> tuple[np.ndarray, np.ndarray]:
    """For every hash in ``a`` (``(n, w)``, or ``(v, n, w)`` shift variants: the best one counts): the smallest
    Hamming distance to ``b`` when it is ``<= distance`` (else ``BITS + 1``) and its index into ``b`` (else -1).

    Vectorised and chunked: the first 64-bit word is compared for all pairs (its distance is a lower bound of the
    whole), and only the pairs within ``distance`` there get the other words compared."""
    a = np.asarray(a, np.uint64)
    a = a[None] if a.ndim == 2 else a
    b = np.asarray(b, np.uint64)
    n = a.shape[1]
    dist = np.full(n, BITS + 1, dtype=np.int32)
    idx = np.full(n, -1, dtype=np.int64)
    if n == 0 or len(b) == 0:
        return dist, idx
    rows = max(1, chunk_pairs // len(b))
    b0 = b[:, 0]
    buf = np.empty((rows, len(b)), dtype=np.uint64)
    cnt = np.empty((rows, len(b)), dtype=np.uint8)
    for variant in a:
        for s in range(0, n, rows):
            part = variant[s : s + rows]
            k = len(part)
            np.bitwise_xor(part[:, 0, None], b0[None, :], out=buf[:k])
            np.bitwise_count(buf[:k], out=cnt[:k])
            r, c = np.nonzero(cnt[:k] <= distance)  # candidate pairs: word 0 alone is within the distance
            if len(r) == 0:
                continue
            tot = cnt[:k][r, c].astype(np.int32)
            for w in range(1, b.shape[1]):
                tot += np.bitwise_count(part[r, w] ^ b[c, w]).astype(np.int32)
            ok = tot <= distance
            r, c, tot = r[ok], c[ok], tot[ok]
            order = np.lexsort((tot, r))  # per row, the closest pair first
            r, c, tot = r[order], c[order], tot[order]
            rows_hit, first = np.unique(r, return_index=True)
            pos = s + rows_hit
            better = tot[first] < dist[pos]
            dist[pos[better]] = tot[first][better]
            idx[pos[better]] = c[first][better]
    return dist, idx


@dataclass
class NearDuplicates:
    """Near-duplicate pairs between a candidate set (training side) and a held-out set (val or test)."""

    held_out: str
    distance: int
    mask: np.ndarray  # candidates within ``distance`` of some held-out image
    pairs: list[tuple[str, str, int]] = field(default_factory=list)  # (candidate id, held-out id, bits)

    @property
    def count(self) -> int:
        return int(self.mask.sum())


def informative(images: np.ndarray, min_std: float = MIN_STD) -> np.ndarray:
    """Whether each image has enough structure for its pHash to mean anything: a flat (single-colour) image has
    no AC energy, so its hash bits are arbitrary and would match every other flat image. Flat images are left to the
    exact-pixel guard."""
    images = _as_nhwc(images)
    if len(images) == 0:
        return np.zeros(0, dtype=bool)
    x = images.astype(np.float32)
    gray = x[..., 0] if x.shape[3] == 1 else x[..., :3] @ _LUMA
    return gray.reshape(len(gray), -1).std(axis=1) >= min_std


def find(cand_hashes: np.ndarray, cand_ids: list[str], held_hashes: np.ndarray, held_ids: list[str],
         distance: int, held_out: str, cand_ok: np.ndarray | None = None,
         held_ok: np.ndarray | None = None) -> NearDuplicates:
    """The candidates within ``distance`` bits of a held-out image, with their closest held-out partner.

    ``cand_ok`` / ``held_ok`` (see :func:`informative`) leave images without structure out of the comparison."""
    held_pos = np.arange(len(held_ids)) if held_ok is None else np.flatnonzero(held_ok)
    dist, idx = within(cand_hashes, np.asarray(held_hashes)[held_pos], distance)
    mask = dist <= distance
    if cand_ok is not None:
        mask &= np.asarray(cand_ok, dtype=bool)
    pairs = [(cand_ids[i], held_ids[int(held_pos[idx[i]])], int(dist[i])) for i in np.flatnonzero(mask).tolist()]
    return NearDuplicates(held_out, int(distance), mask, pairs)


def resolve_distance(value: int | None) -> int:
    """``data.near_duplicate_distance`` or the documented default."""
    return DEFAULT_DISTANCE if value is None else int(value)


def report(found: list[NearDuplicates], what: str, removed: int, examples: int = 5) -> dict[str, Any]:
    """The JSON-able summary written into the data summary / the report: counts per held-out split + examples."""
    out: dict[str, Any] = {"hash": HASH_NAME, "distance": found[0].distance if found else None, "what": what,
                           "removed": int(removed), "per_split": {}, "examples": []}
    for f in found:
        out["per_split"][f.held_out] = f.count
        for cand, held, bits in sorted(f.pairs, key=lambda p: p[2])[:examples]:
            out["examples"].append({"candidate": cand, "held_out": held, "split": f.held_out, "bits": bits})
    return out


def message(found: list[NearDuplicates], what: str) -> str | None:
    """One line for a warning / error, or None when nothing was found."""
    hits = [f for f in found if f.count]
    if not hits:
        return None
    first = hits[0]
    cand, held, bits = min(first.pairs, key=lambda p: p[2])
    counts = ", ".join(f"{f.count} of {f.held_out}" for f in hits)
    return (f"{what}: near-duplicates of val/test images ({counts}; pHash distance <= {first.distance}; "
            f"e.g. '{cand}' ~ {first.held_out} '{held}', {bits} bits)")
