"""``synthmed report RUN_DIR``: one self-contained ``RUN_DIR/report.html`` (CSS inline, images as base64).

Every section reads what the run directory holds (``report/collect.py``); a section whose inputs are absent says so
plainly. All text from files is escaped. The figures are also saved as PNGs under ``RUN_DIR/report/``.
"""

from __future__ import annotations

import math
import time
from html import escape
from pathlib import Path
from typing import Any

from synthmed.errors import UserError
from synthmed.layout import RunLayout
from synthmed.io import atomic_write_text
from synthmed.report import collect, plots
from synthmed.report.quality_sections import filter_section, galleries_section, gate_banner, quality_section
from synthmed.report.widgets import CSS, absent, ci, fmt, img, section, table

REPORT_DIR = "report"
SWEEP_N_KEYS = ("mix.add_per_class", "mix.balance_to", "generation.n_per_class", "generation.balance_to")
SWEEP_R_KEYS = ("mix.ratio", "mix.batch_ratio")

# ---------------------------------------------------------------------------------------------- sections


def _near_duplicates(near: dict[str, Any] | None) -> str:
    """The near-duplicate leakage guard's findings (removed from training, never from val/test)."""
    if not isinstance(near, dict):
        return ""
    per = ", ".join(f"{escape(str(k))}: {fmt(v)}" for k, v in (near.get("per_split") or {}).items())
    body = (f"<p id=near-duplicates>Near-duplicate guard ({escape(str(near.get('hash', 'pHash')))}, distance &le; "
            f"{fmt(near.get('distance'))} bits): {fmt(near.get('removed'))} training image(s) nearly copying a val/test "
            f"image removed from training ({per or 'none found'}).</p>")
    rows = [[escape(str(e.get("candidate"))), escape(str(e.get("split"))), escape(str(e.get("held_out"))),
             fmt(e.get("bits"))] for e in near.get("examples") or [] if isinstance(e, dict)]
    if rows:
        body += table(["training image", "split", "held-out image", "bits apart"], rows, left=3)
    return body


def _data_section(summary: dict[str, Any] | None, cfg_raw: dict[str, Any] | None, out: Path,
                  near: dict[str, Any] | None = None) -> str:
    if not summary:
        return absent("no data summary (run `synthmed run`, or the data stage, first).")
    classes = [str(c) for c in summary.get("classes", [])]
    splits = {k: v for k, v in summary.get("splits", {}).items() if isinstance(v, dict)}
    if isinstance(summary.get("train_pool"), dict):
        splits["train_pool"] = summary["train_pool"]
    rows = []
    for i, c in enumerate(classes):
        rows.append([escape(c)] + [fmt((v.get("per_class") or [None] * len(classes))[i]
                                        if i < len(v.get("per_class") or []) else None) for v in splits.values()])
    rows.append(["<b>total</b>"] + [fmt(v.get("total")) for v in splits.values()])
    data = (cfg_raw or {}).get("data", {}) or {}
    profile = []
    for key in ("shots", "long_tail", "fraction", "size", "channels"):
        if data.get(key) is not None:
            profile.append(f"{key}: {escape(str(data.get(key)))}")
    body = f"<p>Source: <code>{escape(str(summary.get('source', data.get('source', '?'))))}</code>. Subset profile: " \
           f"{'; '.join(profile) or 'the full training split'}. Validation and test sets are real images only.</p>"
    body += table(["class", *splits.keys()], rows)
    for w in summary.get("warnings", []) or []:
        body += f"<p class=note>data warning: {escape(str(w))}</p>"
    if "augmentations" in summary:
        aug = ", ".join(escape(str(a)) for a in summary["augmentations"]) or "none"
        body += f"<p id=augmentations>Training augmentations that ran (after the label-safety check): {aug}.</p>"
    body += _near_duplicates(near)
    try:
        body += img(plots.class_counts(summary, out / "class_counts.png"), "images per class and split")
    except Exception as err:  # noqa: BLE001 - a figure must not sink the report
        body += absent(f"class-count figure ({err.__class__.__name__})")
    return body


