"""The rows of a sweep: ``results.csv`` (and each shard's ``results.shard-I-of-N.csv``), read, written and merged.

One row per trained classifier: ``point``, ``policy``, ``kind``, ``seed``, ``train_key``, the swept keys, then every
scalar of its ``metrics.json``. Rows are keyed by train key; rows of an earlier grid go to ``results.previous.csv``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from synthmed.io import atomic_write_csv
from synthmed.layout import RunLayout

ID_COLUMNS = ["point", "policy", "kind", "seed", "train_key"]


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_rows(path: Path, rows: list[dict[str, Any]], grid_keys: list[str]) -> None:
    """Write rows atomically: id columns, swept keys, then every other column sorted."""
    cols = list(dict.fromkeys(ID_COLUMNS + [k for k in grid_keys if k != "seed"]))
    extra = sorted({k for r in rows for k in r} - set(cols))
    rows = sorted(rows, key=lambda r: (str(r.get("point")), str(r.get("policy")), str(r.get("seed"))))
    atomic_write_csv(path, rows, cols + extra)


SKIP_METRICS = {"overrides", "mix", "imbalance", "classes", "history", "val", "warnings", "confusion"}


def metrics_row(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scalars of a metrics.json: top-level ones, ``test.*`` ones not already there, ``recall.<class>``."""
    out = {k: v for k, v in metrics.items()
           if k not in SKIP_METRICS and (v is None or isinstance(v, (bool, int, float, str)))}
    test = metrics.get("test") if isinstance(metrics.get("test"), dict) else {}
    out.update({f"test.{k}": v for k, v in test.items()
                if k not in out and isinstance(v, (int, float)) and not isinstance(v, bool)})
    recall = test.get("per_class_recall", metrics.get("per_class_recall"))
    classes = metrics.get("classes") or []
    if isinstance(recall, dict):
        out.update({f"recall.{c}": v for c, v in recall.items()})
    elif isinstance(recall, list):
        out.update({f"recall.{classes[i] if i < len(classes) else i}": v for i, v in enumerate(recall)})
    for key in ("train_real_per_class", "train_synthetic_per_class"):
        if isinstance(metrics.get(key), list):
            out[key] = json.dumps(metrics[key])
    return out


def merged_rows(run_dir: Path, current: set[str]) -> dict[str, dict[str, Any]]:
    """The rows of the current grid in ``results.csv`` and every ``results.shard-*-of-*.csv``, by train key."""
    rows: dict[str, dict[str, Any]] = {}
    for path in [RunLayout(run_dir).results, *sorted(run_dir.glob("results.shard-*-of-*.csv"))]:
        for row in read_rows(path):
            if row.get("train_key") in current:
                rows[row["train_key"]] = row
    return rows


def row_id(row: dict[str, Any]) -> tuple[str, ...]:
    """A row's identity: its train key, or (point, policy, seed) for a row without one (``synthmed run`` writes
    results.csv rows with no train key: keyed by train key alone, they would collapse into one)."""
    key = row.get("train_key")
    if key:
        return ("key", str(key))
    return ("row", str(row.get("point") or ""), str(row.get("policy") or ""), str(row.get("seed") or ""))


def retire_rows(run_dir: Path, current: set[str], grid_keys: list[str]) -> None:
    """Move rows of an earlier, different sweep config (or of ``synthmed run``) from results.csv to
    results.previous.csv, every row kept (identity: ``row_id``)."""
    results = RunLayout(run_dir).results
    rows = read_rows(results)
    old = [r for r in rows if r.get("train_key") not in current]
    if not old:
        return
    prev = run_dir / "results.previous.csv"
    keep = {row_id(r): r for r in read_rows(prev) + old}
    atomic_write_csv(prev, list(keep.values()), list(dict.fromkeys(k for r in keep.values() for k in r)))
    write_rows(results, [r for r in rows if r.get("train_key") in current], grid_keys)
