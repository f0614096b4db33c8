"""The one definition of a result row: one trained classifier, as in ``results.csv`` and ``run.results()``.

A row is built from a classifier's ``metrics.json`` (``classifiers/<policy>/seed<k>/metrics.json``, found through
``RunLayout``). ``RESULT_COLUMNS`` is the fixed column order; ``policy_kind`` is read from metrics.json when the
train stage recorded it (empty otherwise), never re-derived here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from synthmed.io import atomic_write_csv
from synthmed.layout import RunLayout

RESULT_COLUMNS = [
    "policy", "policy_kind", "seed", "model", "imbalance_method", "mix_policy",
    "n_train_real", "n_train_synthetic",
    "accuracy", "balanced_accuracy", "macro_f1", "auc_macro_ovr", "val_balanced_accuracy",
]  # fmt: skip

_DIRECT = ("policy", "policy_kind", "seed", "model", "n_train_real", "n_train_synthetic", "accuracy",
           "balanced_accuracy", "macro_f1", "auc_macro_ovr", "val_balanced_accuracy")  # fmt: skip


def _section(metrics: dict[str, Any], name: str, key: str) -> Any:
    part = metrics.get(name)
    return part.get(key) if isinstance(part, dict) else None


def result_row(metrics: dict[str, Any]) -> dict[str, Any]:
    """One ``metrics.json`` dict -> a flat row with exactly ``RESULT_COLUMNS`` (missing values are None)."""
    row: dict[str, Any] = {k: metrics.get(k) for k in _DIRECT}
    test = metrics.get("test") if isinstance(metrics.get("test"), dict) else {}
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "auc_macro_ovr"):
        if row[key] is None:
            row[key] = test.get(key)
    row["imbalance_method"] = _section(metrics, "imbalance", "method")
    row["mix_policy"] = _section(metrics, "mix", "policy")
    return {k: row.get(k) for k in RESULT_COLUMNS}


def _seed_of(name: str) -> int | None:
    text = name[4:] if name.startswith("seed") else ""
    return int(text) if text.isdigit() else None


def collect_results(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every trained classifier of a run directory, sorted by (policy, seed); unfinished ones are absent."""
    layout = RunLayout(run_dir)
    rows: list[dict[str, Any]] = []
    if not layout.classifiers.is_dir():
        return rows
    for pdir in sorted(p for p in layout.classifiers.iterdir() if p.is_dir()):
        seeds = sorted(s for s in (_seed_of(d.name) for d in pdir.iterdir() if d.is_dir()) if s is not None)
        for seed in seeds:
            path = layout.classifier_metrics(pdir.name, seed)
            if not path.is_file():
                continue  # not finished (metrics.json is written last)
            metrics = json.loads(path.read_text(encoding="utf-8"))
            row = result_row(metrics)
            row["policy"] = row["policy"] or pdir.name
            row["seed"] = seed if row["seed"] is None else row["seed"]
            rows.append(row)
    return rows


def write_results_csv(run_dir: str | os.PathLike[str]) -> Path:
    """Write ``RUN_DIR/results.csv`` (atomically) from ``collect_results``; returns its path."""
    path = RunLayout(run_dir).results
    rows = [{k: ("" if v is None else v) for k, v in r.items()} for r in collect_results(run_dir)]
    atomic_write_csv(path, rows, RESULT_COLUMNS)
    return path


__all__ = ["RESULT_COLUMNS", "result_row", "collect_results", "write_results_csv"]
