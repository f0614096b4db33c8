"""Fine-tuning one Stable Diffusion adapter (a LoRA, or the whole UNet) on a handful of images.

Speed: VAE latent distributions (and their flipped variants) and, when the text encoder is frozen, prompt
embeddings are computed once; SDPA attention (diffusers' default on torch 2); optional gradient checkpointing;
bf16/fp16 autocast on CUDA with fp32 trainable weights; min-SNR-gamma; noise offset; 8-bit AdamW when bitsandbytes
is installed. All randomness of step k derives from (seed, adapter, k), so a resumed run equals an uninterrupted one.
Checkpoints: ``stable_diffusion/checkpoints.py`` (pickle-free).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.errors import TrainingDivergedError
from synthmed.generators.accel import DataParallel
from synthmed.generators.checkpoints import SimulatedInterrupt
from synthmed.generators.optim import optimizer_step
from synthmed.generators.stable_diffusion.base import derived_seed, move, to_sd_tensor, tokenize
from synthmed.generators.stable_diffusion.checkpoints import checkpoints, load_checkpoint, save_checkpoint
from synthmed.generators.stable_diffusion.recipes import SDSettings
from synthmed.io import atomic_write_json, sha256_file

log = logging.getLogger("synthmed.sd")
LORA_FILE = "pytorch_lora_weights.safetensors"


@dataclass
class AdapterJob:
    """One adapter to train: its images, one prompt per image, where it goes."""

    name: str
    images: np.ndarray
    prompts: list[str]
    out_dir: Path
    work_dir: Path


@dataclass
class Runtime:
    """Where and how to run: device, frozen-weight dtype, seed, speed switches."""

    device: Any
    dtype: Any
    seed: int
    cache_latents: bool = True
    cache_text: bool = True
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = True
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    parallel: str = "auto"  # several processes: auto | data (each adapter data-parallel) | adapters (round-robin)


def _present_targets(model: Any, targets: list[str]) -> list[str]:
    names = [n for n, _ in model.named_modules()]
    return [t for t in targets if any(n == t or n.endswith("." + t) for n in names)]


def prepare_models(pipe: Any, st: SDSettings, rt: Runtime, init_seed: int) -> tuple[Any, Any, list[Any]]:
    """Freeze what the recipe freezes, add LoRA layers (seeded init); returns (unet, text_encoder, trainable)."""
    import torch
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    unet, te, vae = pipe.unet, pipe.text_encoder, pipe.vae
    for m in (unet, te, vae):
        m.requires_grad_(False)
    torch.manual_seed(init_seed)
    if st.lora:
        move(unet, rt.device, rt.dtype)
        targets = _present_targets(unet, st.unet_targets)
        unet.add_adapter(LoraConfig(r=st.rank, lora_alpha=st.alpha, init_lora_weights="gaussian",
                                    target_modules=targets))
        if st.train_text_encoder:
            te_targets = _present_targets(te, st.text_encoder_targets)
            te.add_adapter(LoraConfig(r=st.rank, lora_alpha=st.alpha, init_lora_weights="gaussian",
                                      target_modules=te_targets))
        cast_training_params([unet, te], dtype=torch.float32)
    else:
        move(unet, rt.device, torch.float32)
        unet.requires_grad_(True)
    move(te, rt.device, rt.dtype)
    move(vae, rt.device, rt.dtype)
    if rt.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if st.train_text_encoder:
            te.gradient_checkpointing_enable()
    unet.train()
    te.train(st.train_text_encoder)
    trainable = [p for m in (unet, te) for p in m.parameters() if p.requires_grad]
    return unet, te, trainable


# --------------------------------------------------------------------------------------------- training


def _optimizer(params: list[Any], st: SDSettings, rt: Runtime) -> Any:
    import torch

    if rt.use_8bit_adam and getattr(rt.device, "type", "") == "cuda":
        try:
            import bitsandbytes as bnb  # type: ignore[import-not-found]

            return bnb.optim.AdamW8bit(params, lr=st.lr, weight_decay=st.weight_decay)
        except ImportError:
            pass
    return torch.optim.AdamW(params, lr=st.lr, weight_decay=st.weight_decay)


class _Encoder:
    """Latents and text embeddings for the training batch, cached or computed on the fly."""

    def __init__(self, pipe: Any, st: SDSettings, rt: Runtime, job: AdapterJob) -> None:
        import torch

        self.vae, self.te, self.rt, self.st = pipe.vae, pipe.text_encoder, rt, st
        x = to_sd_tensor(job.images, st.resolution)
        variants = [x]
        if st.hflip:
            variants.append(torch.flip(x, dims=[3]))
        if st.vflip:
            variants += [torch.flip(v, dims=[2]) for v in list(variants)]
        self.pixels = torch.stack(variants)  # (V, N, 3, R, R)
        self.scale = float(self.vae.config.scaling_factor)
        self.shift = float(getattr(self.vae.config, "shift_factor", None) or 0.0)
        self.moments = None
        if rt.cache_latents:
            self.moments = torch.stack([self._moments(v) for v in self.pixels])  # (V, N, 2C, h, w) fp32
            self.pixels = None
        self.ids = tokenize(pipe.tokenizer, job.prompts).to(rt.device)
        self.embeds = None
        if rt.cache_text and not st.train_text_encoder:
            with torch.no_grad():
                uniq, inv = torch.unique(self.ids, dim=0, return_inverse=True)
                emb = self.te(uniq)[0].float()
            self.embeds = emb[inv]

    def _moments(self, pixels: Any, chunk: int = 16) -> Any:
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(pixels), chunk):
                dist = self.vae.encode(pixels[i:i + chunk].to(self.rt.device, self.rt.dtype)).latent_dist
                out.append(torch.cat([dist.mean, dist.std], dim=1).float())
        return torch.cat(out)

    def latents(self, variant: Any, idx: Any, eps: Any) -> Any:
        moments = self.moments[variant, idx] if self.moments is not None else torch_cat_moments(self, variant, idx)
        c = moments.shape[1] // 2
        z = moments[:, :c] + moments[:, c:] * eps.to(moments.device)
        return (z - self.shift) * self.scale

    def text(self, idx: Any) -> Any:
        if self.embeds is not None:
            return self.embeds[idx]
        return self.te(self.ids[idx])[0]


def torch_cat_moments(enc: _Encoder, variant: Any, idx: Any) -> Any:
    """Uncached path: encode the picked (variant, image) pixels now."""
    import torch

    pix = torch.stack([enc.pixels[int(v), int(i)] for v, i in zip(variant, idx)])
    return enc._moments(pix)


def _denoiser(unet: Any, te: Any, enc: _Encoder, cond_dtype: Any) -> Any:
    """One module over the trained parts (UNet, text encoder), so that a single DDP wraps both."""
    import torch

    class Denoiser(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet, self.text_encoder = unet, te

        def forward(self, noisy: Any, t: Any, idx: Any) -> Any:
            cond = enc.text(idx)
            return self.unet(noisy, t, cond.to(cond_dtype or cond.dtype), return_dict=False)[0]

    return Denoiser()


def _loss(pipe: Any, noise_sched: Any, model: Any, enc: _Encoder, st: SDSettings, rt: Runtime, idx: Any,
          g: Any, rows: slice = slice(None)) -> Any:
    """The (min-SNR weighted) denoising loss, averaged over rows ``rows`` of the batch of images ``idx``; all the
    batch's randomness is drawn from CPU generator ``g`` whatever ``rows`` is (data parallelism keeps a share)."""
    import torch
    import torch.nn.functional as F
    from diffusers.training_utils import compute_snr

    b = len(idx)
    n_var = enc.moments.shape[0] if enc.moments is not None else enc.pixels.shape[0]
    variant = torch.randint(0, n_var, (b,), generator=g)
    lat_c = pipe.unet.config.in_channels
    res = st.resolution // (2 ** (len(pipe.vae.config.block_out_channels) - 1))
    eps = torch.randn((b, lat_c, res, res), generator=g)
    noise = torch.randn((b, lat_c, res, res), generator=g)
    if st.noise_offset:
        noise = noise + st.noise_offset * torch.randn((b, lat_c, 1, 1), generator=g)
    t = torch.randint(0, noise_sched.config.num_train_timesteps, (b,), generator=g)
    idx, variant, eps, noise, t = idx[rows], variant[rows], eps[rows], noise[rows], t[rows]
    dev = rt.device
    latents = enc.latents(variant.to(dev) if enc.moments is not None else variant, idx.to(dev), eps.to(dev))
    noise, t = noise.to(dev), t.to(dev)
    noisy = noise_sched.add_noise(latents, noise, t)
    target = noise if noise_sched.config.prediction_type == "epsilon" else noise_sched.get_velocity(latents, noise, t)
    use_amp = getattr(dev, "type", "") == "cuda" and rt.dtype != torch.float32
    with torch.autocast(dev.type, dtype=rt.dtype, enabled=use_amp):
        pred = model(noisy.to(rt.dtype if st.lora else torch.float32), t, idx.to(dev))
    if st.snr_gamma is None:
        return F.mse_loss(pred.float(), target.float())
    snr = compute_snr(noise_sched, t)
    w = torch.minimum(snr, torch.full_like(snr, st.snr_gamma))
    w = w / (snr + 1) if noise_sched.config.prediction_type == "v_prediction" else w / snr
    per = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per * w).mean()


