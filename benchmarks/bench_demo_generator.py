"""Demo generator study: which from-scratch generator passes the quality gate on the demo's phantom data fastest.

For every (kind, settings) variant: train on the demo config's long-tailed phantom training split for a number of
steps, generate the demo's synthetic set, run the quality stage, and print one JSON line with the training
wall-clock, the gate's figures (FID and precision ratios to the real-vs-real reference, kept fraction) and the
per-class kept counts. Everything else is the demo config (configs/demo.yaml), so the numbers are what `make demo`
would see with that generator.

    OMP_NUM_THREADS=1 python benchmarks/bench_demo_generator.py --variants ddpm-eps,edm --steps 600 --out /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

VARIANTS: dict[str, list[str]] = {
    "ddpm-eps": ["generator.kind=ddpm"],
    "ddpm-v": ["generator.kind=ddpm", "generator.ddpm.prediction_type=v_prediction"],
    "ddpm-v-cp0.5": ["generator.kind=ddpm", "generator.ddpm.prediction_type=v_prediction",
                     "generator.ddpm.class_power=0.5"],
    "ddpm-v-cp0": ["generator.kind=ddpm", "generator.ddpm.prediction_type=v_prediction",
                   "generator.ddpm.class_power=0"],
    "edm": ["generator.kind=edm"],
    "edm-cp0.5": ["generator.kind=edm", "generator.edm.class_power=0.5"],
    "edm-cp0": ["generator.kind=edm", "generator.edm.class_power=0"],
}


def overrides_for(variant: str, steps: int, preset: str, lr: float, batch: int) -> list[str]:
    kind = "edm" if variant.startswith("edm") else "ddpm"
    return [*VARIANTS[variant], f"generator.{kind}.preset={preset}", f"generator.{kind}.steps={steps}",
            f"generator.{kind}.lr={lr}", f"generator.{kind}.batch_size={batch}",
            f"generator.{kind}.warmup_steps={min(100, steps // 10)}", f"generator.{kind}.checkpoint_every={steps}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--variants", default="ddpm-eps,edm")
    ap.add_argument("--steps", default="600", help="comma-separated training step counts")
    ap.add_argument("--preset", default="XS")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--sampler", default=None, help="generation.sampler (default: the config's)")
    ap.add_argument("--out", default="/tmp/bench-demo-generator")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="more overrides a.b=c")
    ap.add_argument("--generation", default="plain",
                    help="comma-separated generation variants from the same trained generator: plain | guided<S> "
                         "(same_class real-image guidance at strength S) | h2t<S> (head_to_tail at strength S)")
    args = ap.parse_args()

    import synthmed

    out = Path(args.out)
    for steps in [int(s) for s in args.steps.split(",")]:
        for variant in args.variants.split(","):
            sets = overrides_for(variant, steps, args.preset, args.lr, args.batch) + list(args.extra)
            if args.sampler:
                sets.append(f"generation.sampler={args.sampler}")
            cfg = synthmed.load_config(args.config, overrides=sets)
            base = out / f"{variant}-{args.preset}-{steps}"
            shutil.rmtree(base, ignore_errors=True)
            data = synthmed.load_data(cfg, base)
            t0, c0 = time.perf_counter(), time.process_time()
            synthmed.finetune(cfg, base, data=data)
            t_train, c_train = time.perf_counter() - t0, time.process_time() - c0
            for gvar in args.generation.split(","):
                gsets = list(sets)
                if gvar.startswith("guided"):
                    gsets += ["generation.guide=same_class", f"generation.strength={float(gvar[6:])}"]
                elif gvar.startswith("h2t"):
                    gsets += ["generation.guide=head_to_tail", f"generation.strength={float(gvar[3:])}"]
                gcfg = synthmed.load_config(args.config, overrides=gsets)
                run = base.with_name(f"{base.name}-{gvar}")
                shutil.rmtree(run, ignore_errors=True)
                shutil.copytree(base, run)
                t0 = time.perf_counter()
                synthmed.generate(gcfg, run, data=data)
                t_gen = time.perf_counter() - t0
                synthmed.quality(gcfg, run, data=data)
                q = json.loads((run / "quality" / "quality.json").read_text())
                gate = q.get("gate", {})
                per_class = (q.get("filter") or {}).get("per_class") or {}
                print(json.dumps({
                    "variant": variant, "generation": gvar, "preset": args.preset, "steps": steps,
                    "train_wall_s": round(t_train, 1), "train_cpu_s": round(c_train, 1), "generate_s": round(t_gen, 1),
                    "gate_passed": gate.get("passed"), "figures": gate.get("figures"),
                    "kept_per_class": {c: v.get("kept") for c, v in per_class.items()},
                    "n_synthetic": q.get("n_synthetic"), "reasons": gate.get("reasons"),
                }), flush=True)

if __name__ == "__main__":
    main()
