"""Mixing policies: which real and which (kept) synthetic images a classifier trains on, and how.

The exact definitions are in docs/mixing.md; :func:`plan_mix` implements them. Subsets of synthetic (and, for
``ratio``, real) images are drawn per class with a generator seeded by the training seed, so a (policy, seed) pair
always trains on the same images.

``augment`` (DA-Fusion-style, Trabucco et al. ICLR 2024) keeps the real training set and, per sample and epoch,
replaces a real image with probability ``mix.augment_p`` by one of its synthetic variants: the kept synthetic images
whose manifest ``source`` (or, for older sets, ``source_image``) names that real image. When no kept synthetic image
names a real training image, a same-class synthetic image is used instead and a warning says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from synthmed.classifiers.config import MixConfig
from synthmed.classifiers.imbalance import balanced_order
from synthmed.data.dataset import ImageSet
from synthmed.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Mode = Literal["concat", "batch_ratio", "weighted_loss", "pretrain_then_finetune", "augment"]


@dataclass
class MixPlan:
    """The training images of one run and how the training loop uses them."""

    policy: str
    mode: Mode
    real: ImageSet
    synthetic: ImageSet
    batch_ratio: float = 0.0
    weight_lambda: float = 1.0
    pretrain_fraction: float = 0.5
    warnings: list[str] = field(default_factory=list)
    requested: list[int] | None = None  # synthetic images asked for per class (None: the policy sets no count)
    real_all: ImageSet | None = None  # the whole real training set given to plan_mix (priors, cRT); None: ``real``
    synthetic_weight: float = 1.0  # loss weight of a synthetic sample (concat, batch_ratio and augment modes)
    augment_p: float = 0.0  # augment mode: replacement probability of a real sample
    variants: list[np.ndarray] | None = None  # augment mode: synthetic indices a real sample may be replaced by

    @property
    def real_training_set(self) -> ImageSet:
        """The real training images of the run (before any policy subsampled or dropped them)."""
        return self.real if self.real_all is None else self.real_all

    @property
    def n_real(self) -> int:
        return len(self.real)

    @property
    def n_synthetic(self) -> int:
        return len(self.synthetic)

    def combined(self) -> ImageSet:
        """Real followed by synthetic images (the training set of the ``concat`` mode)."""
        parts = [s for s in (self.real, self.synthetic) if len(s)]
        return ImageSet.concat(parts) if parts else self.real


def needs_synthetic(mix: MixConfig) -> bool:
    """Whether this mix trains on synthetic images (see ``classifiers.policies.uses_synthetic``)."""
    from synthmed.classifiers.policies import uses_synthetic

    return uses_synthetic(mix)


def empty_like(s: ImageSet) -> ImageSet:
    return ImageSet(np.zeros((0, *s.images.shape[1:]), np.uint8), np.zeros(0, np.int64), [])


def largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Split the integer ``total`` in proportion to ``weights`` (Hamilton / largest-remainder rounding)."""
    w = np.asarray(weights, dtype=np.float64)
    if total <= 0 or w.sum() <= 0:
        return np.zeros(len(w), dtype=np.int64)
    exact = total * w / w.sum()
    out = np.floor(exact).astype(np.int64)
    rest = total - int(out.sum())
    order = np.argsort(-(exact - out), kind="stable")
    out[order[:rest]] += 1
    return out


def take_per_class(pool: ImageSet, wanted: np.ndarray, rng: np.random.Generator, shortage: str,
                   what: str, warnings: list[str]) -> ImageSet:
    """``wanted[c]`` images of each class c drawn without replacement from ``pool`` (ordered by class)."""
    picked: list[np.ndarray] = []
    for c, k in enumerate(np.asarray(wanted, dtype=np.int64).tolist()):
        if k <= 0:
            continue
        idx = np.flatnonzero(pool.labels == c)
        if len(idx) < k:
            msg = f"{what}: class {c} needs {k} kept synthetic images but only {len(idx)} exist"
            if shortage == "error":
                raise DataError(msg + " (generate more, loosen the filter, or set mix.shortage=take_all)")
            warnings.append(msg + "; using all of them")
            log.warning(warnings[-1])
            k = len(idx)
        picked.append(np.sort(rng.choice(idx, size=k, replace=False)))
    if not picked:
        return empty_like(pool)
    return pool.subset(np.concatenate(picked))


def _check_synthetic(real: ImageSet, synthetic: ImageSet | None, policy: str) -> ImageSet:
    if synthetic is None:
        raise DataError(f"mix.policy={policy} needs the synthetic set")
    if len(synthetic) and synthetic.images.shape[1:3] != real.images.shape[1:3]:
        raise DataError(f"synthetic images are {synthetic.size} but real ones {real.size}: regenerate at data.size")
    if len(synthetic) and synthetic.channels != real.channels:
        imgs = synthetic.images
        imgs = np.repeat(imgs, 3, axis=3) if imgs.shape[3] == 1 else imgs.mean(axis=3, keepdims=True).round().astype(np.uint8)
        synthetic = ImageSet(np.ascontiguousarray(imgs), synthetic.labels, synthetic.ids)
    return synthetic