def _headline_section(runs: collect.ClassifierRuns, kinds: dict[str, str],
                      usage: dict[str, dict[str, Any]] | None = None) -> str:
    head = collect.headline(runs, kinds)
    if head is None:
        return absent("no trained classifiers (RUN_DIR/classifiers/<policy>/seed<k>/metrics.json).")
    metric = head["metric"]
    rows = [[escape(r["role"]), escape(r["policy"]), ci(r["mean"], r["lo"], r["hi"], r["n"])] for r in head["rows"]]
    chosen = ("the best policy of each kind is chosen on real val (mean val " + escape(metric) + "), then scored on test"
              if head.get("chosen_on") == "val" else
              "some runs have no real-val figures, so the best of each kind was picked on test (optimistic)")
    body = (f"<p>Primary metric: <b>{escape(metric)}</b> on the real-only test set; mean [95% CI] over seeds; "
            f"{chosen}.</p>")
    body += table(["", "policy", metric], rows, left=2)
    for d in head["diffs"]:
        verdict = "inconclusive"
        if math.isfinite(d["lo"]) and d["lo"] > 0:
            verdict = "synthetic better"
        elif math.isfinite(d["hi"]) and d["hi"] < 0:
            verdict = "synthetic worse"
        p = f", paired t-test p = {d['p']:.3g}" if isinstance(d.get("p"), float) else ""
        body += (f"<p>Paired difference {escape(d['a'])} − {escape(d['b'])} ({escape(d['role'])}): "
                 f"<b>{ci(d['mean'], d['lo'], d['hi'], d['n'])}</b> over {d['n']} shared seed(s){p}: {verdict}.</p>")
    usage = usage or {}
    best_syn = next((r["policy"] for r in head["rows"] if r["role"] == "best synthetic"), None)
    notes = [collect.usage_note(best_syn, usage.get(best_syn))] if best_syn else []
    notes += [collect.usage_note(p, u) for p, u in usage.items()
              if u.get("configured_kind") == "synthetic" and u.get("used", 0) == 0]
    for note in dict.fromkeys(n for n in notes if n):
        body += f"<p class=warn id=synthetic-shortage>{escape(note)}</p>"
    if best_syn is None:
        body += "<p class=note>No policy trained on synthetic images.</p>"
    return body


def _results_section(runs: collect.ClassifierRuns, kinds: dict[str, str], evaluation: str | None,
                     usage: dict[str, dict[str, Any]] | None = None) -> str:
    if not runs.metrics:
        return absent("no trained classifiers.")
    usage = usage or {}
    rows = []
    for policy in runs.metrics:
        u = usage.get(policy) or {}
        short = ", ".join(f"{escape(c)} −{n}" for c, n in (u.get("shortfall") or {}).items()) or "none"
        used = f"{u.get('used', 0):.0f}" + (f" of {u['requested']}" if u.get("requested") is not None else "")
        cells = [escape(policy), escape(kinds.get(policy, "?")), str(len(runs.metrics[policy])), used, short]
        cells += [ci(*runs.summary(policy, m)) for m in collect.METRICS]
        rows.append(cells)
    body = table(["policy", "kind", "seeds", "synthetic used", "synthetic short", *collect.METRICS], rows,
                  left=2)
    if evaluation:
        body += f"<details><summary>synthmed evaluate</summary><pre>{escape(evaluation)}</pre></details>"
    return body


