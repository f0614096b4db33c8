"""``synthmed report RUN_DIR``: one self-contained ``RUN_DIR/report.html`` (CSS inline, images as base64).

Every section reads what the run directory holds (``report/collect.py``); a section whose inputs are absent says so
plainly. All text from files is escaped. The figures are also saved as PNGs under ``RUN_DIR/report/``.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from synthmed.errors import UserError
from synthmed.layout import RunLayout
from synthmed.io import atomic_write_text
from synthmed.report import collect, plots

REPORT_DIR = "report"
SWEEP_N_KEYS = ("mix.add_per_class", "mix.balance_to", "generation.n_per_class", "generation.balance_to")
SWEEP_R_KEYS = ("mix.ratio", "mix.batch_ratio")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em} th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left}
.absent{color:#777;font-style:italic} .warn{background:#fde2e1;border:2px solid #c0392b;padding:.8em 1em;font-weight:bold}
.ok{background:#e3f4e1;border:1px solid #3c8d40;padding:.5em 1em} .note{color:#555;font-size:.9em}
img{max-width:100%;border:1px solid #eee;margin:.3em 0} pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.8em}
nav a{margin-right:.8em;font-size:.9em} .grid{display:flex;flex-wrap:wrap;gap:.5em} .grid img{max-width:48%}
"""


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return "–"
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    return escape(str(value))


