"""Real-only splits, training subsets and the train/val/test leakage guard.

Protocol: a source's own val/test are kept; missing ones are carved out of the rest with a stratified split
(``split_seed``; group-aware when groups exist, so no group spans two splits). Val and test are frozen before
any subset is drawn. Subsets (``shots``, ``long_tail``, ``fraction``) come from the train split only and are
nested by construction: each class's pool is permuted once with ``subset_seed`` and a subset takes its prefix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from synthmed.data.config import DataConfig
from synthmed.errors import ConfigError, DataError


def _stratified(labels: np.ndarray, idx: np.ndarray, fracs: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split ``idx`` into len(fracs) parts with per-class proportions ``fracs``; the remainder is the last part."""
    rng = np.random.default_rng([seed, 1729])
    parts: list[list[int]] = [[] for _ in range(len(fracs) + 1)]
    for c in np.unique(labels[idx]):
        members = idx[labels[idx] == c]
        members = members[rng.permutation(len(members))]
        n = len(members)
        counts = [int(round(f * n)) for f in fracs]
        if n >= len(fracs) + 1:  # every split gets at least one image of every class when possible
            counts = [max(1, k) for k in counts]
        while sum(counts) > n - 1 and any(counts):  # keep >= 1 in the remainder (train)
            counts[int(np.argmax(counts))] -= 1
        start = 0
        for j, k in enumerate(counts):
            parts[j] += members[start : start + k].tolist()
            start += k
        parts[-1] += members[start:].tolist()
    return [np.sort(np.asarray(p, np.int64)) for p in parts]


def _grouped(labels: np.ndarray, groups: np.ndarray, idx: np.ndarray, fracs: Sequence[float], seed: int) -> list[np.ndarray]:
    """Greedy group assignment: largest groups first, each to the part whose per-class quota is least filled."""
    rng = np.random.default_rng([seed, 4242])
    n_classes = int(labels.max()) + 1
    uniq, inv = np.unique(groups[idx], return_inverse=True)
    hist = np.zeros((len(uniq), n_classes))
    np.add.at(hist, (inv, labels[idx]), 1)
    total = hist.sum(axis=0)
    shares = np.asarray(list(fracs) + [1.0 - sum(fracs)])
    target = shares[:, None] * total[None, :]
    have = np.zeros_like(target)
    order = sorted(range(len(uniq)), key=lambda g: (-hist[g].sum(), rng.random()))
    assign = np.empty(len(uniq), np.int64)
    for g in order:
        need = (target - have) / np.maximum(target, 1e-9)
        score = (need * hist[g][None, :]).sum(axis=1) / hist[g].sum()
        j = int(np.argmax(score))
        assign[g] = j
        have[j] += hist[g]
    return [np.sort(idx[assign[inv] == j]) for j in range(len(shares))]


def make_splits(labels: np.ndarray, given: Sequence[str] | None, groups: Sequence[str] | None, cfg: DataConfig) -> np.ndarray:
    """One of 'train' / 'val' / 'test' per image (object array)."""
    n = len(labels)
    out = np.array(list(given) if given is not None else ["train"] * n, dtype=object)
    if given is not None and "train" not in set(out.tolist()):
        raise DataError(f"the source's split has no train images (splits found: {sorted(set(out.tolist()))})")
    missing = [s for s in ("val", "test") if s not in set(out.tolist())]
    g = np.asarray(groups, dtype=object) if groups is not None else None
    if missing:
        _carve(out, labels, g, missing, given is not None, cfg)
    if g is not None:
        seen: dict[str, str] = {}
        for i in range(n):
            prev = seen.setdefault(g[i], out[i])
            if prev != out[i]:
                raise DataError(f"group '{g[i]}' appears in both {prev} and {out[i]} (fixed splits in the CSV must keep groups together)")
    return out


def _carve(out: np.ndarray, labels: np.ndarray, g: np.ndarray | None, missing: list[str], fixed: bool, cfg: DataConfig) -> None:
    """Assign the ``missing`` splits (val and/or test) out of the current train images, in place."""
    n = len(out)
    pool = np.flatnonzero(out == "train")
    fracs = [cfg.val_fraction if s == "val" else cfg.test_fraction for s in missing]
    if fixed:  # carve from an existing train split: fractions of the whole
        fracs = [min(f * n / max(len(pool), 1), 0.45) for f in fracs]
    parts = _grouped(labels, g, pool, fracs, cfg.split_seed) if g is not None else _stratified(labels, pool, fracs, cfg.split_seed)
    for s, part in zip(missing, parts[:-1]):
        out[part] = s


