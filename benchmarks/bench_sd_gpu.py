"""Stable Diffusion throughput on one GPU, offline: SD-1.5-size UNet / VAE / CLIP text encoder built from their
configs with random weights (no download; speed does not depend on the weights).

1. generation: 512 px (64x64 latents), DPM-Solver++ 25 steps, classifier-free guidance (UNet batch 2B), VAE decode
   -> images/s for each batch size and dtype;
2. LoRA training (rank 16 on to_q/k/v/out.0, batch 8): it/s with and without cached VAE latents + text embeddings.

Self-contained (torch, diffusers, transformers, peft). Prints a markdown table.

    python benchmarks/bench_sd_gpu.py                      # CUDA: bf16 + fp16, batch 8 and 16
    python benchmarks/bench_sd_gpu.py --device cpu --tiny  # quick local check of the script itself
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)
SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                 max_position_embeddings=77, vocab_size=49408, projection_dim=768)
TINY_UNET = dict(SD15_UNET, sample_size=8, layers_per_block=1, block_out_channels=(32, 64),
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=4,
                 norm_num_groups=16)
TINY_VAE = dict(SD15_VAE, layers_per_block=1, block_out_channels=(8, 16, 16, 16), norm_num_groups=8, sample_size=64)
TINY_TEXT = dict(SD15_TEXT, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                 projection_dim=32)


def build(tiny: bool, device: str, dtype: torch.dtype) -> tuple[Any, Any, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**(TINY_UNET if tiny else SD15_UNET))
    vae = AutoencoderKL(**(TINY_VAE if tiny else SD15_VAE))
    te = CLIPTextModel(CLIPTextConfig(**(TINY_TEXT if tiny else SD15_TEXT)))
    return unet.to(device, dtype).eval(), vae.to(device, dtype).eval(), te.to(device, dtype).eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def generate(unet: Any, vae: Any, emb: Any, batch: int, res: int, steps: int, guidance: float = 7.5) -> Any:
    """What StableDiffusionPipeline does after text encoding: CFG denoising loop + VAE decode."""
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        algorithm_type="dpmsolver++")
    sched.set_timesteps(steps, device=emb.device)
    lat = torch.randn((batch, 4, res // 8, res // 8), device=emb.device, dtype=emb.dtype)
    cond = torch.cat([torch.zeros_like(emb[:1]).expand(batch, -1, -1), emb[:1].expand(batch, -1, -1)])
    for t in sched.timesteps:
        noise = unet(torch.cat([lat, lat]), t, encoder_hidden_states=cond, return_dict=False)[0]
        uncond, text = noise.chunk(2)
        lat = sched.step(uncond + guidance * (text - uncond), t, lat, return_dict=False)[0]
    return vae.decode(lat / vae.config.scaling_factor, return_dict=False)[0]


def bench_generation(unet: Any, vae: Any, te: Any, args: argparse.Namespace, batch: int) -> float:
    ids = torch.randint(0, 49407, (1, 77), device=args.device)
    with torch.inference_mode():
        emb = te(ids)[0]
    generate(unet, vae, emb, min(batch, 2), args.res, 2)  # warm-up (kernels, allocator)
    sync(args.device)
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        generate(unet, vae, emb, batch, args.res, args.steps)
    sync(args.device)
    return batch * args.repeats / (time.perf_counter() - t0)


def bench_lora(unet: Any, vae: Any, te: Any, args: argparse.Namespace, cache: bool, dtype: torch.dtype) -> float:
    """LoRA training steps/s (batch ``args.train_batch``) with or without cached latents / text embeddings."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    if not getattr(unet, "peft_config", None):
        unet.add_adapter(LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian",
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        for p in unet.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    b, dev = args.train_batch, args.device
    pixels = torch.randn((16, 3, args.res, args.res), device=dev, dtype=dtype)
    ids = torch.randint(0, 49407, (16, 77), device=dev)
    with torch.no_grad():
        moments = vae.encode(pixels).latent_dist.mean if cache else None
        embeds = te(ids)[0] if cache else None

    def step(i: int) -> None:
        idx = torch.randint(0, 16, (b,), device=dev)
        with torch.no_grad():
            lat = moments[idx] if cache else vae.encode(pixels[idx]).latent_dist.sample()
            emb = embeds[idx] if cache else te(ids[idx])[0]
        lat = lat * vae.config.scaling_factor
        noise = torch.randn_like(lat)
        t = torch.randint(0, 1000, (b,), device=dev)
        with torch.autocast(dev.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            pred = unet(sched.add_noise(lat, noise, t), t, emb, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(2):
        step(i)
    sync(dev)
    t0 = time.perf_counter()
    for i in range(args.train_steps):
        step(i)
    sync(dev)
    return args.train_steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description="SD-1.5-size generation and LoRA training throughput (offline)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny configs at 64 px (a quick check of the script)")
    ap.add_argument("--dtypes", default=None, help="comma list of bf16,fp16,fp32 (default: bf16,fp16 on CUDA)")
    ap.add_argument("--batches", default="8,16")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--res", type=int, default=None)
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("CUDA not available: use --device cpu --tiny")
    args.res = args.res or (64 if args.tiny else 512)
    names = (args.dtypes or ("bf16,fp16" if args.device.startswith("cuda") else "fp32")).split(",")
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    else:
        print(f"device: {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'tiny' if args.tiny else 'SD-1.5-size'} UNet/VAE/CLIP, random weights, {args.res} px, "
          f"DPM-Solver++ {args.steps} steps with CFG, {args.repeats} repeats\n")
    print("| dtype | what | batch | result |\n|---|---|---|---|")
    for name in names:
        dtype = dtypes[name]
        unet, vae, te = build(args.tiny, args.device, dtype)
        for batch in [int(x) for x in args.batches.split(",")]:
            ips = bench_generation(unet, vae, te, args, batch)
            print(f"| {name} | generation (UNet + VAE decode) | {batch} | {ips:.2f} images/s |", flush=True)
        for cache in (False, True):
            its = bench_lora(unet, vae, te, args, cache, dtype)
            what = "LoRA training, cached latents + text" if cache else "LoRA training, VAE + text encoder each step"
            print(f"| {name} | {what} | {args.train_batch} | {its:.2f} it/s |", flush=True)
        del unet, vae, te
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