def eval_loss(pipe: Any, noise_sched: Any, model: Any, enc: _Encoder, st: SDSettings, rt: Runtime, seed: int,
              repeats: int = 4) -> float:
    """Plain-MSE loss on every image with fixed noise/timesteps (comparable before and after training)."""
    import dataclasses

    import torch

    plain = dataclasses.replace(st, snr_gamma=None)
    n = enc.ids.shape[0]
    total = 0.0
    with torch.no_grad():
        for r in range(repeats):
            g = torch.Generator().manual_seed(derived_seed(seed, "eval", r))
            total += float(_loss(pipe, noise_sched, model, enc, plain, rt, torch.arange(n), g))
    return total / repeats


def train_adapter(load_pipe: Callable[[], Any], st: SDSettings, rt: Runtime, job: AdapterJob,
                  progress: bool = True, stop_after: int | None = None, tracker: Any = None,
                  dp: DataParallel | None = None) -> dict[str, Any]:
    """Train ``job`` (resuming from its latest checkpoint); returns a summary (steps, losses, seconds).

    ``dp``: the processes training this adapter together (each computes its share of every batch, DDP averages the
    gradients; rank 0 writes checkpoints and weights); None = this process alone.
    ``stop_after=k`` raises ``SimulatedInterrupt`` after step k (tests simulate a crash)."""
    import torch
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    dp = dp or DataParallel()
    t0 = time.monotonic()
    n = len(job.images)
    total = st.steps_for(n)
    seed = derived_seed(rt.seed, job.name)
    bs = min(st.batch_size, n)
    dp.check_batch(bs, "generator.stable_diffusion.batch_size (or the images of an adapter)")
    pipe = load_pipe()
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    unet, te, trainable = prepare_models(pipe, st, rt, derived_seed(seed, "init"))
    enc = _Encoder(pipe, st, rt, job)
    model = _denoiser(unet, te, enc, rt.dtype if st.lora else None)
    opt = _optimizer(trainable, st, rt)
    sched = get_scheduler(st.lr_scheduler, opt, num_warmup_steps=min(st.warmup_steps, total),
                          num_training_steps=total)
    scaler = torch.amp.GradScaler("cuda") if rt.dtype == torch.float16 and rt.device.type == "cuda" else None
    loss_start = eval_loss(pipe, noise_sched, model, enc, st, rt, seed)
    start = 0
    dp.barrier()  # rank 0 may have cleaned this adapter's folder
    ckpts = [c for c in checkpoints(job.work_dir) if int(c.name.split("-")[1]) <= total]
    if ckpts:
        start = load_checkpoint(ckpts[-1], unet, te, opt, sched, scaler)
        log.info("%s: resumed from %s", job.name, ckpts[-1])
    ddp = dp.wrap(model, rt.device)  # after loading: DDP starts from rank 0's (identical) weights
    rows = dp.share(bs)
    n_local = rows.stop - rows.start
    main = dp.rank == 0
    per_epoch = math.ceil(n / bs)
    bar = None
    if progress and main and start < total:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start, desc=f"finetune {job.name}", unit="step", dynamic_ncols=True, leave=False)
    losses: list[float] = []
    for step in range(start, total):
        epoch, k = divmod(step, per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(seed, "epoch", epoch)))
        idx = perm[k * bs:(k + 1) * bs]
        if len(idx) < bs:  # last partial batch: top up from the start of the permutation
            idx = torch.cat([idx, perm[: bs - len(idx)]])
        g = torch.Generator().manual_seed(derived_seed(seed, "step", step))
        loss = _loss(pipe, noise_sched, ddp, enc, st, rt, idx, g, rows)
        value = dp.global_mean(loss, n_local, bs)
        if not math.isfinite(value):
            raise TrainingDivergedError(f"SD fine-tuning of '{job.name}' diverged at step {step} (loss {value}); "
                                        "lower generator.stable_diffusion.lr; the last checkpoint is kept")
        optimizer_step(dp.local_loss(loss, n_local, bs), opt, sched, trainable, st.grad_clip, scaler)
        losses.append(value)
        if tracker is not None and main:
            tracker.log({f"generator/{job.name}/loss": losses[-1]}, len(losses) + start)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        done = step + 1
        if (done % rt.checkpoint_every == 0 or done == total) and main:
            save_checkpoint(job.work_dir, done, unet, te, opt, sched, scaler, rt.keep_checkpoints)
        if stop_after is not None and done >= stop_after and done < total:
            dp.barrier()
            raise SimulatedInterrupt(f"stopped after step {done}")
    if bar is not None:
        bar.close()
    unet.eval()
    te.eval()
    loss_end = eval_loss(pipe, noise_sched, model, enc, st, rt, seed)
    summary = {"name": job.name, "steps": total, "resumed_from": start, "images": n, "loss_start": loss_start,
               "loss_end": loss_end, "train_loss_last": float(np.mean(losses[-per_epoch:])) if losses else None,
               "seconds": round(time.monotonic() - t0, 2), "processes": dp.world}
    if main:
        path = save_adapter(pipe, st, job.out_dir)
        summary.update({"file": str(path), "sha256": sha256_file(path)})
        atomic_write_json(job.work_dir / "done.json", summary)
        if tracker is not None:
            tracker.log({f"generator/{job.name}/eval_loss_start": loss_start,
                         f"generator/{job.name}/eval_loss_end": loss_end}, total)
    dp.barrier()  # the weights and done.json are written before anyone reads them
    return summary