def plan_mix(mix: MixConfig, real: ImageSet, synthetic: ImageSet | None, n_classes: int, seed: int,
             sources: Sequence[str] | None = None, class_names: Sequence[str] | None = None) -> MixPlan:
    """Apply ``mix.policy`` to the real training set and the kept synthetic images (see docs/mixing.md).

    ``sources[i]`` is the id of the real training image synthetic image i was made from ("" when none; read by
    ``augment`` only); ``class_names`` resolve ``mix.ratio_classes`` (read by ``ratio`` only)."""
    if not needs_synthetic(mix):
        return MixPlan(mix.policy, "concat", real, empty_like(real), real_all=real)
    syn = _check_synthetic(real, synthetic, mix.policy)
    if mix.policy == "augment":
        out = _plan_augment(mix, real, syn, n_classes, sources)
    else:
        out = _plan_synthetic(mix, real, syn, n_classes, seed, class_names)
    out.real_all, out.synthetic_weight = real, mix.synthetic_weight
    return out


def _plan_synthetic(mix: MixConfig, real: ImageSet, syn: ImageSet, n_classes: int, seed: int,
                    class_names: Sequence[str] | None = None) -> MixPlan:
    policy = mix.policy
    warnings: list[str] = []
    rng = np.random.default_rng([seed, 7919])
    real_counts = np.bincount(real.labels, minlength=n_classes)
    syn_counts = np.bincount(syn.labels, minlength=n_classes) if len(syn) else np.zeros(n_classes, np.int64)
    if policy == "add_per_class":
        wanted = np.full(n_classes, mix.add_per_class)
        chosen = take_per_class(syn, wanted, rng, mix.shortage, "add_per_class", warnings)
        return MixPlan(policy, "concat", real, chosen, warnings=warnings, requested=wanted.tolist())
    if policy == "balance_to":
        wanted = np.maximum(mix.balance_to - real_counts, 0)
        chosen = take_per_class(syn, wanted, rng, mix.shortage, "balance_to", warnings)
        return MixPlan(policy, "concat", real, chosen, warnings=warnings, requested=wanted.tolist())
    if policy == "ratio":
        named = ratio_class_mask(mix, n_classes, class_names)
        if mix.ratio_mode == "replace":
            return _plan_ratio_replace(mix, real, syn, real_counts, syn_counts, named, rng, warnings)
        return _plan_ratio(mix, real, syn, real_counts, syn_counts, rng, warnings, named)
    if policy == "synthetic_only":
        if not len(syn):
            raise DataError("synthetic_only: the synthetic set has no kept images")
        return MixPlan(policy, "concat", empty_like(real), syn, warnings=warnings)
    if not len(syn):
        raise DataError(f"{policy}: the synthetic set has no kept images")
    if policy == "batch_ratio":
        return MixPlan(policy, "batch_ratio", real, syn, batch_ratio=mix.batch_ratio, warnings=warnings)
    if policy == "weighted_loss":
        return MixPlan(policy, "weighted_loss", real, syn, weight_lambda=mix.weight_lambda, warnings=warnings)
    if policy == "pretrain_then_finetune":
        return MixPlan(policy, "pretrain_then_finetune", real, syn, pretrain_fraction=mix.pretrain_fraction,
                       warnings=warnings)
    raise DataError(f"unknown mix.policy {policy}")  # pragma: no cover


def ratio_class_mask(mix: MixConfig, n_classes: int, class_names: Sequence[str] | None) -> np.ndarray:
    """Which classes ``mix.ratio`` applies to: ``mix.ratio_classes`` resolved by name, or every class."""
    if mix.ratio_classes is None:
        return np.ones(n_classes, dtype=bool)
    if class_names is None:
        raise ConfigError("mix.ratio_classes needs the class names, which this caller did not pass to plan_mix")
    names = list(class_names)
    unknown = [c for c in mix.ratio_classes if c not in names]
    if unknown:
        raise ConfigError(f"mix.ratio_classes: unknown class '{unknown[0]}' (classes: {', '.join(names)})")
    mask = np.zeros(n_classes, dtype=bool)
    mask[[names.index(c) for c in mix.ratio_classes]] = True
    return mask


def _pick_real(real: ImageSet, keep: np.ndarray, rng: np.random.Generator) -> ImageSet:
    """``keep[c]`` real images of each class c, drawn without replacement (all of them when keep[c] = n_c)."""
    real_idx = np.concatenate([
        np.sort(rng.choice(np.flatnonzero(real.labels == c), size=int(k), replace=False))
        for c, k in enumerate(keep.tolist()) if k > 0
    ] or [np.zeros(0, np.int64)])
    return real.subset(real_idx)


