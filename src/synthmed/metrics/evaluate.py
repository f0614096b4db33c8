"""``synthmed evaluate``: the metrics table over seeds and the paired differences between policies.

A policy's kind (``real_only`` / ``classical`` / ``synthetic``) is the ``policy_kind`` its classifiers wrote into
``metrics.json`` (decided in one place, ``classifiers/policies.py``: a policy that reads no synthetic image is never
synthetic); older run directories fall back to the images actually used. The *baseline* is the policy named ``real_only`` (else the first real-only
policy without an imbalance method). Every policy is compared with the baseline and with the best classical
baseline (highest mean test balanced accuracy), paired on the seeds both have.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from synthmed.errors import DataError, MissingStageError
from synthmed.layout import RunLayout
from synthmed.metrics.stats import paired_difference, summarize

METRICS = ("balanced_accuracy", "accuracy", "macro_f1", "auc_macro_ovr")


def load_runs(run_dir: str | Path) -> dict[str, dict[int, dict[str, Any]]]:
    """policy -> seed -> metrics.json contents."""
    root = RunLayout(run_dir).classifiers
    if not root.is_dir():
        raise MissingStageError(f"classifier results ({root})", "train")
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted(root.glob("*/seed*/metrics.json")):
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            raise DataError(f"{path}: unreadable metrics file (delete it and rerun `synthmed train`)") from None
        runs.setdefault(path.parent.parent.name, {})[int(m.get("seed", path.parent.name[4:]))] = m
    if not runs:
        raise MissingStageError(f"classifier results ({root}/*/seed*/metrics.json)", "train")
    return runs


def kind_of(m: dict[str, Any]) -> str:
    """The policy kind recorded by the train stage; for older runs, from the images it actually trained on."""
    if m.get("policy_kind") in ("real_only", "classical", "synthetic"):
        return str(m["policy_kind"])
    if int(m.get("n_train_synthetic") or 0) > 0:
        return "synthetic"
    method = (m.get("imbalance") or {}).get("method", "none")
    return "classical" if method != "none" else "real_only"


def evaluation(run_dir: str | Path) -> dict[str, Any]:
    """The data behind the table: per-policy summaries and paired differences."""
    runs = load_runs(run_dir)
    policies: dict[str, Any] = {}
    for name, by_seed in runs.items():
        first = next(iter(by_seed.values()))
        row: dict[str, Any] = {"kind": kind_of(first), "seeds": sorted(by_seed), "n_seeds": len(by_seed),
                               "n_train_real": first.get("n_train_real"),
                               "n_train_synthetic": first.get("n_train_synthetic"),
                               "pretrained": first.get("pretrained")}
        for key in METRICS:
            row[key] = summarize([by_seed[s].get(key) for s in sorted(by_seed)])
        policies[name] = row
    baseline = "real_only" if "real_only" in policies and policies["real_only"]["kind"] == "real_only" else next(
        (n for n, r in policies.items() if r["kind"] == "real_only"), None)
    classical = [n for n, r in policies.items() if r["kind"] == "classical"]
    best_classical = max(classical, key=lambda n: policies[n]["balanced_accuracy"]["mean"] or -1.0, default=None)
    comparisons = []
    for ref_kind, ref in (("real_only", baseline), ("best_classical", best_classical)):
        if ref is None:
            continue
        ref_vals = {s: m.get("balanced_accuracy") for s, m in runs[ref].items()}
        for name in policies:
            if name == ref or (ref_kind == "best_classical" and name == baseline):
                continue
            vals = {s: m.get("balanced_accuracy") for s, m in runs[name].items()}
            diff = paired_difference(vals, ref_vals)
            comparisons.append({"policy": name, "versus": ref, "reference": ref_kind,
                                "metric": "balanced_accuracy", **diff})
    return {"run_dir": str(run_dir), "baseline": baseline, "best_classical": best_classical,
            "policies": policies, "comparisons": comparisons}


def _fmt(s: dict[str, Any]) -> str:
    if s.get("mean") is None:
        return "-"
    if s.get("ci_half_width") is None:
        return f"{s['mean']:.4f}"
    return f"{s['mean']:.4f} ± {s['ci_half_width']:.4f}"


def format_table(ev: dict[str, Any]) -> str:
    lines = ["test metrics (real-only test set), mean ± 95% CI half-width over seeds (t-distribution)", ""]
    head = f"{'policy':<24} {'kind':<10} {'n':>2} {'n_real':>7} {'n_syn':>6}  {'bal-acc':<18} {'macro-F1':<18} {'AUC':<18} {'acc':<18}"
    lines += [head, "-" * len(head)]
    for name, r in ev["policies"].items():
        lines.append(f"{name:<24} {r['kind']:<10} {r['n_seeds']:>2} {r['n_train_real'] or 0:>7} "
                     f"{r['n_train_synthetic'] or 0:>6}  {_fmt(r['balanced_accuracy']):<18} {_fmt(r['macro_f1']):<18} "
                     f"{_fmt(r['auc_macro_ovr']):<18} {_fmt(r['accuracy']):<18}")
    if ev["comparisons"]:
        lines += ["", "paired differences in balanced accuracy (policy - reference, same seeds)", ""]
        for c in ev["comparisons"]:
            if c["n"] == 0:
                lines.append(f"{c['policy']:<24} vs {c['versus']:<20} no common seeds")
                continue
            if c["ci_low"] is None:
                ci = "CI undefined (n=1)"
            elif c.get("p_value") is None:
                ci = f"95% CI [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}], {c.get('note', 'p undefined')}"
            else:
                ci = f"95% CI [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}], p={c['p_value']:.3g}"
            lines.append(f"{c['policy']:<24} vs {c['versus']:<20} {c['mean']:+.4f}  {ci}  (n={c['n']})")
    if any(not r.get("pretrained") for r in ev["policies"].values()):
        lines += ["", "note: classifiers without pretrained weights were trained from scratch (pretrained: false)"]
    return "\n".join(lines)


def evaluate_run(run_dir: str | Path, as_json: bool = False) -> str:
    """The table (or its JSON) of ``RUN_DIR/classifiers/*/seed*/metrics.json``."""
    ev = evaluation(run_dir)
    return json.dumps(ev, indent=2, allow_nan=True) if as_json else format_table(ev)
