"""LoRA fine-tuning step time with vs without VAE-latent / text-embedding caching (synthmed's own training code).

Tiny random SD (``synthmed.testing.sd_tiny``) at 64 px on CPU by default; images from ../shared/data/pbc-native
when present (random pixels otherwise). Two set-ups: text encoder frozen (latents + text cached: datadream_joint
with text_encoder_targets=[]) and the cytodiff recipe (text-encoder LoRA: only latents can be cached).

    OMP_NUM_THREADS=1 python benchmarks/bench_sd_cache.py [--steps 30] [--batch 8] [--resolution 64]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from synthmed.generators.sd_config import StableDiffusionConfig
from synthmed.generators.stable_diffusion.base import derived_seed, load_pipeline
from synthmed.generators.stable_diffusion.recipes import resolve
from synthmed.generators.stable_diffusion.train import Runtime, _Encoder, _loss, _optimizer, prepare_models, AdapterJob
from synthmed.testing.sd_tiny import build_tiny_sd

PBC = Path(__file__).resolve().parents[2] / "shared" / "data" / "pbc-native"


def images(n: int, size: int) -> np.ndarray:
    from PIL import Image

    files = sorted(PBC.glob("*/*.jpg"))[:n] if PBC.is_dir() else []
    if len(files) < n:
        return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size))) for f in files])


def step_time(base: Path, recipe: str, te_targets: list[str] | None, cache: bool, args: argparse.Namespace) -> float:
    sd = StableDiffusionConfig(recipe=recipe, resolution=args.resolution, rank=16, alpha=16,
                               text_encoder_targets=te_targets, batch_size=args.batch)
    st = resolve(sd)
    rt = Runtime(device=torch.device(args.device), dtype=torch.float32, seed=0, cache_latents=cache, cache_text=cache)
    pipe = load_pipeline(str(base), True)
    from diffusers import DDPMScheduler

    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    unet, te, trainable = prepare_models(pipe, st, rt, 0)
    imgs = images(args.images, args.resolution)
    job = AdapterJob("bench", imgs, ["a microscopy image of a blood cell"] * len(imgs), Path("."), Path("."))
    t_setup = time.perf_counter()
    enc = _Encoder(pipe, st, rt, job)
    setup = time.perf_counter() - t_setup
    opt = _optimizer(trainable, st, rt)
    times = []
    for step in range(args.warmup + args.steps):
        idx = torch.randperm(len(imgs), generator=torch.Generator().manual_seed(step))[: args.batch]
        t0 = time.perf_counter()
        loss = _loss(pipe, noise_sched, unet, enc, st, rt, idx, torch.Generator().manual_seed(derived_seed(step)))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    return float(np.median(times)), setup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = build_tiny_sd(Path(tmp) / "tiny-sd")
        rows = []
        for label, recipe, te in (("text encoder frozen (latents + text cached)", "datadream_joint", []),
                                  ("cytodiff, text-encoder LoRA (latents cached)", "cytodiff", None)):
            off, _ = step_time(base, recipe, te, False, args)
            on, setup = step_time(base, recipe, te, True, args)
            rows.append((label, off, on, setup))
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
          f"tiny SD, {args.resolution} px, batch {args.batch}, median of {args.steps} steps")
    print("\n| set-up | step without cache (ms) | step with cache (ms) | speed-up | one-off cache build (ms) |")
    print("|---|---|---|---|---|")
    for label, off, on, setup in rows:
        print(f"| {label} | {off * 1e3:.1f} | {on * 1e3:.1f} | {off / on:.2f}x | {setup * 1e3:.0f} |")


if __name__ == "__main__":
    main()