def _peft_meta(model: Any) -> dict[str, Any]:
    """The adapter's PEFT config as saved metadata; sets sorted so that the file's bytes are reproducible."""
    meta = model.peft_config["default"].to_dict()
    if isinstance(meta.get("target_modules"), (set, frozenset, list)):
        meta["target_modules"] = sorted(meta["target_modules"])
    return meta


def save_adapter(pipe: Any, st: SDSettings, out_dir: Path) -> Path:
    """LoRA -> ``out_dir/pytorch_lora_weights.safetensors`` (diffusers format, with adapter metadata);
    full UNet -> ``out_dir/`` as a diffusers UNet folder. Written to a temp folder, then moved into place."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-" + out_dir.name + ".", dir=out_dir.parent))
    try:
        if st.lora:
            unet_sd = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
            te_sd = None
            te_meta = None
            if st.train_text_encoder:
                te_sd = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.text_encoder))
                te_meta = _peft_meta(pipe.text_encoder)
            unet_sd = {k: v.detach().float().cpu().contiguous() for k, v in unet_sd.items()}
            if te_sd is not None:
                te_sd = {k: v.detach().float().cpu().contiguous() for k, v in te_sd.items()}
            StableDiffusionPipeline.save_lora_weights(
                tmp, unet_lora_layers=unet_sd, text_encoder_lora_layers=te_sd, safe_serialization=True,
                unet_lora_adapter_metadata=_peft_meta(pipe.unet),
                text_encoder_lora_adapter_metadata=te_meta,
            )
            out_dir.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / LORA_FILE, out_dir / LORA_FILE)
            return out_dir / LORA_FILE
        pipe.unet.save_pretrained(tmp, safe_serialization=True)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
        return out_dir / "diffusion_pytorch_model.safetensors"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
