"""Per-sample gradient variance of a trained DDPM's loss under noise-level sampling choices (issue 18): chooses
``generator.ddpm.timestep_importance`` before any FID, and screens stratified noise levels.

Reads a ``synthmed finetune`` run directory: the UNet config and scheduler of ``RUN/generator``, the raw (not EMA)
weights of ``RUN/generator_work/checkpoints/step-NNNNNNN``, and the run's own training images (BloodMNIST ids in
``RUN/generator/training_images.csv``, the npz of ``../shared``). Every gradient is the product's loss on one image:
the min-SNR-weighted MSE at one noise level t (fp32, the UNet in train mode).

1. ``--n`` images with t drawn uniformly: the trace variance of the per-sample gradient under importance sampling
   p(t) = (1 - a) / T + a w(t) / sum w (each row x (1/T) / p(t), the product's rule), as a ratio to uniform, for a
   in ``--mixtures``; and the cross-fitted ceiling q(t) ~ w(t) sqrt(c(t)) (c: the unweighted squared gradient norm
   per 1/20 of the schedule, fitted on one half of the draws and scored on the other), the best any p(t) can do.
2. ``--strata-n`` draws (0 = skip) with one t per equal-probability stratum of p(t) at ``--stratify-a``: the batch
   gradient variance with ``--strata`` strata over that of independent draws (the within-stratum variances'
   mean over the total variance; 1 = stratifying buys nothing).

    python benchmarks/bench_timestep_variance.py RUN --step 2058 --n 800 --strata-n 3200
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ddpm_samplers import blood  # noqa: E402


def load(run: Path, step: int):  # type: ignore[no-untyped-def]
    import torch
    from diffusers import DDPMScheduler
    from safetensors.torch import load_file

    from synthmed.generators.ddpm.generator import DDPMGenerator
    from synthmed.generators.ddpm.model import to_model_range

    gen = DDPMGenerator.load(run / "generator")
    ckpt = run / "generator_work" / "checkpoints" / f"step-{step:07d}" / "model.safetensors"
    if not ckpt.is_file():
        raise SystemExit(f"{ckpt} not found (the run keeps its last average_checkpoints checkpoints)")
    gen.unet.load_state_dict(load_file(str(ckpt)))
    gen.unet.train()
    settings = json.loads((run / "generator" / "generator_config.json").read_text())["settings"]
    with open(run / "generator" / "training_images.csv", newline="") as f:
        ids = [int(r["id"].split("/")[1]) for r in csv.DictReader(f) if r["id"].startswith("train/")]
    x, y = blood("train")
    x = to_model_range(gen.policy.pad_uint8(x[ids]))
    return gen.unet, DDPMScheduler.from_config(gen.scheduler_config), settings, x, torch.as_tensor(y[ids])


def grad_of(unet, sched, w, x, y, t, noise, scale=1.0):  # type: ignore[no-untyped-def]
    """The flattened gradient of w(t) * scale * mse for one image."""
    import torch

    noisy = sched.add_noise(x, noise, t)
    target = sched.get_velocity(x, noise, t)
    pred = unet(noisy, t, class_labels=y).sample
    loss = float(w[t[0]] * scale) * (pred.float() - target).pow(2).mean()
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(unet.parameters()))])


def main() -> None:
    import torch

    from synthmed.generators.ddpm.train import snr_weights, timestep_probs

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("--step", type=int, required=True)
    p.add_argument("--n", type=int, default=800)
    p.add_argument("--mixtures", default="0.25,0.5,0.75,1.0")
    p.add_argument("--strata-n", type=int, default=0)
    p.add_argument("--strata", type=int, default=64)
    p.add_argument("--stratify-a", type=float, default=0.75)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    unet, sched, s, x, y = load(args.run, args.step)
    if s["prediction_type"] != "v_prediction" or s["snr_gamma"] is None:
        raise SystemExit("this screen is for v-prediction with min-SNR weights (the shipped recipe)")
    T = int(s["num_train_timesteps"])
    w = snr_weights(sched, torch.arange(T), float(s["snr_gamma"]), "v_prediction").double()

    def probs(a: float) -> torch.Tensor:
        return timestep_probs(sched, SimpleNamespace(timestep_importance=a, num_train_timesteps=T,
                                                     snr_gamma=s["snr_gamma"], prediction_type="v_prediction")).double()

    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randint(len(y), (args.n,), generator=g)
    ts = torch.randint(T, (args.n,), generator=g)
    total, sq, t0 = None, torch.zeros(args.n, dtype=torch.float64), time.time()
    for i in range(args.n):
        j = int(idx[i])
        gr = grad_of(unet, sched, w, x[j:j + 1], y[j:j + 1], ts[i:i + 1], torch.randn((1, *x.shape[1:]), generator=g))
        total = gr if total is None else total + gr
        sq[i] = float(gr.double().pow(2).sum())
    mean2 = float((total / args.n).double().pow(2).sum())
    u, base = 1.0 / T, float(sq.mean()) - mean2
    out: dict = {"run": str(args.run), "step": args.step, "n": args.n}

    def ratio(q: torch.Tensor, rows: torch.Tensor) -> float:
        return (float((u / q[ts[rows]] * sq[rows]).mean()) - mean2) / (float(sq[rows].mean()) - mean2)

    every = torch.ones(args.n, dtype=torch.bool)
    out["mixture_ratio"] = {a: round(ratio(probs(float(a)), every), 3) for a in args.mixtures.split(",")}
    bin_of_t = torch.div(torch.arange(T), T // 20, rounding_mode="floor").clamp(max=19)
    half, bins = torch.arange(args.n) % 2 == 0, bin_of_t[ts]
    ceiling = []
    for fit_rows in (half, ~half):
        unweighted = sq / w[ts] ** 2
        c = torch.stack([unweighted[fit_rows & (bins == b)].mean() for b in range(20)])
        c = torch.where(c.isnan(), unweighted[fit_rows].mean(), c)  # a bin no draw fell in (small --n)
        q = w * c[bin_of_t].sqrt()
        ceiling.append(ratio(q / q.sum(), ~fit_rows))
    out["ceiling_ratio"] = round(sum(ceiling) / 2, 3)
    if args.strata_n:
        out["stratified"] = stratified(args, unet, sched, w, x, y, probs(args.stratify_a), g)
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=1))


def stratified(args, unet, sched, w, x, y, q, g) -> dict:  # type: ignore[no-untyped-def]
    """Draws with equal counts per equal-probability stratum of q; within-stratum over total trace variance."""
    import torch

    B, T = args.strata, len(q)
    per = max(2, args.strata_n // B)
    cdf = torch.cumsum(q, 0) / q.sum()
    sums, sq = None, torch.zeros(B, dtype=torch.float64)
    for i in range(B * per):
        s = i % B
        t = torch.searchsorted(cdf, (s + torch.rand(1, generator=g, dtype=torch.float64)) / B).clamp(max=T - 1)
        j = int(torch.randint(len(y), (1,), generator=g))
        gr = grad_of(unet, sched, w, x[j:j + 1], y[j:j + 1], t, torch.randn((1, *x.shape[1:]), generator=g),
                     scale=float(1 / (T * q[t[0]])))
        if sums is None:
            sums = torch.zeros(B, gr.numel())
        sums[s] += gr
        sq[s] += float(gr.double().pow(2).sum())
    mu = sums / per
    total = float(sq.sum() / (B * per) - mu.mean(0).double().pow(2).sum())
    within = (sq / per - mu.double().pow(2).sum(1)) * per / (per - 1)
    return {"a": args.stratify_a, "strata": B, "draws": B * per, "ratio": round(float(within.mean()) / total, 3)}


if __name__ == "__main__":
    main()
