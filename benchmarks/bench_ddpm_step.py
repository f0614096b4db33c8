"""Per-step cost of the DDPM presets on this machine: one training step (batch 32) and one sampling forward (batch
128), for XS / S / M at 32 px, at the given thread counts (median of the last rounds).

    .venv/bin/python benchmarks/bench_ddpm_step.py --threads 1,2
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    import torch

    from synthmed.generators.config import DDPMConfig
    from synthmed.generators.ddpm.model import build_unet, resolve_arch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1,2")
    p.add_argument("--presets", default="XS,S,M")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    print(f"torch {torch.__version__}\n| threads | preset | params (M) | train step, batch 32 (s) | "
          "sampling forward, batch 128 (ms per image-step) |\n|---|---|---|---|---|")
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for preset in args.presets.split(","):
            torch.manual_seed(0)
            unet = build_unet(resolve_arch(DDPMConfig(preset=preset)), 3, 8, 32)
            opt = torch.optim.AdamW(unet.parameters(), 1e-4)
            x, t, y = torch.randn(32, 3, 32, 32), torch.randint(0, 1000, (32,)), torch.randint(0, 9, (32,))
            train = []
            for _ in range(args.rounds + 1):
                t0 = time.perf_counter()
                unet(x, t, class_labels=y).sample.pow(2).mean().backward()
                opt.step()
                opt.zero_grad()
                train.append(time.perf_counter() - t0)
            xb, tb, yb = torch.randn(128, 3, 32, 32), torch.full((128,), 500), torch.randint(0, 9, (128,))
            fwd = []
            with torch.inference_mode():
                for _ in range(args.rounds):
                    t0 = time.perf_counter()
                    unet(xb, tb, class_labels=yb)
                    fwd.append(time.perf_counter() - t0)
            n = sum(p.numel() for p in unet.parameters()) / 1e6
            print(f"| {threads} | {preset} | {n:.2f} | {statistics.median(train[1:]):.2f} | "
                  f"{statistics.median(fwd) / 128 * 1e3:.1f} |", flush=True)


if __name__ == "__main__":
    main()
