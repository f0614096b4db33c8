"""Sampler speed vs quality: FID of DDPM-1000, DDIM-50, DPM++-20, DPM++-10 for one DDPM trained on BloodMNIST.

FID uses the TensorFlow FID Inception-v3 (TorchScript, ``../shared/weights``) on 299x299 bilinear-resized
images scaled ``(uint8 - 128) / 128``; the reference set is ``n`` real BloodMNIST test images and the generated
set uses the same labels. Training is resumable (checkpoints under ``--work``); features are cached.

    python benchmarks/bench_ddpm_samplers.py --preset S --train-steps 3000 --n 500 --work /tmp/bench_ddpm
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SYNTHMED_SHARED", ROOT.parent / "shared"))  # override: data carried to a GPU machine
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
    """synthmed's exact FID (metrics.fidelity.fid; checked equal to torchmetrics' FID in tests/test_fidelity.py)."""
    from synthmed.metrics.fidelity import fid as _fid

    return _fid(f1, f2)


def kid(f1: np.ndarray, f2: np.ndarray) -> tuple[float, float]:
    """KID mean and std (torchmetrics, via synthmed.metrics.fidelity.kid; unbiased, so comparable across n)."""
    from synthmed.metrics.fidelity import kid as _kid

    k = _kid(f1, f2, subsets=50)
    return k["mean"], k["std"]


def cached(path: Path, fn) -> np.ndarray:
    if path.is_file():
        return np.load(path)
    arr = fn()
    np.save(path, arr)
    return arr


def train_model(preset: str, steps: int, work: Path, n_train: int | None, batch: int, stop_after: int | None = None,
                checkpoint_every: int = 250, device: str = "cpu", **overrides):
    """Train (resuming) on BloodMNIST train; returns the EMA generator and the training wall time recorded so far."""
    from synthmed.data.dataset import ImageSet
    from synthmed.generators.config import DDPMConfig
    from synthmed.generators.checkpoints import SimulatedInterrupt
    from synthmed.generators.ddpm.train import train_ddpm

    x, y = blood("train", n_train)
    data = ImageSet(x, y, [f"train/{i}" for i in range(len(y))])
    cfg = DDPMConfig(preset=preset, steps=steps, batch_size=batch, checkpoint_every=checkpoint_every,
                     keep_checkpoints=100, warmup_steps=min(100, steps // 10), hflip=True, vflip=True,
                     **overrides)
    log = work / "train_time.json"
    spent = json.loads(log.read_text())["seconds"] if log.is_file() else 0.0
    t0 = time.time()
    try:
        res = train_ddpm(cfg, data, CLASSES, work, seed=0, device=device, stop_after=stop_after)
        gen = res.generator
    except SimulatedInterrupt:
        gen = None
    spent += time.time() - t0
    log.write_text(json.dumps({"seconds": spent}))
    return gen, spent


def train_overrides(args: argparse.Namespace) -> dict:
    """DDPMConfig settings given on the command line (prediction type, loss weighting, learning rate)."""
    return {"prediction_type": args.prediction_type, "snr_gamma": args.snr_gamma if args.snr_gamma > 0 else None,
            "lr": args.lr}


def main() -> None:
    import diffusers
    import torch
    from synthmed.generators.base import SampleOptions

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="S")
    p.add_argument("--train-steps", type=int, default=3000)
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--n-train", type=int, default=None, help="BloodMNIST train images used (default all 11959)")
    p.add_argument("--n", type=int, default=500, help="images per FID set")
    p.add_argument("--samplers", default="ddpm:1000,ddim:50,dpmpp:20,dpmpp:10",
                   help="name:steps[:n] (n: images for that sampler, default --n)")
    p.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction"])
    p.add_argument("--snr-gamma", type=float, default=5.0, help="min-SNR-gamma (<= 0: plain MSE)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--guidance", type=float, default=1.5)
    p.add_argument("--batch", type=int, default=100, help="sampling batch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="training and sampling device (cuda: timings are GPU timings)")
    p.add_argument("--no-fid", action="store_true",
                   help="train and sample only (images kept as gen_*_imgs.npy); rerun without it where the "
                        "Inception weights are to score them")
    p.add_argument("--score-only", action="store_true",
                   help="score images sampled earlier (e.g. on a GPU machine with --no-fid); no training here")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_ddpm_samplers"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    info_path = args.work / "train_info.json"
    if args.score_only:
        gen, info = None, json.loads(info_path.read_text())
    else:
        gen, train_s = train_model(args.preset, args.train_steps, args.work, args.n_train, args.train_batch,
                                   checkpoint_every=args.checkpoint_every, device=args.device,
                                   **train_overrides(args))
        gen = gen.to(args.device)
        info = {"train_s": train_s, "device": args.device, "torch": torch.__version__,
                "diffusers": diffusers.__version__, "params_m": sum(p.numel() for p in gen.unet.parameters()) / 1e6}
        info_path.write_text(json.dumps(info))
    xr, yr = blood("test", args.n, seed=1)
    specs = [spec.split(":") for spec in args.samplers.split(",")]
    for name, steps, *rest in specs:  # sample (or reuse) every sampler's images first, then score
        n = int(rest[0]) if rest else args.n
        if n > args.n:
            raise SystemExit(f"{':'.join([name, steps, *rest])}: n {n} > --n {args.n}")
        imgs_path = args.work / f"gen_{name}{steps}_g{args.guidance}_{n}of{args.n}_imgs.npy"
        timing = imgs_path.with_name(imgs_path.name.replace("_imgs.npy", ".json"))
        if not imgs_path.is_file() and not imgs_path.with_name(imgs_path.name.replace("_imgs", "")).is_file():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.time()
            imgs = gen.sample(yr[:n].tolist(), list(range(n)),
                              SampleOptions(name, int(steps), args.guidance, batch_size=args.batch))
            timing.write_text(json.dumps({"s_per_img": (time.time() - t0) / n, "threads": args.threads,
                                          "device": args.device, "batch": args.batch}))
            np.save(imgs_path, imgs)
            print(f"sampled {name}-{steps}: n={n}, {(time.time() - t0) / n:.4f} s/img on {args.device}", flush=True)
    if args.no_fid:
        print(f"training wall {info['train_s'] / 60:.1f} min; images under {args.work} (--no-fid)")
        return
    real = cached(args.work / f"real_test_{args.n}.npy", lambda: inception_features(xr))
    n_min = min(int(rest[0]) if rest else args.n for _, _, *rest in specs)
    xt, _ = blood("train", n_min, seed=2)  # the real-vs-real reference at the table's smallest n
    f_train = cached(args.work / f"real_train_{n_min}.npy", lambda: inception_features(xt))
    base = fid(real[:n_min], f_train)
    print(f"trained and sampled with torch {info['torch']}, diffusers {info['diffusers']} on {info['device']} "
          f"(threads {args.threads}); preset {args.preset} ({info['params_m']:.2f} M params), {args.train_steps} "
          f"steps x batch {args.train_batch}, training wall {info['train_s'] / 60:.1f} min; n={args.n}, "
          f"guidance {args.guidance}")
    base_kid = kid(real[:n_min], f_train)[0]
    print(f"real train vs real test (n={n_min} each): FID {base:.1f}, KID x 1e3 {base_kid * 1e3:.1f}")
    # image i depends only on (label i, seed i): the first n_min images of every sampler are the same draws
    print(f"| sampler | steps | n | s/img | FID (n vs n real) | FID (first {n_min} vs {n_min}) | KID x 1e3 (mean +- std) |"
          "\n|---|---|---|---|---|---|---|")
    for name, steps, *rest in specs:
        spec = ":".join([name, steps, *rest])
        n = int(rest[0]) if rest else args.n
        path = args.work / f"gen_{name}{steps}_g{args.guidance}_{n}of{args.n}.npy"  # Inception features
        timing = path.with_suffix(".json")
        if not path.is_file():
            np.save(path, inception_features(np.load(path.with_name(path.stem + "_imgs.npy"))))
        dt = json.loads(timing.read_text())["s_per_img"] if timing.is_file() else float("nan")
        feats = np.load(path)
        k, ks = kid(real, feats)
        print(f"| {name} | {steps} | {n} | {dt:.3f} | {fid(real[:n], feats):.1f} | {fid(real[:n_min], feats[:n_min]):.1f} "
              f"| {k * 1e3:.1f} +- {ks * 1e3:.1f} |", flush=True)


if __name__ == "__main__":
    main()
