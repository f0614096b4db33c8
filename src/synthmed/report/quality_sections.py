"""The report's synthetic-set sections: quality figures, CAS, memorization, the gate, filtering, galleries.

They read ``quality.json`` (written by the quality stage) and the gallery PNGs; they compute nothing."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from synthmed.layout import RunLayout
from synthmed.report.widgets import absent, fmt, img, table

def quality_rows(fid: dict[str, Any]) -> list[list[str]]:
    rows = []
    for key, label in (("real_reference", "real train vs real val (reference)"),
                       ("synthetic_all", "synthetic, all generated"), ("synthetic_kept", "synthetic, kept")):
        block = (fid.get(key) or {}).get("overall") if isinstance(fid.get(key), dict) else None
        if not isinstance(block, dict):
            continue
        kid = block.get("kid")
        kid_s = (f"{fmt(kid.get('mean'), 4)} ± {fmt(kid.get('std'), 4)}" if isinstance(kid, dict) else fmt(kid, 4))
        rows.append([escape(label), fmt(block.get("n_real")), fmt(block.get("n_fake")), fmt(block.get("fid"), 2),
                     kid_s] + [fmt(block.get(k)) for k in ("precision", "recall", "density", "coverage")])
    return rows


def quality_section(q: dict[str, Any] | None) -> str:
    if not isinstance(q, dict):
        return absent("no quality report (RUN_DIR/quality/quality.json); no synthetic policy, or run `synthmed quality`.")
    body = ""
    fid = q.get("fidelity") if isinstance(q.get("fidelity"), dict) else {}
    rows = quality_rows(fid)
    if rows:
        body += f"<p>Feature space: <b>{escape(str(fid.get('backbone', q.get('backbone', '?'))))}</b> " \
                "(compare figures only within one backbone and similar n).</p>"
        body += table(["set", "n real", "n synthetic", "FID", "KID", "precision", "recall", "density", "coverage"],
                       rows)
        warns = {w for k in ("real_reference", "synthetic_all", "synthetic_kept")
                 for w in ((fid.get(k) or {}).get("overall") or {}).get("warnings", []) or []}
        body += "".join(f"<p class=note>{escape(str(w))}</p>" for w in sorted(warns))
    else:
        body += absent("no fidelity figures in quality.json.")
    cas = q.get("cas")
    if isinstance(cas, dict):
        s, r = cas.get("synthetic_only") or {}, cas.get("real_only") or {}
        body += "<h3>Classification accuracy score (CAS)</h3>" + table(
            ["trained on", "accuracy", "balanced accuracy", "macro F1"],
            [["synthetic only (all generated)", fmt(s.get("accuracy")), fmt(s.get("balanced_accuracy")),
              fmt(s.get("macro_f1"))],
             ["real only", fmt(r.get("accuracy")), fmt(r.get("balanced_accuracy")), fmt(r.get("macro_f1"))]])
    body += per_class_quality(q)
    mem = q.get("memorization")
    if isinstance(mem, dict):
        ct = _copying_pixel(q)
        body += "<h3>Memorization audit</h3>" + table(
            ["flagged as training copies", "fraction", "real val flagged (same rule)", "rule", "synthetic",
             "generator train images", "near-copies (relative rule; real val)", "data-copying C_T (pixel)",
             "classes copying (Z <= -3)"],
            [[fmt(mem.get("flagged")), fmt(mem.get("flagged_fraction")), fmt(mem.get("real_val_flagged")),
              escape(_rule(mem)), fmt(mem.get("n_synthetic")), fmt(mem.get("n_generator_train")), _near(mem),
              fmt(ct.get("c_t"), 2), _copying(ct, q)]], left=0)
        if isinstance(mem.get("near_copies"), dict):
            body += ("<p class=note>Near-copies (Carlini et al. 2023): nearest-training-image pixel distance at or "
                     "below delta times the mean distance to the k nearest; about 0 for a copy, 0.6-1 for new images. "
                     "Unlike a quantile rule it flags (almost) no real val image.</p>")
        if ct:
            body += ("<p class=note>Data-copying test (Meehan et al. 2020), per class: Mann-Whitney Z of the synthetic "
                     "vs real val nearest-training-image distances; about 0 = as far as new real images, <= -3 = "
                     "copying, > 0 = farther (underfitting). C_T weighs classes by their real val counts.</p>")
        body += "".join(f"<p class=note>{escape(str(n))}</p>" for n in mem.get("notes", []) or [])
    return body


def gate_banner(q: dict[str, Any] | None) -> str:
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


def filter_section(q: dict[str, Any] | None) -> str:
    filt = q.get("filter") if isinstance(q, dict) else None
    if not isinstance(filt, dict):
        return absent("no filtering statistics (quality.json has no filter block).")
    body = gate_banner(q)
    gate = q.get("gate") if isinstance(q.get("gate"), dict) else {}
    if gate.get("figures"):
        th = gate.get("thresholds") or {}
        body += table(["gate figure", "value"], [[escape(k), fmt(v)] for k, v in gate["figures"].items()])
        body += f"<p class=note>thresholds: {escape(str(th))}</p>"
    per = filt.get("per_class") if isinstance(filt.get("per_class"), dict) else {}
    blocks = list(per.items()) + ([("all classes", filt["overall"])] if isinstance(filt.get("overall"), dict) else [])
    reasons = sorted({r for _, b in blocks for r in (b.get("dropped") or {})})
    rows = [[escape(str(name)), fmt(b.get("generated")), fmt(b.get("kept")), fmt(b.get("kept_fraction"))]
            + [fmt((b.get("dropped") or {}).get(r)) for r in reasons] for name, b in blocks]
    body += f"<p>Confidence threshold tau = {fmt(filt.get('min_confidence'))}.</p>"
    if isinstance(filt.get("class_thresholds"), dict):
        body += ("<p>Per-class thresholds (min of tau and the real val images' confidence quantile): "
                 + ", ".join(f"{escape(str(k))} {fmt(v)}" for k, v in filt["class_thresholds"].items()) + ".</p>")
    body += table(["class", "generated", "kept", "kept fraction", *[f"dropped: {r}" for r in reasons]], rows)
    return body


def galleries_section(run_dir: Path, q: dict[str, Any] | None) -> str:
    gdir = RunLayout(run_dir).galleries
    gal = q.get("galleries") if isinstance(q, dict) and isinstance(q.get("galleries"), dict) else {}
    body = ""
    for cls, files in gal.items():
        if not isinstance(files, dict):
            continue
        body += f"<h3>{escape(str(cls))}</h3>"
        for kind in ("good", "poor"):
            if kind in files:
                body += f"<p class=note>{kind}: {'most' if kind == 'good' else 'least'} confident</p>"
                body += img(gdir / str(files[kind]), f"{cls} {kind}")
    if isinstance(gal.get("closest_pairs"), str):
        body += "<h3>closest synthetic / training pairs</h3>" + img(gdir / gal["closest_pairs"], "closest pairs")
    return body or absent("no galleries (RUN_DIR/quality/galleries/).")


def per_class_quality(q: dict[str, Any]) -> str:
    """Per class: FID of all generated and of kept images vs the real reference (same n, same backbone), precision,
    recall, and CAS recall (classifier trained on synthetic only vs on real only, real test)."""
    fid = q.get("fidelity") if isinstance(q.get("fidelity"), dict) else {}
    blocks = {k: ((fid.get(k) or {}).get("per_class") or {}) for k in ("real_reference", "synthetic_all", "synthetic_kept")}
    classes = [str(c) for c in q.get("classes") or list(blocks["synthetic_all"])]
    cas = q.get("cas") if isinstance(q.get("cas"), dict) else {}
    syn_rec = (cas.get("synthetic_only") or {}).get("per_class_recall") or []
    audit = q.get("memorization") if isinstance(q.get("memorization"), dict) else {}
    mem = audit.get("per_label") or {}
    real_rec = (cas.get("real_only") or {}).get("per_class_recall") or []
    ct = _copying_pixel(q).get("per_label") or {}
    if not classes or not any(blocks.values()):
        return ""
    rows = []
    for i, c in enumerate(classes):
        ref, allb, kept = (blocks[k].get(c) or {} for k in ("real_reference", "synthetic_all", "synthetic_kept"))
        rows.append([escape(c), fmt(allb.get("n_real")), fmt(allb.get("n_fake")), fmt(ref.get("fid"), 1),
                     fmt(allb.get("fid"), 1), fmt(kept.get("fid"), 1), fmt(allb.get("precision")),
                     fmt(allb.get("recall")), fmt(syn_rec[i] if i < len(syn_rec) else None),
                     fmt(real_rec[i] if i < len(real_rec) else None),
                     fmt((mem.get(str(i)) or {}).get("flagged")), _val_rate(mem.get(str(i)) or {}),
                     _near(audit, str(i)), fmt(((ct.get(str(i)) or {}).get("z")), 2)])
    return ("<h3 id=per-class-quality>Per class</h3><p class=note>FID per class uses few images (n shown): compare "
            "a class only with its own real reference.</p>"
            + table(["class", "n real", "n synthetic", "FID real ref.", "FID all", "FID kept", "precision",
                     "recall", "CAS recall (synthetic-trained)", "recall (real-trained)", "copies flagged",
                     "real val flagged (reference)", "near-copies (real val)", "copying Z"], rows))


def _val_rate(entry: dict[str, Any]) -> str:
    """The copy rule's rate on real val images of the class (not copies): ``k/n``, or an en dash for old runs."""
    n, k = entry.get("real_val_n"), entry.get("real_val_flagged")
    return f"{k}/{n}" if isinstance(n, int) and isinstance(k, int) else "–"


