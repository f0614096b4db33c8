"""Inception FID of a saved generator folder (what ``synthmed finetune`` wrote) on BloodMNIST, scored as
``bench_quality_per_minute.py`` scores its checkpoints: ``--n`` images with the labels of ``--n`` real val or test
images (drawn with seed 1), per-image seeds ``--first-seed`` .. + n - 1, against those real images with the FID
Inception from ``../shared/weights``, with precision / recall / density / coverage (k = 5). Scores are appended to
``RUN/generator_scores.json``.

    python benchmarks/score_generator.py runs/fid/generator --ref val --sampler dpmpp_sde --sampler-steps 30 \\
        --guidance 1.0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ddpm_samplers import blood, cached, fid, inception_features  # noqa: E402


def main() -> None:
    import torch

    from synthmed.generators.base import SampleOptions
    from synthmed.generators.registry import generator_class
    from synthmed.generators.contract import stored_kind
    from synthmed.metrics.fidelity import prdc

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("generator", type=Path, help="a generator folder (RUN/generator)")
    p.add_argument("--ref", default="val", choices=["val", "test"])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--sampler", default="dpmpp_sde", help="dpmpp_sde / dpmpp / ... (edm generators: dpmpp, euler, heun)")
    p.add_argument("--sampler-steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", type=Path, default=None, help="folder of cached real features (real_<ref>_<n>.npy)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    gen = generator_class(stored_kind(args.generator)).load(args.generator, device="cpu")
    xr, yr = blood(args.ref, args.n, seed=1)
    t0 = time.time()
    imgs = gen.sample(yr.tolist(), list(range(args.first_seed, args.first_seed + len(yr))),
                      SampleOptions(args.sampler, args.sampler_steps, args.guidance, batch_size=100,
                                    precision=args.precision))
    minutes = (time.time() - t0) / 60
    cache = args.cache or args.generator.parent
    real = cached(cache / f"real_{args.ref}_{args.n}.npy", lambda: inception_features(xr))
    feats = inception_features(imgs)
    row = {"ref": args.ref, "n": args.n, "first_seed": args.first_seed, "sampler": args.sampler,
           "sampler_steps": args.sampler_steps, "guidance": args.guidance, "precision": args.precision,
           "fid": fid(real, feats), "prdc": prdc(real, feats, k=5), "sample_minutes": minutes,
           "training": {k: gen.meta.get("training", {}).get(k) for k in ("steps", "average_checkpoints",
                                                                        "averaged_steps", "seed", "precision")}}
    out = args.generator.parent / "generator_scores.json"
    rows = json.loads(out.read_text()) if out.is_file() else []  # read now: a val and a test scoring may run together
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rows + [row], indent=1))
    tmp.replace(out)
    print(f"{args.generator} ({args.ref}, n = {args.n}, seeds from {args.first_seed}, {args.sampler} "
          f"{args.sampler_steps}, guidance {args.guidance}, {args.precision}): FID {row['fid']:.2f}, {row['prdc']}",
          flush=True)


if __name__ == "__main__":
    main()
