"""Quality per CPU-minute: FID (DPM++-20) of the S and M presets on BloodMNIST vs training wall-clock minutes.

Each preset trains towards ``--train-steps`` with a checkpoint every ``--every`` steps; at each checkpoint the EMA
weights are sampled (``--n`` images, labels of ``n`` real test images) and scored against the real test images.
Resumable: rerun the same command to continue (checkpoints, timings and features live under ``--work``).
``--phase`` splits the work across machines: train here, sample the EMA checkpoints on a GPU, score here.

    python benchmarks/bench_ddpm_quality.py --presets S,M --train-steps 3000 --every 500 --n 500
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ddpm_samplers import (  # noqa: E402
    CLASSES, blood, cached, fid, inception_features, train_model, train_overrides,
)


def generator_at(work: Path, preset: str, step: int, **overrides):
    """The EMA weights of checkpoint ``step`` as a DDPMGenerator (28 px BloodMNIST, padded to 32)."""
    import torch
    from diffusers import DDPMScheduler

    from synthmed.generators.config import DDPMConfig
    from synthmed.generators.checkpoints import load_tensors
    from synthmed.generators.ddpm.generator import DDPMGenerator
    from synthmed.generators.ddpm.model import ImagePolicy, build_unet, downsampling, resolve_arch

    cfg = DDPMConfig(preset=preset, **overrides)
    arch = resolve_arch(cfg)
    unet = build_unet(arch, 3, len(CLASSES), 32)
    ema = load_tensors(work / "checkpoints" / f"step-{step:07d}" / "ema.safetensors")
    missing, _ = unet.load_state_dict(ema, strict=False)
    assert not [m for m in missing if m in dict(unet.named_parameters())], missing
    sched = dict(DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                               prediction_type=cfg.prediction_type).config)
    policy = ImagePolicy.for_data(28, 28, 3, cfg, downsampling(arch))
    return DDPMGenerator(unet.eval(), sched, CLASSES, policy)


def main() -> None:
    import numpy as np
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="S,M")
    p.add_argument("--train-steps", type=int, default=3000)
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--every", type=int, default=500)
    p.add_argument("--minutes", type=float, default=None, help="stop adding checkpoints once training has run this long")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--guidance", type=float, default=1.5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction"])
    p.add_argument("--snr-gamma", type=float, default=5.0, help="min-SNR-gamma (<= 0: plain MSE)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--phase", default="all", choices=["all", "train", "sample", "score"],
                   help="all: train, sample and score at each checkpoint; or one phase alone (train on the CPU, "
                        "sample the kept EMA checkpoints on a GPU with --device cuda, score where the Inception "
                        "weights are)")
    p.add_argument("--device", default="cpu", help="sampling device")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_ddpm_quality"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    xr, yr = blood("test", args.n, seed=1)
    real = None
    print("| preset | step | training wall (min) | FID dpmpp-20 |\n|---|---|---|---|")
    for preset in args.presets.split(","):
        over = train_overrides(args)
        tag = "-".join([f"b{args.train_batch}", f"s{args.train_steps}", *(f"{k}={v}" for k, v in over.items())])
        work = args.work / f"{preset}-{tag}"  # other training settings get their own folder and points
        work.mkdir(exist_ok=True)
        log = work / "points.json"
        points = json.loads(log.read_text()) if log.is_file() else {}
        for step in range(args.every, args.train_steps + 1, args.every):
            pt = points.get(str(step), {})
            if args.phase in ("all", "train") and "minutes" not in pt:
                if args.minutes is not None and points and max(q["minutes"] for q in points.values()) >= args.minutes:
                    break
                _, spent = train_model(preset, args.train_steps, work, None, args.train_batch, stop_after=step,
                                       checkpoint_every=args.every, **over)
                pt["minutes"] = spent / 60
            if "minutes" not in pt:
                break
            imgs_path = work / f"imgs-{step:07d}-n{args.n}-g{args.guidance}.npy"
            ema_file = work / "checkpoints" / f"step-{step:07d}" / "ema.safetensors"
            if args.phase == "sample" and not ema_file.is_file():
                print(f"{preset} step {step}: no {ema_file.relative_to(work)} here, not sampled", flush=True)
            elif args.phase in ("all", "sample") and not imgs_path.is_file() and "fid" not in pt:
                from synthmed.generators.base import SampleOptions

                gen = generator_at(work, preset, step, **over).to(args.device)
                np.save(imgs_path, gen.sample(yr.tolist(), list(range(len(yr))), SampleOptions(
                    "dpmpp", 20, args.guidance, batch_size=100 if args.device == "cpu" else 1000)))
            if args.phase in ("all", "score") and "fid" not in pt and imgs_path.is_file():
                if real is None:
                    real = cached(args.work / f"real_test_{args.n}.npy", lambda: inception_features(xr))
                pt["fid"] = fid(real, inception_features(np.load(imgs_path)))
                pt["n"] = args.n
            points[str(step)] = pt
            log.write_text(json.dumps(points))
            fid_s = f"{pt['fid']:.1f}" if "fid" in pt else "-"
            print(f"| {preset} | {step} | {pt['minutes']:.1f} | {fid_s} |", flush=True)


if __name__ == "__main__":
    main()
