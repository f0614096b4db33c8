"""Per-step cost of the DDPM UNets on this machine: one training step and one sampling forward (batch 128), for the
presets (or a custom width) at 32 px, at the given thread counts and precisions (median of the last rounds).

    .venv/bin/python benchmarks/bench_ddpm_step.py --threads 1,2
    .venv/bin/python benchmarks/bench_ddpm_step.py --threads 2 --channels 24,48,96,96 --attention 3 --batch 64 \
        --precision fp32,bf16

bf16 is autocast, as training with ``mixed_precision: bf16`` (``auto`` picks it only where oneDNN reports native
bf16): on CPUs without AVX512-BF16 / AMX it is many times slower than fp32.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    import torch

    from synthmed.generators.accel import resolve_precision
    from synthmed.generators.config import DDPMConfig
    from synthmed.generators.ddpm.model import build_unet, resolve_arch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1,2")
    p.add_argument("--presets", default="XS,S,M")
    p.add_argument("--channels", default="", help="a custom UNet, e.g. 24,48,96,96 (overrides --presets)")
    p.add_argument("--layers", type=int, default=1, help="layers per block of the custom UNet")
    p.add_argument("--attention", default="", help="levels of the custom UNet with self-attention, e.g. 3")
    p.add_argument("--batch", type=int, default=32, help="training batch")
    p.add_argument("--precision", default="fp32", help="comma list of fp32, bf16")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    bad = [m for m in args.precision.split(",") if m not in ("fp32", "bf16")]
    if bad:
        raise SystemExit(f"--precision {bad[0]}: expected fp32 or bf16")
    if args.channels:
        models = {args.channels: DDPMConfig(
            preset="custom", block_out_channels=[int(c) for c in args.channels.split(",")],
            layers_per_block=args.layers, attention_levels=[int(a) for a in args.attention.split(",") if a])}
    else:
        models = {preset: DDPMConfig(preset=preset) for preset in args.presets.split(",")}
    native = resolve_precision("auto", torch.device("cpu")) == torch.bfloat16  # what `auto` picks on this CPU
    print(f"torch {torch.__version__}, bf16 native: {native}\n"
          f"| threads | model | precision | params (M) | train step, batch {args.batch} (s) | "
          "sampling forward, batch 128 (ms per image-step) |\n|---|---|---|---|---|---|")
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for name, cfg in models.items():
            for mode in args.precision.split(","):
                torch.manual_seed(0)
                unet = build_unet(resolve_arch(cfg), 3, 8, 32)
                opt = torch.optim.AdamW(unet.parameters(), 1e-4)
                b = args.batch
                x, t, y = torch.randn(b, 3, 32, 32), torch.randint(0, 1000, (b,)), torch.randint(0, 9, (b,))
                ctx = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16")  # noqa: E731
                train = []
                for _ in range(args.rounds + 1):
                    t0 = time.perf_counter()
                    with ctx():
                        loss = unet(x, t, class_labels=y).sample.float().pow(2).mean()
                    loss.backward()
                    opt.step()
                    opt.zero_grad()
                    train.append(time.perf_counter() - t0)
                xb, tb, yb = torch.randn(128, 3, 32, 32), torch.full((128,), 500), torch.randint(0, 9, (128,))
                fwd = []
                with torch.inference_mode(), ctx():
                    for _ in range(args.rounds):
                        t0 = time.perf_counter()
                        unet(xb, tb, class_labels=yb)
                        fwd.append(time.perf_counter() - t0)
                n = sum(p.numel() for p in unet.parameters()) / 1e6
                print(f"| {threads} | {name} | {mode} | {n:.2f} | {statistics.median(train[1:]):.2f} | "
                      f"{statistics.median(fwd) / 128 * 1e3:.1f} |", flush=True)


if __name__ == "__main__":
    main()