def _rule(mem: dict[str, Any]) -> str:
    """The rule that set the flags: quantile (with its space), relative or either; old runs have no copy_rule."""
    rule = mem.get("copy_rule") or "quantile"
    return f"{rule} ({mem.get('copy_space')})" if rule != "relative" else rule


def _near(mem: dict[str, Any], label: str | None = None) -> str:
    """The relative rule's near-copies as ``synthetic (real val k)``, or an en dash for runs without it."""
    near = mem.get("near_copies") if isinstance(mem.get("near_copies"), dict) else {}
    if label is not None:
        near = (near.get("per_label") or {}).get(label) or {}
    if not isinstance(near.get("flagged"), int):
        return "–"
    return f"{near['flagged']} ({near.get('real_val_flagged', '–')})"


def _copying_pixel(q: dict[str, Any]) -> dict[str, Any]:
    """quality.json's pixel-space data-copying test, or {} for runs without it."""
    mem = q.get("memorization") if isinstance(q.get("memorization"), dict) else {}
    ct = mem.get("copying_test") if isinstance(mem.get("copying_test"), dict) else {}
    return ct["pixel"] if isinstance(ct.get("pixel"), dict) else {}


def _copying(ct: dict[str, Any], q: dict[str, Any]) -> str:
    """The classes the data-copying test finds copying, by name ("none"), or an en dash for runs without it."""
    if not ct:
        return "–"
    names = list(q.get("classes") or [])
    found = [names[int(c)] if c.isdigit() and int(c) < len(names) else c for c in ct.get("classes_copying") or []]
    return escape(", ".join(found)) if found else "none"