def _sweep_section(df: Any, runs: collect.ClassifierRuns, kinds: dict[str, str], out: Path) -> str:
    if df is None:
        return absent("no sweep results (RUN_DIR/results.csv; run `synthmed sweep`).")
    metric = collect.PRIMARY if collect.PRIMARY in df.columns else None
    if metric is None:
        return absent(f"results.csv has no {collect.PRIMARY} column.")
    base = {p: runs.summary(p)[0] for p in runs.metrics if kinds.get(p) in ("real_only", "classical")}
    body = f"<p>{len(df)} trained classifier(s) in RUN_DIR/results.csv.</p>"
    found = False
    for keys, label, name in ((SWEEP_R_KEYS, "ratio R of synthetic images", "metric_vs_ratio"),
                              (SWEEP_N_KEYS, "N (synthetic per class / balance target)", "metric_vs_n")):
        for key in keys:
            if key in df.columns and df[key].nunique() > 1:
                found = True
                sub = df.dropna(subset=[key])
                try:
                    path = plots.metric_vs_param(sub, key, metric, out / f"{name}_{key.replace('.', '_')}.png",
                                                 {f"{p} ({kinds.get(p)})": v for p, v in base.items()}, label)
                    body += f'<div id="{name}">' + img(path, f"{metric} vs {key}") + "</div>"
                except Exception as err:  # noqa: BLE001
                    body += absent(f"{metric} vs {key} figure ({err.__class__.__name__}: {err})")
    if not found:
        body += "<p class=note>No ratio or N sweep in results.csv (no metric-vs-R / metric-vs-N plot).</p>"
    cols = [c for c in df.columns if c in ("policy", "seed", *SWEEP_R_KEYS, *SWEEP_N_KEYS, "classifier.model")]
    show = [c for c in cols if c in df.columns] + [m for m in collect.METRICS if m in df.columns]
    group = [c for c in show if c not in collect.METRICS and c != "seed"]
    if group:
        rows = []
        for vals, grp in df.groupby(group, dropna=False):
            vals = vals if isinstance(vals, tuple) else (vals,)
            cells = [escape(str(v)) for v in vals] + [str(len(grp))]
            cells += [ci(*collect.mean_ci([float(x) for x in grp[m]])) for m in collect.METRICS if m in df.columns]
            rows.append(cells)
        body += table([*group, "seeds", *[m for m in collect.METRICS if m in df.columns]], rows, left=len(group))
    return body


# ---------------------------------------------------------------------------------------------- build


def build_report(run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/report.html`` (and figure PNGs under ``RUN_DIR/report/``); returns its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} not found")
    out = run_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    cfg_raw, cfg = collect.load_config(run_dir)
    summary = collect.load_data_summary(run_dir)
    runs = collect.load_classifiers(run_dir)
    df = collect.load_results(run_dir)
    names = list(runs.metrics) + ([str(p) for p in df["policy"].unique()] if df is not None and "policy" in df else [])
    kinds = collect.policy_kinds(cfg, list(dict.fromkeys(names)), runs)
    layout = RunLayout(run_dir)
    q = collect.read_json(layout.quality_json)
    classes = [str(c) for c in (summary or {}).get("classes", [])]
    if not classes and isinstance(q, dict):
        classes = [str(c) for c in q.get("classes", []) or []]
    usage = collect.synthetic_usage(runs, classes)
    ev_path = layout.evaluation_txt
    evaluation = ev_path.read_text(encoding="utf-8") if ev_path.is_file() else None

    sections = [
        ("headline", "Headline", _headline_section(runs, kinds, usage)),
        ("data", "Data", _data_section(summary, cfg_raw, out, collect.read_json(layout.near_duplicates))),
        ("results", "All policies", _results_section(runs, kinds, evaluation, usage)),
        ("sweep", "Sweep", _sweep_section(df, runs, kinds, out)),
        ("curves", "Training curves", _curves(runs, collect.load_generator_log(run_dir), out)),
        ("per-class", "Per-class recall", _per_class(runs, classes, out)),
        ("confusion", "Confusion matrices", _confusions(runs, classes, out)),
        ("samples", "Real vs synthetic samples", _samples(run_dir, classes, out)),
        ("quality", "Synthetic-set quality", quality_section(q)),
        ("filtering", "Filtering and the quality gate", filter_section(q)),
        ("galleries", "Galleries", galleries_section(run_dir, q)),
        ("config", "Resolved configuration", f"<pre>{escape(cfg.to_yaml() if cfg is not None else str(cfg_raw))}</pre>"
         if cfg_raw is not None else absent("no RUN_DIR/config.yaml.")),
        ("versions", "Package versions", table(["package", "version"],
                                               [[escape(k), escape(v)] for k, v in collect.versions().items()])),
    ]
    nav = "".join(f'<a href="#{sid}">{escape(title)}</a>' for sid, title, _ in sections)
    html = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>synthmed report: "
            f"{escape(run_dir.resolve().name)}</title><style>{CSS}</style></head><body>"
            f"<h1>synthmed report</h1><p class=note>run directory <code>{escape(str(run_dir))}</code>, built "
            f"{escape(time.strftime('%Y-%m-%d %H:%M'))}</p>{gate_banner(q)}<nav>{nav}</nav>"
            + "\n".join(section(*s) for s in sections) + "</body></html>\n")
    path = run_dir / "report.html"
    atomic_write_text(path, html)
    return path