def _plan_ratio(mix: MixConfig, real: ImageSet, syn: ImageSet, real_counts: np.ndarray, syn_counts: np.ndarray,
                rng: np.random.Generator, warnings: list[str], named: np.ndarray) -> MixPlan:
    """``ratio_mode: add``: synthetic share R of the named classes' images (all classes: of the training set); real
    kept whole when enough synthetic images exist."""
    r = mix.ratio
    counts = np.where(named, real_counts, 0)
    if r >= 1.0:  # the named classes synthetic only, as many images as their real ones, in their real proportions
        wanted = largest_remainder(int(counts.sum()), counts)
        chosen = take_per_class(syn, wanted, rng, mix.shortage, "ratio=1", warnings)
        kept = real.subset(np.flatnonzero(~named[real.labels])) if not named.all() else empty_like(real)
        return MixPlan("ratio", "concat", kept, chosen, warnings=warnings, requested=wanted.tolist())
    total_syn = int(round(r / (1.0 - r) * int(counts.sum())))
    wanted = largest_remainder(total_syn, counts)
    requested = wanted.tolist()
    short = wanted > syn_counts
    if not short.any():
        return MixPlan("ratio", "concat", real, take_per_class(syn, wanted, rng, "error", "ratio", warnings),
                       warnings=warnings, requested=wanted.tolist())
    if mix.shortage == "error":
        c = int(np.flatnonzero(short)[0])
        raise DataError(f"ratio={r}: class {c} needs {int(wanted[c])} kept synthetic images but only "
                        f"{int(syn_counts[c])} exist (set mix.shortage=take_all to subsample real images instead)")
    # take_all: in short classes use every synthetic image and subsample real so the class keeps the ratio R
    real_keep = real_counts.copy()
    for c in np.flatnonzero(short):
        wanted[c] = syn_counts[c]
        real_keep[c] = int(round(syn_counts[c] * (1.0 - r) / r))
    msg = (f"ratio={r}: too few synthetic images in classes {np.flatnonzero(short).tolist()}; "
           f"their real images were subsampled to keep the ratio")
    warnings.append(msg)
    log.warning(msg)
    kept = _pick_real(real, real_keep, rng)
    chosen = take_per_class(syn, wanted, rng, "error", "ratio", warnings)
    return MixPlan("ratio", "concat", kept, chosen, warnings=warnings, requested=requested)


def _plan_ratio_replace(mix: MixConfig, real: ImageSet, syn: ImageSet, real_counts: np.ndarray,
                        syn_counts: np.ndarray, named: np.ndarray, rng: np.random.Generator,
                        warnings: list[str]) -> MixPlan:
    """``ratio_mode: replace``: in each named class c, ``floor(R n_c + 1/2)`` real images (a seeded draw) are replaced
    by as many synthetic ones, so the class keeps n_c images; other classes keep their real images and get none."""
    r = mix.ratio
    wanted = np.where(named, np.floor(r * real_counts + 0.5), 0).astype(np.int64)
    real_keep = real_counts - wanted
    requested = wanted.tolist()
    short = np.flatnonzero(wanted > syn_counts)
    if len(short) and mix.shortage == "error":
        c = int(short[0])
        raise DataError(f"ratio={r} (replace): class {c} needs {int(wanted[c])} kept synthetic images but only "
                        f"{int(syn_counts[c])} exist (generate more, or set mix.shortage=take_all)")
    if len(short):  # take_all: every synthetic image of the class, and real images cut so its share stays R
        for c in short:
            wanted[c] = syn_counts[c]
            real_keep[c] = min(int(round(syn_counts[c] * (1.0 - r) / r)), int(real_counts[c]))
        msg = (f"ratio={r} (replace): too few synthetic images in classes {short.tolist()}; all were used and "
               f"their real images cut to keep the share R (those classes are smaller)")
        warnings.append(msg)
        log.warning(msg)
    kept = _pick_real(real, real_keep, rng)
    chosen = take_per_class(syn, wanted, rng, "error", "ratio", warnings)
    return MixPlan("ratio", "concat", kept, chosen, warnings=warnings, requested=requested)


