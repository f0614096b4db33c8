"""Run the BloodMNIST long-tail study and print the BENCHMARKS table.

    .venv/bin/python benchmarks/run_study.py                      # run + sweep, then print (target <= 90 min, 2 cores)
    .venv/bin/python benchmarks/run_study.py --report-only        # print the table of an existing run directory

Runs ``synthmed run CONFIG -o OUT`` and ``synthmed sweep CONFIG -o OUT`` (both cached and resumable: rerunning
after an interruption continues where it stopped), then prints markdown: balanced accuracy and macro-F1 per policy
(mean ± 95% CI half-width over seeds, real-only test set), the paired difference best synthetic vs best classical
baseline, the ratio sweep, the synthetic-set quality and the wall time. Needs ../shared/data/bloodmnist.npz.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ci(stats: tuple[float, float, float, int]) -> str:
    m, lo, hi, n = stats
    if not math.isfinite(m):
        return "–"
    return f"{m:.4f} ± {(hi - lo) / 2:.4f}" if math.isfinite(lo) else f"{m:.4f} (n={n})"


def _num(v: object, d: int = 3) -> str:
    return f"{v:.{d}f}" if isinstance(v, (int, float)) and math.isfinite(float(v)) else "–"


def table(run_dir: Path, wall: float | None, what: str = "run + sweep") -> str:
    from synthmed.report import collect

    _, cfg = collect.load_config(run_dir)
    runs = collect.load_classifiers(run_dir)
    if not runs.metrics:
        return f"no classifier results in {run_dir}"
    kinds = collect.policy_kinds(cfg, list(runs.metrics), runs)
    lines = [f"### BloodMNIST long-tail study ({run_dir.name})", "",
             "| policy | kind | seeds | balanced accuracy | macro-F1 |", "|---|---|---|---|---|"]
    for p in sorted(runs.metrics, key=lambda p: -runs.summary(p)[0] if math.isfinite(runs.summary(p)[0]) else 0):
        lines.append(f"| {p} | {kinds[p]} | {len(runs.metrics[p])} | {_ci(runs.summary(p, 'balanced_accuracy'))} | "
                     f"{_ci(runs.summary(p, 'macro_f1'))} |")
    head = collect.headline(runs, kinds) or {"diffs": []}
    lines.append("")
    for d in head["diffs"]:
        p = f", p = {d['p']:.3g}" if isinstance(d.get("p"), float) else ""
        ci = f"[{d['lo']:+.4f}, {d['hi']:+.4f}]" if math.isfinite(d["lo"]) else "(no CI)"
        lines.append(f"Paired difference in balanced accuracy, {d['a']} − {d['b']} ({d['role']}): "
                     f"{d['mean']:+.4f} 95% CI {ci} over {d['n']} seeds{p}.")
    df = collect.load_results(run_dir)
    if df is not None and "mix.ratio" in df.columns:
        lines += ["", "| mix.ratio | seeds | balanced accuracy | macro-F1 |", "|---|---|---|---|"]
        for r, g in df.groupby("mix.ratio"):
            lines.append(f"| {r} | {len(g)} | {_ci(collect.mean_ci(g['balanced_accuracy'].tolist()))} | "
                         f"{_ci(collect.mean_ci(g['macro_f1'].tolist()))} |")
    q = collect.read_json(run_dir / "quality" / "quality.json")
    if isinstance(q, dict):
        fid = q.get("fidelity") or {}
        lines += ["", f"Synthetic-set quality (feature space: {fid.get('backbone', '?')}):", "",
                  "| set | n real | n synthetic | FID | KID | precision | recall | density | coverage |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for key in ("real_reference", "synthetic_all", "synthetic_kept"):
            o = (fid.get(key) or {}).get("overall")
            if isinstance(o, dict):
                kid = o.get("kid")
                kid = kid.get("mean") if isinstance(kid, dict) else kid
                lines.append(f"| {key} | {o.get('n_real')} | {o.get('n_fake')} | {_num(o.get('fid'), 2)} | "
                             f"{_num(kid, 4)} | " + " | ".join(_num(o.get(k)) for k in
                                                              ("precision", "recall", "density", "coverage")) + " |")
        gate = q.get("gate") or {}
        filt = (q.get("filter") or {}).get("overall") or {}
        cas = (q.get("cas") or {}).get("synthetic_only") or {}
        lines += ["", f"Quality gate: {'passed' if gate.get('passed') else 'FAILED: ' + '; '.join(gate.get('reasons', []))}"
                  f"; kept {filt.get('kept')}/{filt.get('generated')}; CAS balanced accuracy "
                  f"{_num(cas.get('balanced_accuracy'))}; memorization flags "
                  f"{(q.get('memorization') or {}).get('flagged')}."]
    state = collect.read_json(run_dir / "pipeline" / "state.json")
    rec = state.get("records", {}) if isinstance(state, dict) else {}
    up = {k: rec[k].get("seconds") for k in ("data", "finetune", "generate", "quality") if k in rec}
    if up:
        lines += ["", "Stage wall times (run): " + ", ".join(f"{k} {_num(v / 60 if v else v, 1)} min"
                                                              for k, v in up.items()) + "."]
    if wall is not None:
        lines += [f"Wall time: {wall / 60:.1f} min ({what}, this machine)."]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "bloodmnist-lt.yaml"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "bloodmnist-lt"))
    ap.add_argument("--report-only", action="store_true", help="only print the table of an existing run")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--workers", type=int, default=2, help="parallel classifier processes (default 2: one per core)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override a.b=c (repeatable)")
    args = ap.parse_args()
    out = Path(args.out)
    wall = None
    if not args.report_only:
        if not (ROOT.parent / "shared" / "data" / "bloodmnist.npz").is_file():
            print("needs ../shared/data/bloodmnist.npz (MedMNIST v2 BloodMNIST); not found", file=sys.stderr)
            return 2
        from synthmed.cli import main as cli

        os.chdir(ROOT)  # the config's npz: path is relative to the repository root
        t0 = time.monotonic()
        for verb in ["run"] + ([] if args.no_sweep else ["sweep"]):
            sets = [a for kv in args.overrides for a in ("--set", kv)]
            code = cli([verb, args.config, "-o", str(out), "--workers", str(args.workers), *sets])
            if code:
                return code
        wall = time.monotonic() - t0
    print(table(out, wall, "run" if args.no_sweep else "run + sweep"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
