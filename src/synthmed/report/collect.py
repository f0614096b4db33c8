"""Gather what a run directory holds for the report; every reader tolerates a missing or odd file.

Each ``load_*`` returns ``None`` (or an empty container) when its source is absent, so the report can say plainly
which section is not available instead of crashing.
"""

from __future__ import annotations

import csv
import json
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.layout import RunLayout

PRIMARY = "balanced_accuracy"
METRICS = ("balanced_accuracy", "macro_f1", "accuracy", "auc_macro_ovr")
PACKAGES = ("synthmed", "torch", "torchvision", "numpy", "diffusers", "transformers", "scikit-learn", "pandas",
            "matplotlib", "pydantic")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def as_float(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


# ---------------------------------------------------------------------------------------------- statistics


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float, int]:
    """Mean and Student-t confidence interval (NaN bounds for fewer than two finite values)."""
    from synthmed.metrics.stats import summarize

    s = summarize([as_float(v) for v in values], level)
    nan = math.nan
    return (nan if s["mean"] is None else s["mean"], nan if s["ci_low"] is None else s["ci_low"],
            nan if s["ci_high"] is None else s["ci_high"], int(s["n"]))


def paired_difference(a: dict[int, float], b: dict[int, float]) -> dict[str, Any]:
    """Mean of a - b over the seeds both have, with its 95% CI and paired t-test p (``metrics.stats``)."""
    from synthmed.metrics.stats import paired_difference as _paired

    d = _paired({s: as_float(v) for s, v in a.items()}, {s: as_float(v) for s, v in b.items()})
    nan = math.nan
    return {"mean": nan if d["mean"] is None else d["mean"], "lo": nan if d["ci_low"] is None else d["ci_low"],
            "hi": nan if d["ci_high"] is None else d["ci_high"], "n": int(d["n"]), "seeds": d.get("seeds", []),
            "p": d.get("p_value")}


# ---------------------------------------------------------------------------------------------- sources


def load_config(run_dir: Path) -> tuple[dict[str, Any] | None, Any]:
    """The raw resolved config dict and (when it validates) the typed ``Config``."""
    import yaml

    path = RunLayout(run_dir).config
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None, None
    try:
        from synthmed.config import validate

        return raw, validate(raw)
    except Exception:  # noqa: BLE001 - an old or foreign config still shows as text
        return raw, None


