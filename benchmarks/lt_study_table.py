"""The issue-14 study table: every policy of one or more run directories, chosen and compared on real val.

    .venv/bin/python benchmarks/lt_study_table.py RUN_DIR [RUN_DIR ...] [--baseline POLICY]

Per policy (rows ``run/policy`` when several run directories are given): kind, seeds, mean real-val balanced
accuracy, real-test balanced accuracy with its 95% CI over seeds, macro-F1, the mean test recall of the three
rarest classes of the long-tailed training split (from ``data/split.csv``), and the synthetic images used. Then the
paired difference (test, shared seeds) of every synthetic policy against the best classical baseline, where "best"
is the classical policy with the highest mean VAL balanced accuracy (``--baseline`` names one instead). Reads files
only; trains nothing.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import numpy as np


def rarest_classes(run_dir: Path, k: int = 3) -> list[int]:
    """Label indices of the ``k`` classes with the fewest images in the (long-tailed) training subset."""
    counts: dict[int, int] = {}
    with open(run_dir / "data" / "split.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["split"] == "train" and row.get("in_train_subset", "1") == "1":
                counts[int(row["label"])] = counts.get(int(row["label"]), 0) + 1
    return [c for c, _ in sorted(counts.items(), key=lambda kv: kv[1])[:k]]


def _ci(m: float, lo: float, hi: float) -> str:
    if not math.isfinite(m):
        return "–"
    return f"{m:.4f} ± {(hi - lo) / 2:.4f}" if math.isfinite(lo) else f"{m:.4f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--baseline", default=None, help="compare with this policy (row name) instead of the best on val")
    args = ap.parse_args()
    from synthmed.report import collect

    merged = collect.ClassifierRuns()
    kinds: dict[str, str] = {}
    rare: list[int] = []
    for run_dir in args.runs:
        runs = collect.load_classifiers(run_dir)
        _, cfg = collect.load_config(run_dir)
        rare = rare or rarest_classes(run_dir)
        k = collect.policy_kinds(cfg, list(runs.metrics), runs)
        for p in runs.metrics:
            name = p if len(args.runs) == 1 else f"{run_dir.name}/{p}"
            merged.metrics[name], merged.raw[name], kinds[name] = runs.metrics[p], runs.raw[p], k[p]
    if not merged.metrics:
        print("no classifier results", file=sys.stderr)
        return 2
    first = next(iter(next(iter(merged.raw.values())).values()))
    names = list(first.get("classes") or [])
    print(f"Three rarest training classes: {', '.join(names[c] if c < len(names) else str(c) for c in rare)}\n")
    print("| policy | kind | seeds | val bal. acc. | test bal. acc. (95% CI) | macro-F1 | recall, 3 rarest | synthetic used |")
    print("|---|---|---|---|---|---|---|---|")
    order = sorted(merged.metrics, key=lambda p: -(merged.val_mean(p) if math.isfinite(merged.val_mean(p)) else -1))
    for p in order:
        m, lo, hi, n = merged.summary(p)
        f1 = merged.summary(p, "macro_f1")
        rec = [np.mean([float(x.get("per_class_recall")[c]) for c in rare]) for x in merged.metrics[p].values()
               if isinstance(x.get("per_class_recall"), list)]
        used = [float(r.get("n_train_synthetic") or 0) for r in merged.raw[p].values()]
        print(f"| {p} | {kinds[p]} | {n} | {merged.val_mean(p):.4f} | {_ci(m, lo, hi)} | {_ci(*f1[:3])} | "
              f"{np.mean(rec):.3f} | {np.mean(used):.0f} |")
    classical = [p for p in merged.metrics if kinds[p] == "classical"]
    base = args.baseline or (max(classical, key=merged.val_mean) if classical else None)
    if base is None:
        return 0
    if base not in merged.metrics:
        print(f"error: --baseline {base!r} is not a row of this table (rows: {', '.join(order)})", file=sys.stderr)
        return 2
    why = "given with --baseline" if args.baseline else "best classical on real val"
    print(f"\nPaired differences in test balanced accuracy vs {base} ({why}), shared seeds:\n")
    for p in order:
        if p == base or (kinds[p] != "synthetic" and not args.baseline):
            continue
        d = collect.paired_difference(merged.values(p), merged.values(base))
        ci = f"[{d['lo']:+.4f}, {d['hi']:+.4f}]" if math.isfinite(d["lo"]) else "(no CI)"
        pv = f", p = {d['p']:.3g}" if isinstance(d.get("p"), float) else ""
        print(f"- {p}: {d['mean']:+.4f} 95% CI {ci} over {d['n']} seeds{pv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