def _curves(runs: collect.ClassifierRuns, generator_log: list[tuple[int, float]], out: Path) -> str:
    try:
        path = plots.training_curves(runs, generator_log, out / "training_curves.png")
    except Exception as err:  # noqa: BLE001 - a figure must not sink the report
        return absent(f"training curves ({err.__class__.__name__}: {err})")
    return img(path, "training curves") if path is not None else absent("no training history in metrics.json.")


def _per_class(runs: collect.ClassifierRuns, classes: list[str], out: Path) -> str:
    if not runs.metrics or not classes:
        return absent("no per-class recall (no classifiers or no class names).")
    try:
        return img(plots.recall_bars(runs, classes, list(runs.metrics), out / "per_class_recall.png"),
                    "per-class recall")
    except Exception as err:  # noqa: BLE001
        return absent(f"per-class recall figure ({err.__class__.__name__}: {err})")


def _confusions(runs: collect.ClassifierRuns, classes: list[str], out: Path) -> str:
    if not runs.confusion:
        return absent("no confusion matrices (metrics.json 'confusion' or confusion.csv).")
    body = "<p class=note>Summed over seeds; rows are true classes, normalised per row.</p><div class=grid>"
    for policy, per_seed in runs.confusion.items():
        mats = [m for m in per_seed.values() if m.shape == next(iter(per_seed.values())).shape]
        try:
            path = plots.confusion(sum(mats), classes, policy, out / f"confusion_{_safe(policy)}.png")
            body += img(path, f"confusion matrix {policy}")
        except Exception as err:  # noqa: BLE001
            body += absent(f"confusion matrix of {policy} ({err.__class__.__name__})")
    return body + "</div>"


def _samples(run_dir: Path, classes: list[str], out: Path) -> str:
    real = collect.load_real_samples(run_dir)
    syn = collect.load_synthetic_samples(run_dir)
    if real is None and not syn:
        return absent("no sample images (pipeline/real_samples.npz, synthetic/manifest.csv).")
    real_by: dict[int, list[Any]] = {}
    if real is not None:
        images, labels, names = real
        classes = classes or names
        for im, lab in zip(images, labels):
            real_by.setdefault(int(lab), []).append(im)
    if not classes:
        return absent("no class names for the sample grid.")
    body = "" if syn else "<p class=note>No synthetic set in this run (real images only).</p>"
    try:
        return body + img(plots.sample_grid(real_by, syn, classes, out / "samples.png"), "real vs synthetic")
    except Exception as err:  # noqa: BLE001
        return body + absent(f"sample grid ({err.__class__.__name__}: {err})")


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:60]
