"""``data info``: a human table of classes x splits from ``RealData.summary()``."""

from __future__ import annotations

from typing import Any


def format_info(summary: dict[str, Any]) -> str:
    """Classes as rows, splits as columns (train subset, and the train pool when a subset is drawn)."""
    classes = list(summary["classes"])
    cols: list[tuple[str, dict[str, Any]]] = []
    if "train_pool" in summary:
        cols.append(("train_pool", summary["train_pool"]))
    cols += [(s, summary["splits"][s]) for s in ("train", "val", "test")]
    width = max([len("class"), len("total")] + [len(c) for c in classes]) + 2
    head = f"{'#':>3}  {'class':<{width}}" + "".join(f"{name:>11}" for name, _ in cols)
    lines = [head, "-" * len(head)]
    for i, c in enumerate(classes):
        lines.append(f"{i:>3}  {c:<{width}}" + "".join(f"{part['per_class'][i]:>11}" for _, part in cols))
    lines.append("-" * len(head))
    lines.append(f"{'':>3}  {'total':<{width}}" + "".join(f"{part['total']:>11}" for _, part in cols))
    pol = summary.get("image_policy") or {}
    if pol:
        h, w = pol.get("size", ["?", "?"])
        lines.append(f"images: {h}x{w}, {pol.get('channels')} channel(s), resize={pol.get('resize')}, source={pol.get('source', '')}")
    excluded = summary.get("excluded_from_training")
    if excluded:
        lines.append(f"excluded from training: {excluded['total']} train image(s), {excluded.get('reason', '')}")
    return "\n".join(lines)
