"""``data info``: describe any source without needing ``data.size``.

``describe_source(cfg)`` reads the source with ``facts_only`` (per image: native size, channels, mode, pixel hash;
no pixels kept), applies the same real-only split and training subset as ``load_data``, and returns the
``RealData.summary()`` shape plus an ``images`` section: native size, mode and channel histograms and the exact
duplicates found. ``format_info`` prints it as a table. Only stages that stack images need one size; they still
stop with a one-line error naming ``data.size``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from synthmed.data.config import DataConfig
from synthmed.data.names import display_name
from synthmed.data.raw import ImageFacts, array_facts
from synthmed.data.sources import read_source
from synthmed.data.splits import make_splits, subset_indices
from synthmed.errors import DataError

SPLIT_NAMES = ("train", "val", "test")


def _duplicates(facts: list[ImageFacts], ids: list[str], split: np.ndarray) -> dict[str, Any]:
    """Exact pixel duplicates: groups of identical images, within a split and across splits."""
    by_hash: dict[str, list[int]] = {}
    for i, f in enumerate(facts):
        by_hash.setdefault(f.hash, []).append(i)
    groups = [g for g in by_hash.values() if len(g) > 1]
    across = [g for g in groups if len({split[i] for i in g}) > 1]
    within = {s: sum(len([i for i in g if split[i] == s]) - 1 for g in groups if sum(split[i] == s for i in g) > 1)
              for s in SPLIT_NAMES}  # fmt: skip
    return {
        "groups": len(groups),
        "extra_copies": sum(len(g) - 1 for g in groups),
        "within_split": within,
        "across_splits": len(across),
        "examples": [[ids[i] for i in g[:3]] for g in (across or groups)[:3]],
    }


def _histogram(values: list[str]) -> dict[str, int]:
    return dict(sorted(Counter(values).items(), key=lambda kv: (-kv[1], kv[0])))


def describe_source(cfg: DataConfig) -> dict[str, Any]:
    """The ``data info --json`` dict for ``cfg``; works on mixed native sizes without ``data.size``.

    When the stages could load the source as configured (one native size, or ``data.size`` set) the counts are
    ``load_data``'s own (every leakage guard applied); otherwise they are computed here from the facts, with the
    exact-duplicate guard only, and the output says that the stages need ``data.size``.
    """
    raw = read_source(cfg, facts_only=True)
    facts = raw.facts if raw.facts is not None else array_facts(raw.images)  # type: ignore[arg-type]
    split = make_splits(raw.labels, raw.split, raw.groups, cfg)
    sizes = _histogram([f"{f.height}x{f.width}" for f in facts])
    uniform = len(sizes) == 1 or cfg.size is not None
    if uniform:
        from synthmed.data.load import load_data

        data = load_data(cfg, echo_warnings=False)
        out = data.summary()
        warn = list(data.warnings)
        near = getattr(data, "near_duplicates", None)
        if near is not None:
            out["near_duplicates"] = near
    else:
        out, warn = _counts_from_facts(raw, facts, split, cfg)
        out["image_policy"] = dict(raw.policy, source=cfg.source)
    out["images"] = {
        "count": len(facts),
        "native_sizes": sizes,
        "modes": _histogram([f.mode for f in facts]),
        "channels": _histogram([str(f.channels) for f in facts]),
        "uniform_size": uniform,
        "duplicates": _duplicates(facts, raw.ids, split),
    }
    out["source_splits"] = [s for s in SPLIT_NAMES if raw.split and s in set(raw.split)]
    shown = {c: display_name(c, cfg) for c in raw.classes}
    out["display_names"] = {c: n for c, n in shown.items() if n != c}
    out["warnings"] = warn
    return out


def _counts_from_facts(raw: Any, facts: list[ImageFacts], split: np.ndarray,
                       cfg: DataConfig) -> tuple[dict[str, Any], list[str]]:
    """Split and subset counts as ``load_data`` draws them, with the exact-duplicate guard (no pixels needed)."""
    warn = list(raw.warnings)
    n_classes = len(raw.classes)
    idx = {s: np.flatnonzero(split == s) for s in SPLIT_NAMES}
    for s in SPLIT_NAMES:
        if len(idx[s]) == 0:
            raise DataError(f"{cfg.source}: the {s} split is empty (too few images? lower data.val_fraction/test_fraction or add images)")
    held_out = {facts[i].hash for s in ("val", "test") for i in idx[s]}
    pool = idx["train"]
    dup = np.array([facts[i].hash in held_out for i in pool], dtype=bool)
    usable = pool[~dup]
    if dup.any():
        msg = f"{int(dup.sum())} train image(s) are exact pixel duplicates of val/test images"
        if cfg.strict:
            raise DataError(msg + "; remove the duplicates or drop --strict")
        warn.append(msg + "; they are removed from training")
    keep = usable[subset_indices(raw.labels[usable], raw.classes, cfg, warn)]
    subset_applied = cfg.shots is not None or cfg.long_tail is not None or cfg.fraction is not None

    def counts(members: np.ndarray) -> dict[str, Any]:
        return {"total": int(len(members)),
                "per_class": np.bincount(raw.labels[members], minlength=n_classes).astype(int).tolist()}

    out: dict[str, Any] = {"classes": list(raw.classes), "splits": {
        "train": counts(keep if subset_applied else pool), "val": counts(idx["val"]), "test": counts(idx["test"])}}
    if subset_applied and len(keep) != len(pool):
        out["train_pool"] = counts(pool)
    if dup.any():
        out["excluded_from_training"] = {"total": int(dup.sum()), "ids": sorted(raw.ids[i] for i in pool[dup]),
                                         "reason": "exact pixel duplicates of val/test images"}
    warn.append("near-duplicate guard not applied (mixed native sizes): set data.size to see the training "
                "counts exactly as the stages will use them")
    return out, warn


def _hist_text(hist: dict[str, int], limit: int = 6) -> str:
    items = list(hist.items())
    text = ", ".join(f"{k} x{v}" for k, v in items[:limit])
    return text + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def format_info(summary: dict[str, Any]) -> str:
    """Classes as rows, splits as columns (train subset, and the train pool when a subset is drawn), then images."""
    classes = list(summary["classes"])
    cols: list[tuple[str, dict[str, Any]]] = []
    if "train_pool" in summary:
        cols.append(("train_pool", summary["train_pool"]))
    cols += [(s, summary["splits"][s]) for s in SPLIT_NAMES]
    width = max([len("class"), len("total")] + [len(c) for c in classes]) + 2
    head = f"{'#':>3}  {'class':<{width}}" + "".join(f"{name:>11}" for name, _ in cols)
    lines = [head, "-" * len(head)]
    for i, c in enumerate(classes):
        lines.append(f"{i:>3}  {c:<{width}}" + "".join(f"{part['per_class'][i]:>11}" for _, part in cols))
    lines.append("-" * len(head))
    lines.append(f"{'':>3}  {'total':<{width}}" + "".join(f"{part['total']:>11}" for _, part in cols))
    pol = summary.get("image_policy") or {}
    images = summary.get("images") or {}
    if "source_splits" in summary:
        own = summary["source_splits"]
        if not own:
            lines.append("splits: none in the source; val/test carved stratified by class (data.split_seed)")
        else:
            missing = [s for s in SPLIT_NAMES if s not in own]
            lines.append(f"splits: {', '.join(own)} from the source"
                         + (f"; {', '.join(missing)} carved from train" if missing else ""))
    if images:
        lines.append(f"native sizes: {_hist_text(images['native_sizes'])}")
        lines.append(f"modes: {_hist_text(images['modes'])}; channels: {_hist_text(images['channels'])}")
    if pol:
        if pol.get("size"):
            h, w = pol["size"]
            lines.append(f"images for the stages: {h}x{w}, {pol.get('channels')} channel(s), resize={pol.get('resize')}, "
                         f"source={pol.get('source', '')}")
        else:
            lines.append("images for the stages: mixed native sizes; the stages need one: set data.size "
                         "(e.g. --set data.size=64; data.resize chooses center_crop, resize or pad)")
    dup = images.get("duplicates")
    if dup is not None:
        if dup["groups"]:
            ex = "; e.g. " + " = ".join(dup["examples"][0]) if dup["examples"] else ""
            lines.append(f"duplicates: {dup['extra_copies']} exact pixel copies in {dup['groups']} group(s), "
                         f"{dup['across_splits']} group(s) across splits{ex}")
        else:
            lines.append("duplicates: none (exact pixel match)")
    if summary.get("display_names"):
        shown = ", ".join(f"{c} -> {n}" for c, n in summary["display_names"].items())
        lines.append(f"display names (prompts, report): {shown} (set data.display_names to change)")
    excluded = summary.get("excluded_from_training")
    if excluded:
        lines.append(f"excluded from training: {excluded['total']} train image(s), {excluded.get('reason', '')}")
    near = summary.get("near_duplicates")
    if near and near.get("removed"):
        per = ", ".join(f"{v} of {k}" for k, v in near.get("per_split", {}).items() if v)
        lines.append(f"near-duplicates of val/test removed from training: {near['removed']} ({per}; "
                     f"pHash distance <= {near.get('distance')})")
    return "\n".join(lines)  # summary["warnings"] are for stderr (the CLI prints them there)