def load_data_summary(run_dir: Path) -> dict[str, Any] | None:
    summary = read_json(RunLayout(run_dir).data_summary)
    if isinstance(summary, dict):
        return summary
    split = run_dir / "data" / "split.csv"
    if not split.is_file():
        return None
    counts: dict[str, dict[str, int]] = {}
    with open(split, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            s = str(row.get("split", "?"))
            label = str(row.get("class_name") or row.get("label", "?"))
            counts.setdefault(s, {})
            counts[s][label] = counts[s].get(label, 0) + 1
    classes = sorted({c for per in counts.values() for c in per})
    return {"classes": classes, "splits": {s: {"total": sum(per.values()), "per_class": [per.get(c, 0) for c in classes]}
                                           for s, per in counts.items()}, "source": "split.csv"}


def test_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The real-test block of a metrics.json (``test`` sub-dict when present, else the top level)."""
    for key in ("test", "test_metrics"):
        if isinstance(metrics.get(key), dict):
            return metrics[key]
    return metrics


@dataclass
class ClassifierRuns:
    """Per policy, per seed: test metrics, and the confusion matrix when available."""

    metrics: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    raw: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    confusion: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)

    def values(self, policy: str, metric: str = PRIMARY) -> dict[int, float]:
        return {s: as_float(m.get(metric)) for s, m in self.metrics.get(policy, {}).items()}

    def summary(self, policy: str, metric: str = PRIMARY) -> tuple[float, float, float, int]:
        return mean_ci(list(self.values(policy, metric).values()))

    def val_mean(self, policy: str, metric: str = PRIMARY) -> float:
        """Mean over seeds of the policy's real-val ``metric`` (NaN when a metrics.json has no ``val`` block)."""
        vals = [as_float((m.get("val") or {}).get(metric)) if isinstance(m.get("val"), dict) else math.nan
                for m in self.raw.get(policy, {}).values()]
        return float(np.mean(vals)) if vals else math.nan


def _confusion(seed_dir: Path, metrics: dict[str, Any]) -> np.ndarray | None:
    if isinstance(metrics.get("confusion"), list):
        try:
            return np.asarray(metrics["confusion"], dtype=float)
        except ValueError:
            pass
    path = seed_dir / "confusion.csv"
    if path.is_file():
        try:
            import pandas as pd

            df = pd.read_csv(path, index_col=0)
            return df.select_dtypes("number").to_numpy(dtype=float)
        except Exception:  # noqa: BLE001
            return None
    return None


def load_classifiers(run_dir: Path) -> ClassifierRuns:
    runs = ClassifierRuns()
    layout = RunLayout(run_dir)
    root = layout.classifiers
    if not root.is_dir():
        return runs
    for pdir in sorted(p for p in root.iterdir() if p.is_dir()):
        for sdir in sorted(pdir.glob("seed*")):
            if not sdir.name[4:].isdigit():
                continue
            seed = int(sdir.name[4:])
            raw = read_json(layout.classifier_metrics(pdir.name, seed))
            if not isinstance(raw, dict):
                continue
            m = test_metrics(raw)
            runs.raw.setdefault(pdir.name, {})[seed] = raw
            runs.metrics.setdefault(pdir.name, {})[seed] = m
            cm = _confusion(sdir, m) if "confusion" in m else _confusion(sdir, raw)
            if cm is not None and cm.ndim == 2:
                runs.confusion.setdefault(pdir.name, {})[seed] = cm
    return runs


def policy_kinds(cfg: Any, names: list[str], runs: ClassifierRuns | None = None) -> dict[str, str]:
    """``synthetic`` / ``classical`` / ``real_only`` per policy, from what its metrics.json says was trained (the
    ``policy_kind`` the train stage wrote; older files: synthetic only when synthetic images were used), else
    ``real_only`` by name or ``unknown``. The report reads files only: it never re-derives a kind from a config."""
    del cfg  # kept in the signature for callers; the kind comes from what was trained
    out = {}
    for name in names:
        kind = None
        first = next(iter((runs.raw.get(name) or {}).values()), None) if runs is not None else None
        if isinstance(first, dict):
            if first.get("policy_kind") in ("real_only", "classical", "synthetic"):
                kind = str(first["policy_kind"])
            elif isinstance(first.get("mix"), dict):
                method = (first.get("imbalance") or {}).get("method", "none")
                kind = ("synthetic" if int(first.get("n_train_synthetic") or 0) > 0
                        else ("classical" if method != "none" else "real_only"))
        out[name] = kind or ("real_only" if name == "real_only" else "unknown")
    return out


def per_class_recall(metrics: dict[str, Any], classes: list[str]) -> list[float]:
    value = metrics.get("per_class_recall")
    if isinstance(value, dict):
        return [as_float(value.get(c)) for c in classes]
    if isinstance(value, list):
        return [as_float(v) for v in value][: len(classes)]
    return []


def synthetic_usage(runs: ClassifierRuns, classes: list[str]) -> dict[str, dict[str, Any]]:
    """Per policy, from its metrics.json files: synthetic images used (mean over seeds), asked for, and the
    per-class shortfall (``synthetic_shortfall_per_class``), plus the kind it was configured as."""
    out: dict[str, dict[str, Any]] = {}
    for policy, seeds in runs.raw.items():
        first = next(iter(seeds.values()), {})
        used = [as_float(m.get("n_train_synthetic")) for m in seeds.values()]
        used = [u for u in used if math.isfinite(u)]
        short = first.get("synthetic_shortfall_per_class")
        asked = first.get("synthetic_requested_per_class")
        names = list(first.get("classes") or classes)
        per_class = {}
        if isinstance(short, list):
            per_class = {names[i] if i < len(names) else str(i): int(v) for i, v in enumerate(short) if int(v) > 0}
        out[policy] = {
            "used": float(np.mean(used)) if used else 0.0,
            "requested": int(sum(int(v) for v in asked)) if isinstance(asked, list) else None,
            "shortfall": per_class,
            "configured_kind": first.get("configured_kind"),
        }
    return out


def usage_note(policy: str, usage: dict[str, Any] | None) -> str | None:
    """One sentence when a policy got fewer synthetic images than it asked for, or none at all (else None)."""
    if not usage:
        return None
    if usage.get("configured_kind") == "synthetic" and usage.get("used", 0) == 0:
        return (f"{policy} was configured to add synthetic images but trained on none (the synthetic set was empty "
                "after the quality gate and filter): it is reported as a real-image policy, not as synthetic.")
    if usage.get("shortfall"):
        parts = ", ".join(f"{c} −{n}" for c, n in usage["shortfall"].items())
        asked = usage.get("requested")
        return (f"{policy} trained on {usage['used']:.0f} synthetic images"
                + (f" of the {asked} it asked for" if asked is not None else "")
                + f"; short per class: {parts}.")
    return None


def headline(runs: ClassifierRuns, kinds: dict[str, str], metric: str = PRIMARY) -> dict[str, Any] | None:
    """Best synthetic policy vs real-only vs best classical baseline, with paired differences on real test.

    "Best" is chosen on real val (mean over seeds of the val ``metric``), never on test; only when some candidate
    has no val figures (old metrics.json files) does it fall back to test, and ``chosen_on`` says so."""
    if not runs.metrics:
        return None
    cands_all = [p for p in runs.metrics if kinds.get(p) in ("synthetic", "real_only", "classical")]
    on_val = bool(cands_all) and all(math.isfinite(runs.val_mean(p, metric)) for p in cands_all)

    def best(kind: str) -> str | None:
        cands = [p for p in runs.metrics if kinds.get(p) == kind]
        scored = [((runs.val_mean(p, metric) if on_val else runs.summary(p, metric)[0]), p) for p in cands]
        scored = [(m, p) for m, p in scored if math.isfinite(m)]
        return max(scored)[1] if scored else None

    picks = {"best synthetic": best("synthetic"), "real only": best("real_only"), "best classical": best("classical")}
    rows = []
    for role, policy in picks.items():
        if policy is None:
            continue
        m, lo, hi, n = runs.summary(policy, metric)
        rows.append({"role": role, "policy": policy, "mean": m, "lo": lo, "hi": hi, "n": n,
                     "val_mean": runs.val_mean(policy, metric)})
    diffs = []
    syn = picks["best synthetic"]
    for other in ("real only", "best classical"):
        if syn and picks[other]:
            d = paired_difference(runs.values(syn, metric), runs.values(picks[other], metric))
            diffs.append({"a": syn, "b": picks[other], "role": other, **d})
    return {"metric": metric, "rows": rows, "diffs": diffs, "chosen_on": "val" if on_val else "test"}


def load_results(run_dir: Path) -> Any:
    """``RUN_DIR/results.csv`` of a sweep as a DataFrame (None when absent or unreadable)."""
    path = RunLayout(run_dir).results
    if not path.is_file():
        return None
    try:
        import pandas as pd

        df = pd.read_csv(path)
    except Exception:  # noqa: BLE001
        return None
    return df if len(df) else None


def load_real_samples(run_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    path = RunLayout(run_dir).real_samples
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["images"], z["labels"], [str(c) for c in z["classes"]]
    except (OSError, ValueError, KeyError):
        return None


def load_synthetic_samples(run_dir: Path, per_class: int = 8) -> dict[int, list[np.ndarray]]:
    """Up to ``per_class`` kept synthetic images per class index."""
    out: dict[int, list[np.ndarray]] = {}
    try:
        from PIL import Image

        from synthmed.synthetic.dataset import SyntheticSet

        sset = SyntheticSet(run_dir)
        if not sset.exists():
            return out
        for row in sset.read_manifest():
            lst = out.setdefault(int(row["label"]), [])
            if not row["kept"] or len(lst) >= per_class:
                continue
            with Image.open(sset.abspath(row["path"])) as im:
                arr = np.asarray(im)
            lst.append(arr[:, :, None] if arr.ndim == 2 else arr)
    except Exception:  # noqa: BLE001 - a damaged set only loses the sample grid
        return out
    return out


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def load_generator_log(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) rows of ``generator/training_log.csv`` (empty when absent or unreadable)."""
    path = RunLayout(run_dir).generator_training_log
    if not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(fh)]
    except (OSError, ValueError, KeyError):
        return []