def _ci(mean: float, lo: float, hi: float, n: int) -> str:
    if not math.isfinite(mean):
        return "–"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{mean:.3f} <span class=note>(n={n}, no CI)</span>"
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    head = "".join(f"<th class=l>{escape(str(h))}</th>" if i < left else f"<th>{escape(str(h))}</th>"
                   for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td class=l>{c}</td>" if i < left else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(path: Path | None, alt: str) -> str:
    if path is None or not path.is_file():
        return f"<p class=absent>Image not available: {escape(alt)}.</p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _absent(what: str) -> str:
    return f"<p class=absent>Not available: {escape(what)}</p>"


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{escape(title)}</h2>\n{body}\n</section>'


# ---------------------------------------------------------------------------------------------- sections


def _data_section(summary: dict[str, Any] | None, cfg_raw: dict[str, Any] | None, out: Path) -> str:
    if not summary:
        return _absent("no data summary (run `synthmed run`, or the data stage, first).")
    classes = [str(c) for c in summary.get("classes", [])]
    splits = {k: v for k, v in summary.get("splits", {}).items() if isinstance(v, dict)}
    if isinstance(summary.get("train_pool"), dict):
        splits["train_pool"] = summary["train_pool"]
    rows = []
    for i, c in enumerate(classes):
        rows.append([escape(c)] + [_fmt((v.get("per_class") or [None] * len(classes))[i]
                                        if i < len(v.get("per_class") or []) else None) for v in splits.values()])
    rows.append(["<b>total</b>"] + [_fmt(v.get("total")) for v in splits.values()])
    data = (cfg_raw or {}).get("data", {}) or {}
    profile = []
    for key in ("shots", "long_tail", "fraction", "size", "channels"):
        if data.get(key) is not None:
            profile.append(f"{key}: {escape(str(data.get(key)))}")
    body = f"<p>Source: <code>{escape(str(summary.get('source', data.get('source', '?'))))}</code>. Subset profile: " \
           f"{'; '.join(profile) or 'the full training split'}. Validation and test sets are real images only.</p>"
    body += _table(["class", *splits.keys()], rows)
    for w in summary.get("warnings", []) or []:
        body += f"<p class=note>data warning: {escape(str(w))}</p>"
    try:
        body += _img(plots.class_counts(summary, out / "class_counts.png"), "images per class and split")
    except Exception as err:  # noqa: BLE001 - a figure must not sink the report
        body += _absent(f"class-count figure ({err.__class__.__name__})")
    return body


def _headline_section(runs: collect.ClassifierRuns, kinds: dict[str, str],
                      usage: dict[str, dict[str, Any]] | None = None) -> str:
    head = collect.headline(runs, kinds)
    if head is None:
        return _absent("no trained classifiers (RUN_DIR/classifiers/<policy>/seed<k>/metrics.json).")
    metric = head["metric"]
    rows = [[escape(r["role"]), escape(r["policy"]), _ci(r["mean"], r["lo"], r["hi"], r["n"])] for r in head["rows"]]
    body = f"<p>Primary metric: <b>{escape(metric)}</b> on the real-only test set; mean [95% CI] over seeds.</p>"
    body += _table(["", "policy", metric], rows, left=2)
    for d in head["diffs"]:
        verdict = "inconclusive"
        if math.isfinite(d["lo"]) and d["lo"] > 0:
            verdict = "synthetic better"
        elif math.isfinite(d["hi"]) and d["hi"] < 0:
            verdict = "synthetic worse"
        p = f", paired t-test p = {d['p']:.3g}" if isinstance(d.get("p"), float) else ""
        body += (f"<p>Paired difference {escape(d['a'])} − {escape(d['b'])} ({escape(d['role'])}): "
                 f"<b>{_ci(d['mean'], d['lo'], d['hi'], d['n'])}</b> over {d['n']} shared seed(s){p}: {verdict}.</p>")
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
        return _absent("no trained classifiers.")
    usage = usage or {}
    rows = []
    for policy in runs.metrics:
        u = usage.get(policy) or {}
        short = ", ".join(f"{escape(c)} −{n}" for c, n in (u.get("shortfall") or {}).items()) or "none"
        used = f"{u.get('used', 0):.0f}" + (f" of {u['requested']}" if u.get("requested") is not None else "")
        cells = [escape(policy), escape(kinds.get(policy, "?")), str(len(runs.metrics[policy])), used, short]
        cells += [_ci(*runs.summary(policy, m)) for m in collect.METRICS]
        rows.append(cells)
    body = _table(["policy", "kind", "seeds", "synthetic used", "synthetic short", *collect.METRICS], rows,
                  left=2)
    if evaluation:
        body += f"<details><summary>synthmed evaluate</summary><pre>{escape(evaluation)}</pre></details>"
    return body


def _sweep_section(df: Any, runs: collect.ClassifierRuns, kinds: dict[str, str], out: Path) -> str:
    if df is None:
        return _absent("no sweep results (RUN_DIR/results.csv; run `synthmed sweep`).")
    metric = collect.PRIMARY if collect.PRIMARY in df.columns else None
    if metric is None:
        return _absent(f"results.csv has no {collect.PRIMARY} column.")
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
                    body += f'<div id="{name}">' + _img(path, f"{metric} vs {key}") + "</div>"
                except Exception as err:  # noqa: BLE001
                    body += _absent(f"{metric} vs {key} figure ({err.__class__.__name__}: {err})")
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
            cells += [_ci(*collect.mean_ci([float(x) for x in grp[m]])) for m in collect.METRICS if m in df.columns]
            rows.append(cells)
        body += _table([*group, "seeds", *[m for m in collect.METRICS if m in df.columns]], rows, left=len(group))
    return body


def _quality_rows(fid: dict[str, Any]) -> list[list[str]]:
    rows = []
    for key, label in (("real_reference", "real train vs real val (reference)"),
                       ("synthetic_all", "synthetic, all generated"), ("synthetic_kept", "synthetic, kept")):
        block = (fid.get(key) or {}).get("overall") if isinstance(fid.get(key), dict) else None
        if not isinstance(block, dict):
            continue
        kid = block.get("kid")
        kid_s = (f"{_fmt(kid.get('mean'), 4)} ± {_fmt(kid.get('std'), 4)}" if isinstance(kid, dict) else _fmt(kid, 4))
        rows.append([escape(label), _fmt(block.get("n_real")), _fmt(block.get("n_fake")), _fmt(block.get("fid"), 2),
                     kid_s] + [_fmt(block.get(k)) for k in ("precision", "recall", "density", "coverage")])
    return rows


def _quality_section(q: dict[str, Any] | None) -> str:
    if not isinstance(q, dict):
        return _absent("no quality report (RUN_DIR/quality/quality.json); no synthetic policy, or run `synthmed quality`.")
    body = ""
    fid = q.get("fidelity") if isinstance(q.get("fidelity"), dict) else {}
    rows = _quality_rows(fid)
    if rows:
        body += f"<p>Feature space: <b>{escape(str(fid.get('backbone', q.get('backbone', '?'))))}</b> " \
                "(compare figures only within one backbone and similar n).</p>"
        body += _table(["set", "n real", "n synthetic", "FID", "KID", "precision", "recall", "density", "coverage"],
                       rows)
        warns = {w for k in ("real_reference", "synthetic_all", "synthetic_kept")
                 for w in ((fid.get(k) or {}).get("overall") or {}).get("warnings", []) or []}
        body += "".join(f"<p class=note>{escape(str(w))}</p>" for w in sorted(warns))
    else:
        body += _absent("no fidelity figures in quality.json.")
    cas = q.get("cas")
    if isinstance(cas, dict):
        s, r = cas.get("synthetic_only") or {}, cas.get("real_only") or {}
        body += "<h3>Classification accuracy score (CAS)</h3>" + _table(
            ["trained on", "accuracy", "balanced accuracy", "macro F1"],
            [["synthetic only (all generated)", _fmt(s.get("accuracy")), _fmt(s.get("balanced_accuracy")),
              _fmt(s.get("macro_f1"))],
             ["real only", _fmt(r.get("accuracy")), _fmt(r.get("balanced_accuracy")), _fmt(r.get("macro_f1"))]])
    mem = q.get("memorization")
    if isinstance(mem, dict):
        body += "<h3>Memorization audit</h3>" + _table(
            ["flagged as training copies", "fraction", "space", "synthetic", "generator train images"],
            [[_fmt(mem.get("flagged")), _fmt(mem.get("flagged_fraction")), _fmt(mem.get("copy_space")),
              _fmt(mem.get("n_synthetic")), _fmt(mem.get("n_generator_train"))]], left=0)
        body += "".join(f"<p class=note>{escape(str(n))}</p>" for n in mem.get("notes", []) or [])
    return body


def _gate_banner(q: dict[str, Any] | None) -> str:
    if not isinstance(q, dict):
        return ""
    gate = q.get("gate") if isinstance(q.get("gate"), dict) else None
    out = ""
    if q.get("vetted") is False or (isinstance(q.get("filter"), dict) and q["filter"].get("vetted") is False):
        out += '<div class=warn id="not-vetted">WARNING: the synthetic set was NOT vetted (filter.enabled: false); ' \
               "every generated image was used for training.</div>"
    if gate is not None and gate.get("passed") is False:
        reasons = "".join(f"<li>{escape(str(r))}</li>" for r in gate.get("reasons", []) or [])
        out += f'<div class=warn id="gate-failed">WARNING: the synthetic set FAILED the quality gate. Results of ' \
               f"synthetic policies are suspect.<ul>{reasons}</ul></div>"
    elif gate is not None and gate.get("passed") is True:
        out += '<div class=ok id="gate-passed">The synthetic set passed the quality gate.</div>'
    return out


def _filter_section(q: dict[str, Any] | None) -> str:
    filt = q.get("filter") if isinstance(q, dict) else None
    if not isinstance(filt, dict):
        return _absent("no filtering statistics (quality.json has no filter block).")
    body = _gate_banner(q)
    gate = q.get("gate") if isinstance(q.get("gate"), dict) else {}
    if gate.get("figures"):
        th = gate.get("thresholds") or {}
        body += _table(["gate figure", "value"], [[escape(k), _fmt(v)] for k, v in gate["figures"].items()])
        body += f"<p class=note>thresholds: {escape(str(th))}</p>"
    per = filt.get("per_class") if isinstance(filt.get("per_class"), dict) else {}
    blocks = list(per.items()) + ([("all classes", filt["overall"])] if isinstance(filt.get("overall"), dict) else [])
    reasons = sorted({r for _, b in blocks for r in (b.get("dropped") or {})})
    rows = [[escape(str(name)), _fmt(b.get("generated")), _fmt(b.get("kept")), _fmt(b.get("kept_fraction"))]
            + [_fmt((b.get("dropped") or {}).get(r)) for r in reasons] for name, b in blocks]
    body += f"<p>Confidence threshold tau = {_fmt(filt.get('min_confidence'))}.</p>"
    if isinstance(filt.get("class_thresholds"), dict):
        body += ("<p>Per-class thresholds (min of tau and the real val images' confidence quantile): "
                 + ", ".join(f"{escape(str(k))} {_fmt(v)}" for k, v in filt["class_thresholds"].items()) + ".</p>")
    body += _table(["class", "generated", "kept", "kept fraction", *[f"dropped: {r}" for r in reasons]], rows)
    return body


def _galleries_section(run_dir: Path, q: dict[str, Any] | None) -> str:
    gdir = run_dir / "quality" / "galleries"
    gal = q.get("galleries") if isinstance(q, dict) and isinstance(q.get("galleries"), dict) else {}
    body = ""
    for cls, files in gal.items():
        if not isinstance(files, dict):
            continue
        body += f"<h3>{escape(str(cls))}</h3>"
        for kind in ("good", "poor"):
            if kind in files:
                body += f"<p class=note>{kind}: {'most' if kind == 'good' else 'least'} confident</p>"
                body += _img(gdir / str(files[kind]), f"{cls} {kind}")
    if isinstance(gal.get("closest_pairs"), str):
        body += "<h3>closest synthetic / training pairs</h3>" + _img(gdir / gal["closest_pairs"], "closest pairs")
    return body or _absent("no galleries (RUN_DIR/quality/galleries/).")


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
        ("data", "Data", _data_section(summary, cfg_raw, out)),
        ("results", "All policies", _results_section(runs, kinds, evaluation, usage)),
        ("sweep", "Sweep", _sweep_section(df, runs, kinds, out)),
        ("per-class", "Per-class recall", _per_class(runs, classes, out)),
        ("confusion", "Confusion matrices", _confusions(runs, classes, out)),
        ("samples", "Real vs synthetic samples", _samples(run_dir, classes, out)),
        ("quality", "Synthetic-set quality", _quality_section(q)),
        ("filtering", "Filtering and the quality gate", _filter_section(q)),
        ("galleries", "Galleries", _galleries_section(run_dir, q)),
        ("config", "Resolved configuration", f"<pre>{escape(cfg.to_yaml() if cfg is not None else str(cfg_raw))}</pre>"
         if cfg_raw is not None else _absent("no RUN_DIR/config.yaml.")),
        ("versions", "Package versions", _table(["package", "version"],
                                               [[escape(k), escape(v)] for k, v in collect.versions().items()])),
    ]
    nav = "".join(f'<a href="#{sid}">{escape(title)}</a>' for sid, title, _ in sections)
    html = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>synthmed report: "
            f"{escape(run_dir.resolve().name)}</title><style>{CSS}</style></head><body>"
            f"<h1>synthmed report</h1><p class=note>run directory <code>{escape(str(run_dir))}</code>, built "
            f"{escape(time.strftime('%Y-%m-%d %H:%M'))}</p>{_gate_banner(q)}<nav>{nav}</nav>"
            + "\n".join(_section(*s) for s in sections) + "</body></html>\n")
    path = run_dir / "report.html"
    atomic_write_text(path, html)
    return path


