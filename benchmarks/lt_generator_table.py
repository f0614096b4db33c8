"""Issue-18 (b) table: per-class quality of synthetic sets made on the long-tailed BloodMNIST subset.

    .venv/bin/python benchmarks/lt_generator_table.py RUN_DIR [RUN_DIR ...]

For each run directory (one synthetic set, after ``synthmed quality``): the overall gate figures, CAS balanced
accuracy, and per class: FID in the vetting classifier's feature space (synthetic_all vs real train, n per class),
CAS recall, the filter's kept fraction and the memorization flags beside the same rule's flags on real val
images (not copies: the reference rate). Reads ``quality/quality.json`` only.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def _f(v: object, d: int = 2) -> str:
    return f"{v:.{d}f}" if isinstance(v, (int, float)) and math.isfinite(float(v)) else "–"


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    for run in map(Path, argv):
        path = run / "quality" / "quality.json"
        if not path.is_file():
            print(f"error: {path} not found (run `synthmed quality CONFIG -o {run}` first)", file=sys.stderr)
            return 2
        q = json.loads(path.read_text())
        classes = q["classes"]
        fid = q["fidelity"]
        ref, syn = fid["real_reference"], fid["synthetic_all"]
        cas = (q.get("cas") or {}).get("synthetic_only") or {}
        real_cas = (q.get("cas") or {}).get("real_only") or {}
        g = q["gate"]["figures"]
        filt = q["filter"]
        mem = q["memorization"]
        ct = (mem.get("copying_test") or {}).get("pixel") or {}
        near = mem.get("near_copies") or {}
        print(f"### {run.name}\n")
        print(f"gate {'passed' if q['gate']['passed'] else 'FAILED'}; FID {_f(syn['overall'].get('fid'))} "
              f"(n_real {syn['overall'].get('n_real')}, n_syn {syn['overall'].get('n_fake')}; real val vs train "
              f"{_f(ref['overall'].get('fid'))}), ratio {_f(g.get('fid_ratio'))}; precision "
              f"{_f(syn['overall'].get('precision'))} (real {_f(ref['overall'].get('precision'))}); kept "
              f"{filt['overall']['kept']}/{filt['overall']['generated']}; CAS balanced accuracy "
              f"{_f(cas.get('balanced_accuracy'), 3)} (real, {q['cas'].get('real_only_imbalance')}: "
              f"{_f(real_cas.get('balanced_accuracy'), 3)}); memorization flags {mem.get('flagged')}/"
              f"{mem.get('n_synthetic')} (real val, same rule: {mem.get('real_val_flagged', '–')}/"
              f"{mem.get('n_real_val_reference')}); data-copying C_T {_f(ct.get('c_t'), 2)}, classes copying "
              f"{ct.get('classes_copying', '–')}; near-copies (relative rule) {near.get('flagged', '–')} (real val "
              f"{near.get('real_val_flagged', '–')}; lowest ratio {_f((near.get('min_ratio') or {}).get('synthetic'))}"
              f", real val {_f((near.get('min_ratio') or {}).get('real_val'))}); vetting "
              f"{filt.get('vetting_imbalance', 'resample')}\n")
        print("| class | FID (n syn) | real val FID | CAS recall | kept | memorization flags | real val flagged | "
              "near-copies (lowest ratio) | copying Z |")
        print("|---|---|---|---|---|---|---|---|---|")
        recall = cas.get("per_class_recall") or []
        per_label = mem.get("per_label") or {}
        for i, c in enumerate(classes):
            s, r = (syn.get("per_class") or {}).get(c) or {}, (ref.get("per_class") or {}).get(c) or {}
            k = filt["per_class"][c]
            entry = per_label.get(str(i), per_label.get(c))
            flags = entry.get("flagged") if isinstance(entry, dict) else entry
            ref_rate = (f"{entry['real_val_flagged']}/{entry['real_val_n']}"
                        if isinstance(entry, dict) and "real_val_n" in entry else "–")
            print(f"| {c} | {_f(s.get('fid'), 1)} ({s.get('n_fake')}) | {_f(r.get('fid'), 1)} | "
                  f"{_f(recall[i] if i < len(recall) else None, 3)} | {k['kept']}/{k['generated']} | {flags} | "
                  f"{ref_rate} | {_near(near, str(i))} | "
                  f"{_f(((ct.get('per_label') or {}).get(str(i)) or {}).get('z'), 2)} |")
        print()
    return 0


def _near(near: dict, label: str) -> str:
    """A class's near-copies under the relative rule with its lowest ratio, or an en dash for older runs."""
    entry = (near.get("per_label") or {}).get(label) or {}
    return f"{entry['flagged']} ({_f(entry.get('min_ratio'))})" if "flagged" in entry else "–"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
