"""Sampler speed vs quality: FID of DDPM-1000, DDIM-50, DPM++-20, DPM++-10 for one DDPM trained on BloodMNIST.

FID uses the TensorFlow FID Inception-v3 (TorchScript, ``../shared/weights``) on 299x299 bilinear-resized
images scaled ``(uint8 - 128) / 128``; the reference set is ``n`` real BloodMNIST test images and the generated
set uses the same labels. Training is resumable (checkpoints under ``--work``); features are cached.

    python benchmarks/bench_ddpm_samplers.py --preset S --train-steps 3000 --n 500 --work /tmp/bench_ddpm
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
BLOOD = SHARED / "data" / "bloodmnist.npz"
INCEPTION = SHARED / "weights" / "fid-inception-v3-tf.torchscript.pt"
CLASSES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]


def blood(split: str, n: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    if not BLOOD.is_file():
        raise SystemExit(f"{BLOOD} not found (needs ../shared)")
    z = np.load(BLOOD)
    x, y = z[f"{split}_images"], z[f"{split}_labels"][:, 0].astype(np.int64)
    if n is not None and n < len(y):
        idx = np.sort(np.random.default_rng(seed).choice(len(y), n, replace=False))
        x, y = x[idx], y[idx]
    return x, y


def inception_features(images: np.ndarray, batch: int = 50) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    net = torch.jit.load(str(INCEPTION), map_location="cpu").eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).float()
            if x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1)
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            out.append(net((x - 128) / 128).double().numpy())
    return np.concatenate(out)


def fid(f1: np.ndarray, f2: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():
        eps = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean.real))


def cached(path: Path, fn) -> np.ndarray:
    if path.is_file():
        return np.load(path)
    arr = fn()
    np.save(path, arr)
    return arr


def train_model(preset: str, steps: int, work: Path, n_train: int | None, batch: int, stop_after: int | None = None,
                checkpoint_every: int = 250, **overrides):
    """Train (resuming) on BloodMNIST train; returns the EMA generator and the training wall time recorded so far."""
    from synthmed.data.dataset import ImageSet
    from synthmed.generators.config import DDPMConfig
    from synthmed.generators.ddpm_train import SimulatedInterrupt, train_ddpm

    x, y = blood("train", n_train)
    data = ImageSet(x, y, [f"train/{i}" for i in range(len(y))])
    cfg = DDPMConfig(preset=preset, steps=steps, batch_size=batch, checkpoint_every=checkpoint_every,
                     keep_checkpoints=100, warmup_steps=min(100, steps // 10), hflip=True, vflip=True,
                     **overrides)
    log = work / "train_time.json"
    spent = json.loads(log.read_text())["seconds"] if log.is_file() else 0.0
    t0 = time.time()
    try:
        res = train_ddpm(cfg, data, CLASSES, work, seed=0, device="cpu", stop_after=stop_after)
        gen = res.generator
    except SimulatedInterrupt:
        gen = None
    spent += time.time() - t0
    log.write_text(json.dumps({"seconds": spent}))
    return gen, spent


def main() -> None:
    import diffusers
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="S")
    p.add_argument("--train-steps", type=int, default=3000)
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--n-train", type=int, default=None, help="BloodMNIST train images used (default all 11959)")
    p.add_argument("--n", type=int, default=500, help="images per FID set")
    p.add_argument("--samplers", default="ddpm:1000,ddim:50,dpmpp:20,dpmpp:10")
    p.add_argument("--guidance", type=float, default=1.5)
    p.add_argument("--batch", type=int, default=100, help="sampling batch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_ddpm_samplers"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    gen, train_s = train_model(args.preset, args.train_steps, args.work, args.n_train, args.train_batch)
    xr, yr = blood("test", args.n, seed=1)
    real = cached(args.work / f"real_test_{args.n}.npy", lambda: inception_features(xr))
    xt, _ = blood("train", args.n, seed=2)
    base = fid(real, cached(args.work / f"real_train_{args.n}.npy", lambda: inception_features(xt)))
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, threads {args.threads}; preset "
          f"{args.preset} ({sum(p.numel() for p in gen.unet.parameters()) / 1e6:.2f} M params), "
          f"{args.train_steps} steps x batch {args.train_batch}, training wall {train_s / 60:.1f} min; "
          f"n={args.n}, guidance {args.guidance}")
    print(f"real train vs real test FID (n={args.n}): {base:.1f}")
    print("| sampler | steps | s/img | FID |\n|---|---|---|---|")
    for spec in args.samplers.split(","):
        name, steps = spec.split(":")
        t0 = time.time()
        imgs = gen.sample(yr.tolist(), list(range(len(yr))), sampler=name, steps=int(steps), guidance=args.guidance,
                          batch_size=args.batch)
        dt = (time.time() - t0) / len(yr)
        feats = cached(args.work / f"gen_{name}{steps}_g{args.guidance}_{args.n}.npy", lambda: inception_features(imgs))
        print(f"| {name} | {steps} | {dt:.3f} | {fid(real, feats):.1f} |", flush=True)


if __name__ == "__main__":
    main()