def _per_class(runs: collect.ClassifierRuns, classes: list[str], out: Path) -> str:
    if not runs.metrics or not classes:
        return _absent("no per-class recall (no classifiers or no class names).")
    try:
        return _img(plots.recall_bars(runs, classes, list(runs.metrics), out / "per_class_recall.png"),
                    "per-class recall")
    except Exception as err:  # noqa: BLE001
        return _absent(f"per-class recall figure ({err.__class__.__name__}: {err})")


def _confusions(runs: collect.ClassifierRuns, classes: list[str], out: Path) -> str:
    if not runs.confusion:
        return _absent("no confusion matrices (metrics.json 'confusion' or confusion.csv).")
    body = "<p class=note>Summed over seeds; rows are true classes, normalised per row.</p><div class=grid>"
    for policy, per_seed in runs.confusion.items():
        mats = [m for m in per_seed.values() if m.shape == next(iter(per_seed.values())).shape]
        try:
            path = plots.confusion(sum(mats), classes, policy, out / f"confusion_{_safe(policy)}.png")
            body += _img(path, f"confusion matrix {policy}")
        except Exception as err:  # noqa: BLE001
            body += _absent(f"confusion matrix of {policy} ({err.__class__.__name__})")
    return body + "</div>"


def _samples(run_dir: Path, classes: list[str], out: Path) -> str:
    real = collect.load_real_samples(run_dir)
    syn = collect.load_synthetic_samples(run_dir)
    if real is None and not syn:
        return _absent("no sample images (pipeline/real_samples.npz, synthetic/manifest.csv).")
    real_by: dict[int, list[Any]] = {}
    if real is not None:
        images, labels, names = real
        classes = classes or names
        for img, lab in zip(images, labels):
            real_by.setdefault(int(lab), []).append(img)
    if not classes:
        return _absent("no class names for the sample grid.")
    body = "" if syn else "<p class=note>No synthetic set in this run (real images only).</p>"
    try:
        return body + _img(plots.sample_grid(real_by, syn, classes, out / "samples.png"), "real vs synthetic")
    except Exception as err:  # noqa: BLE001
        return body + _absent(f"sample grid ({err.__class__.__name__}: {err})")


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:60]