# ------------------------------------------------------------------------------------------------ subsets


def _class_orders(labels: np.ndarray, n_classes: int, seed: int) -> list[np.ndarray]:
    """Positions (into ``labels``) of each class, permuted once by ``subset_seed``."""
    orders = []
    for c in range(n_classes):
        pos = np.flatnonzero(labels == c)
        rng = np.random.default_rng([seed, c, 77])
        orders.append(pos[rng.permutation(len(pos))])
    return orders


def long_tail_counts(n_classes: int, ratio: float, max_per_class: int) -> list[int]:
    """n_i = max_per_class * ratio ** (-i / (C - 1)), rounded, at least 1 (rank i = 0 is the head)."""
    if n_classes == 1:
        return [max_per_class]
    return [max(1, int(round(max_per_class * ratio ** (-i / (n_classes - 1))))) for i in range(n_classes)]


def subset_indices(labels: np.ndarray, classes: list[str], cfg: DataConfig, warn: list[str]) -> np.ndarray:
    """Positions into the train pool kept by shots / long_tail / fraction (all of them when none is set)."""
    chosen = [k for k in ("shots", "long_tail", "fraction") if getattr(cfg, k) is not None]
    if len(chosen) > 1:
        raise ConfigError(f"data.{chosen[0]} and data.{chosen[1]} cannot be combined: choose one training subset")
    n_classes = len(classes)
    if not chosen:
        return np.arange(len(labels))
    orders = _class_orders(labels, n_classes, cfg.subset_seed)
    avail = [len(o) for o in orders]
    if cfg.shots is not None:
        short = [(classes[c], avail[c]) for c in range(n_classes) if avail[c] < cfg.shots]
        if short:
            name, have = short[0]
            raise DataError(f"data.shots={cfg.shots} but class '{name}' has only {have} training images")
        take = [cfg.shots] * n_classes
    elif cfg.long_tail is not None:
        lt = cfg.long_tail
        if lt.order is not None:
            unknown = [c for c in lt.order if c not in classes]
            if unknown:
                raise DataError(f"data.long_tail.order names unknown class '{unknown[0]}' (classes: {', '.join(classes)})")
            if len(set(lt.order)) != len(lt.order) or len(lt.order) != n_classes:
                raise DataError(f"data.long_tail.order must list each of the {n_classes} classes once")
            rank_of = [lt.order.index(c) for c in classes]
        else:
            perm = np.random.default_rng([cfg.subset_seed, 99]).permutation(n_classes)
            rank_of = [int(np.flatnonzero(perm == c)[0]) for c in range(n_classes)]
        want = long_tail_counts(n_classes, lt.ratio, lt.max_per_class)
        take = []
        for c in range(n_classes):
            k = want[rank_of[c]]
            if k > avail[c]:
                warn.append(f"long_tail: class '{classes[c]}' wants {k} images but has {avail[c]}; using {avail[c]}")
                k = avail[c]
            take.append(k)
    else:
        take = [max(1, int(round(cfg.fraction * a))) if a else 0 for a in avail]
    keep = np.concatenate([orders[c][: take[c]] for c in range(n_classes)])
    return np.sort(keep)


# ------------------------------------------------------------------------------------------------ leakage


def duplicate_pairs(train_hashes: Sequence[str], train_ids: Sequence[str], other_hashes: Sequence[str],
                    other_ids: Sequence[str]) -> list[tuple[str, str]]:
    """(train id, other id) pairs with identical pixels, from ``io.pixel_hash`` values computed once per image."""
    seen: dict[str, str] = {}
    for h, i in zip(train_hashes, train_ids):
        seen.setdefault(h, i)
    pairs = []
    for h, j in zip(other_hashes, other_ids):
        hit = seen.get(h)
        if hit is not None:
            pairs.append((hit, j))
    return pairs
