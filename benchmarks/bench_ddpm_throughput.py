"""Training throughput (img/s) and peak RSS: synthmed's DDPM loop vs a diffusers-example-style reference loop.

The reference is written like diffusers' ``examples/unconditional_image_generation/train_unconditional.py``:
a ``Dataset`` of PIL images with per-sample torchvision transforms, a ``DataLoader``, fp32, plain AdamW/EMA.
Both use the same UNet (a synthmed preset), batch size and images. Each runs in its own subprocess so that peak
RSS (``ru_maxrss``) is measured fairly.

    python benchmarks/bench_ddpm_throughput.py --preset S --batch 32 --steps 8 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BLOOD = Path(os.environ.get("SYNTHMED_SHARED", ROOT.parent / "shared")) / "data" / "bloodmnist.npz"


def sync(device: str) -> None:
    """Wait for queued GPU work, so that a timestamp marks a finished step (a no-op on the CPU)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def load_images(n: int) -> tuple[np.ndarray, np.ndarray, str]:
    if BLOOD.is_file():
        z = np.load(BLOOD)
        return z["train_images"][:n], z["train_labels"][:n, 0].astype(np.int64), f"BloodMNIST train[:{n}] 28x28 RGB"
    raise SystemExit(f"{BLOOD} not found (needs ../shared)")


def run_ours(args: argparse.Namespace, images: np.ndarray, labels: np.ndarray) -> list[float]:
    import tempfile

    from synthmed.data.dataset import ImageSet
    from synthmed.generators.config import DDPMConfig
    from synthmed.generators.ddpm.train import compute_loss, train_ddpm

    stamps: list[float] = []

    def timed_loss(*a):  # called once per step: the interval between calls is one full training step
        sync(args.device)
        stamps.append(time.perf_counter())
        return compute_loss(*a)

    cfg = DDPMConfig(preset=args.preset, steps=args.warmup + args.steps + 1, batch_size=args.batch, hflip=True,
                     checkpoint_every=10**6, mixed_precision=args.precision, warmup_steps=1)
    data = ImageSet(images, labels, [str(i) for i in range(len(labels))])
    classes = [str(c) for c in range(int(labels.max()) + 1)]
    with tempfile.TemporaryDirectory() as tmp:
        train_ddpm(cfg, data, classes, Path(tmp), seed=0, device=args.device, progress=False, loss_fn=timed_loss)
    return np.diff(stamps)[args.warmup:].tolist()


def run_reference(args: argparse.Namespace, images: np.ndarray, labels: np.ndarray) -> list[float]:
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel
    from PIL import Image
    from torchvision import transforms

    from synthmed.generators.config import DDPMConfig
    from synthmed.generators.ddpm.model import build_unet, resolve_arch

    class Images(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.tf = transforms.Compose([
                transforms.Resize(32, interpolation=transforms.InterpolationMode.BILINEAR),
                transforms.CenterCrop(32), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                transforms.Normalize([0.5], [0.5])])

        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int):
            return {"input": self.tf(Image.fromarray(images[i]).convert("RGB")), "label": int(labels[i])}

    acc = Accelerator(mixed_precision="no", cpu=args.device == "cpu")
    torch.manual_seed(0)
    model = build_unet(resolve_arch(DDPMConfig(preset=args.preset)), 3, int(labels.max()) + 1, 32)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    loader = torch.utils.data.DataLoader(Images(), batch_size=args.batch, shuffle=True, num_workers=0)
    total = args.warmup + args.steps + 1
    lr_sched = get_cosine_schedule_with_warmup(opt, 1, total)
    model, opt, loader, lr_sched = acc.prepare(model, opt, loader, lr_sched)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
    stamps: list[float] = []
    step = 0
    while step < total:
        for batch in loader:
            sync(args.device)
            stamps.append(time.perf_counter())
            clean = batch["input"]
            noise = torch.randn(clean.shape, device=clean.device)
            t = torch.randint(0, 1000, (clean.shape[0],), device=clean.device).long()
            noisy = sched.add_noise(clean, noise, t)
            with acc.accumulate(model):
                pred = model(noisy, t, class_labels=batch["label"]).sample
                loss = F.mse_loss(pred.float(), noise)
                acc.backward(loss)
                acc.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                lr_sched.step()
                opt.zero_grad()
            ema.step(model.parameters())
            step += 1
            if step >= total:
                break
    return np.diff(stamps)[args.warmup:].tolist()


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    images, labels, what = load_images(args.n_images)
    fn = run_ours if args.mode == "ours" else run_reference
    dts = fn(args, images, labels)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else None
    print(json.dumps({"mode": args.mode, "data": what, "step_s_median": float(np.median(dts)),
                      "img_per_s": args.batch / float(np.median(dts)), "steps_timed": len(dts),
                      "peak_rss_mb": rss_mb, "peak_gpu_mb": gpu_mb}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="S")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=8, help="timed steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n-images", type=int, default=4000)
    p.add_argument("--precision", default="auto", help="our loop's mixed_precision (reference is fp32)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (GPU: timings sync every step in both loops)")
    p.add_argument("--mode", choices=["ours", "reference", "both"], default="both")
    p.add_argument("--rounds", type=int, default=1, help="alternate reference/ours this many times; best of each")
    args = p.parse_args()
    if args.mode != "both":
        return child(args)
    import diffusers
    import torch

    best: dict[str, dict] = {}
    for _ in range(args.rounds):  # alternate, so that a change in the load of a shared machine hits both
        for mode in ("reference", "ours"):
            cmd = [sys.executable, __file__, "--mode", mode] + [
                f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("mode", "rounds")]
            out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
            if out.returncode:
                raise SystemExit(out.stderr[-2000:])
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  {mode}: {r['img_per_s']:.1f} img/s, peak RSS {r['peak_rss_mb']:.0f} MB", file=sys.stderr)
            if mode not in best or r["img_per_s"] > best[mode]["img_per_s"]:
                best[mode] = r
    results = [best["reference"], best["ours"]]
    ref, ours = results
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, device {dev}, cpu threads {args.threads}, "
          f"best of {args.rounds} alternating round(s), "
          f"preset {args.preset}, batch {args.batch}, {ours['data']}")
    print("| loop | img/s | median step (s) | peak RSS (MB) | peak GPU memory (MB) |\n|---|---|---|---|---|")
    for r in results:
        gpu = "-" if r.get("peak_gpu_mb") is None else f"{r['peak_gpu_mb']:.0f}"
        print(f"| {r['mode']} | {r['img_per_s']:.1f} | {r['step_s_median']:.4f} | {r['peak_rss_mb']:.0f} | {gpu} |")
    print(f"speed-up ours/reference: {ours['img_per_s'] / ref['img_per_s']:.2f}x; "
          f"RSS ours/reference: {ours['peak_rss_mb'] / ref['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