def _plan_augment(mix: MixConfig, real: ImageSet, syn: ImageSet, n_classes: int,
                  sources: Sequence[str] | None) -> MixPlan:
    """Each real image's variants: the synthetic images made from it, else (no source anywhere) its class's."""
    if not len(syn):
        raise DataError("augment: the synthetic set has no kept images")
    if sources is not None and len(sources) != len(syn):
        raise DataError(f"augment: {len(sources)} source ids for {len(syn)} synthetic images")
    where = {id_: i for i, id_ in enumerate(real.ids)}
    src = [where.get(s or "", -1) for s in (sources if sources is not None else [""] * len(syn))]
    matched = np.flatnonzero(np.asarray(src) >= 0)
    warnings: list[str] = []
    if len(matched):
        keep = syn.subset(matched)
        owner = np.asarray(src)[matched]
        bad = int((keep.labels != real.labels[owner]).sum())
        if bad:
            raise DataError(f"augment: {bad} synthetic images have a different class from their source image")
        by_real: list[np.ndarray] = [np.zeros(0, np.int64)] * len(real)
        order = np.argsort(owner, kind="stable")
        for r, start, stop in _runs(owner[order]):
            by_real[r] = order[start:stop]
        n_with = sum(1 for v in by_real if len(v))
        if n_with < len(real):
            warnings.append(f"augment: {len(real) - n_with} of {len(real)} real training images have no synthetic "
                            "variant and are never replaced")
    else:
        keep = syn
        per_class = [np.flatnonzero(syn.labels == c) for c in range(n_classes)]
        by_real = [per_class[c] for c in real.labels.tolist()]
        warnings.append("augment: no kept synthetic image names a real training image as its source (manifest "
                        "`source`); real images are replaced by random same-class synthetic images instead")
    for w in warnings:
        log.warning(w)
    return MixPlan("augment", "augment", real, keep, warnings=warnings, augment_p=mix.augment_p, variants=by_real)


def _runs(sorted_keys: np.ndarray) -> list[tuple[int, int, int]]:
    """(key, start, stop) of each run of equal values in a sorted array."""
    if not len(sorted_keys):
        return []
    cuts = np.flatnonzero(np.diff(sorted_keys)) + 1
    starts = np.concatenate([[0], cuts])
    stops = np.concatenate([cuts, [len(sorted_keys)]])
    return [(int(sorted_keys[a]), int(a), int(b)) for a, b in zip(starts, stops)]


def augment_replacements(real_idx: np.ndarray, plan: MixPlan, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split a batch of real indices into (kept real, replacing synthetic) indices: each real sample that has a
    variant is replaced with probability ``plan.augment_p`` by one of its variants, drawn uniformly."""
    assert plan.variants is not None
    coins = rng.random(len(real_idx)) < plan.augment_p
    keep, syn = [], []
    for i, flip in zip(real_idx.tolist(), coins.tolist()):
        options = plan.variants[i]
        if flip and len(options):
            syn.append(int(options[int(rng.integers(len(options)))]))
        else:
            keep.append(i)
    return np.asarray(keep, np.int64), np.asarray(syn, np.int64)


def batch_ratio_counts(batch_size: int, ratio: float) -> tuple[int, int]:
    """(real, synthetic) images per batch of the ``batch_ratio`` policy: round(R * B) synthetic."""
    n_syn = int(round(ratio * batch_size))
    return batch_size - n_syn, n_syn


def batch_ratio_batches(n_real: int, n_syn: int, batch_size: int, ratio: float, rng: np.random.Generator,
                        balance: tuple[np.ndarray, np.ndarray, int] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """One epoch of ``batch_ratio`` batches: one pass over the real images (or the synthetic ones when R = 1);
    synthetic images are drawn from a reshuffled cycle so each is used about equally often.

    ``balance = (real labels, synthetic labels, n_classes)`` (``imbalance.method: resample``): the real part and the
    synthetic part of every batch are class-balanced draws (with replacement) instead of shuffles."""
    b_real, b_syn = batch_ratio_counts(batch_size, ratio)

    def shuffle(n: int, labels: np.ndarray | None) -> np.ndarray:
        return rng.permutation(n) if balance is None or labels is None else balanced_order(labels, balance[2], rng)

    if b_real == 0 or n_real == 0:
        order = shuffle(n_syn, balance[1] if balance else None)
        return [(np.zeros(0, np.int64), order[i:i + batch_size]) for i in range(0, n_syn, batch_size)]
    real_order = shuffle(n_real, balance[0] if balance else None)
    real_parts = [real_order[i:i + b_real] for i in range(0, n_real, b_real)]
    # a short last batch keeps the ratio: round(k * R / (1 - R)) synthetic images next to its k real ones
    syn_sizes = [b_syn if len(p) == b_real else int(round(len(p) * ratio / (1.0 - ratio))) for p in real_parts]
    need = sum(syn_sizes)
    cycles = int(np.ceil(need / max(n_syn, 1)))
    stream = (np.concatenate([shuffle(n_syn, balance[1] if balance else None) for _ in range(cycles)]) if need
              else np.zeros(0, np.int64))
    out, start = [], 0
    for part, k in zip(real_parts, syn_sizes):
        out.append((part, stream[start:start + k]))
        start += k
    return out
