"""Training loop of the class-conditional DDPM (``DDPMGenerator.fit``): in-memory uint8 data, class-power draws,
min-SNR loss, EMA with warm-up, AdamW + warm-up + cosine, exact resume from pickle-free checkpoints.

Every random draw of the loop (batch indices, flips, noise, timesteps, label dropout) comes from one dedicated
CPU ``torch.Generator`` whose state is checkpointed, so that an interrupted-then-resumed run on CPU ends with
bit-identical weights. Several processes (``accelerate launch`` / torchrun) draw the same global batch of
``batch_size`` and each trains on its share of the rows (``accel.DataParallel``; DDP averages the gradients), so they
follow the 1-process trajectory up to float reduction order.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from synthmed.data.dataset import ImageSet
from synthmed.errors import DataError, TrainingDivergedError, UserError
from synthmed.generators import checkpoints as st
from synthmed.generators.accel import DataParallel, make_accelerator, resolve_precision
from synthmed.generators.checkpoints import SimulatedInterrupt
from synthmed.generators.config import DDPMConfig
from synthmed.generators.ddpm.generator import DDPMGenerator
from synthmed.generators.ddpm.model import (
    ImagePolicy, build_unet, count_params, downsampling, resolve_arch, to_model_range, x0_estimate,
)
from synthmed.generators.edm.config import without_unset_later_fields
from synthmed.generators.optim import build_optimizer, optimizer_step
from synthmed.generators.sampling import IndexSampler

#: config keys that do not change the training trajectory (left out of the checkpoint fingerprint)
NON_TRAJECTORY_KEYS = ("checkpoint_every", "keep_checkpoints", "tensorboard", "average_checkpoints")


def fingerprint(cfg: DDPMConfig, seed: int, train: ImageSet, world: int) -> str:
    """What a checkpoint must match to be resumed: trajectory config, seed, training images, world size (several
    processes: marked as sharing one global batch, unlike the per-process batches of older versions)."""
    d = {k: v for k, v in without_unset_later_fields(cfg.model_dump(mode="json")).items()
         if k not in NON_TRAJECTORY_KEYS}
    if not cfg.cbdm_tau:  # off: checkpoints written before the CBDM option existed still resume
        d.pop("cbdm_tau"), d.pop("cbdm_gamma")
    if cfg.optimizer == "adamw":  # likewise for those written before the optimizer choice
        d.pop("optimizer")
    facts: dict[str, Any] = {"cfg": d, "seed": seed, "world": world}
    if world > 1:
        facts["batch"] = "global"
    h = hashlib.sha256(json.dumps(facts, sort_keys=True).encode())
    h.update(np.asarray(train.labels, np.int64).tobytes())
    h.update(np.ascontiguousarray(train.images).tobytes())
    return h.hexdigest()


def snr_weights(noise_scheduler: Any, timesteps: torch.Tensor, snr_gamma: float, prediction_type: str) -> torch.Tensor:
    """The min-SNR-gamma loss weight of each timestep (Hang et al. 2023), as in diffusers' training examples."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    weights = torch.clamp(snr, max=snr_gamma)
    return weights / (snr + 1) if prediction_type == "v_prediction" else weights / snr.clamp(min=1e-8)


def compute_loss(pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor, noise_scheduler: Any,
                 snr_gamma: float | None, prediction_type: str,
                 sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """MSE, optionally min-SNR-gamma weighted; ``sample_weight``: a further per-row factor (importance sampling)."""
    if snr_gamma is None and sample_weight is None:
        return F.mse_loss(pred.float(), target.float())
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma is not None:
        per_sample = per_sample * snr_weights(noise_scheduler, timesteps, snr_gamma, prediction_type)
    return (per_sample if sample_weight is None else per_sample * sample_weight).mean()


def timestep_probs(noise_scheduler: Any, cfg: DDPMConfig) -> torch.Tensor | None:
    """``timestep_importance`` a: p(t) = (1 - a) / T + a w(t) / sum w, w the min-SNR loss weight; None = uniform.
    A row drawn at t has its loss multiplied by (1 / T) / p(t), so the expected loss is the uniform one's."""
    a, T = cfg.timestep_importance, cfg.num_train_timesteps
    if a is None:
        return None
    w = snr_weights(noise_scheduler, torch.arange(T), float(cfg.snr_gamma), cfg.prediction_type).double()
    return ((1 - a) / T + a * w / w.sum()).float()


def cbdm_regulariser(pred: torch.Tensor, pred_bal: torch.Tensor, t: torch.Tensor, num_train_timesteps: int,
                     y: torch.Tensor, null_class: int, tau: float, gamma: float) -> torch.Tensor:
    """CBDM's class-balancing term (Qin et al., CVPR 2023), averaged over the batch: with ``pred`` the prediction
    under the true label and ``pred_bal`` under a class drawn uniformly, ``w * |pred - sg(pred_bal)|^2 + gamma * w *
    |sg(pred) - pred_bal|^2`` with ``w = tau * t / T``; rows whose label was dropped (CFG) contribute nothing."""
    w = tau * t.float() / num_train_timesteps * (y != null_class).float()
    reg = F.mse_loss(pred.float(), pred_bal.detach().float(), reduction="none").mean(dim=(1, 2, 3))
    com = F.mse_loss(pred.detach().float(), pred_bal.float(), reduction="none").mean(dim=(1, 2, 3))
    return (w * (reg + gamma * com)).mean()


@dataclass
class TrainResult:
    generator: DDPMGenerator
    steps: int
    resumed_from: int
    n_params: int
    precision: str
    losses: list[float]


def _batch(data: torch.Tensor, labels: torch.Tensor, g: torch.Generator, cfg: DDPMConfig,
           null_class: int, T: int, draw: IndexSampler, t_probs: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """All random draws of one step, from ``g`` only, in a fixed order (``draw``: class_power image draws;
    ``t_probs``: importance-sampled timesteps, :func:`timestep_probs`)."""
    b = cfg.batch_size
    idx = draw(b, g)
    x = data[idx]
    y = labels[idx]
    if cfg.hflip:
        m = torch.rand(b, generator=g) < 0.5
        x = torch.where(m[:, None, None, None], x.flip(3), x)
    if cfg.vflip:
        m = torch.rand(b, generator=g) < 0.5
        x = torch.where(m[:, None, None, None], x.flip(2), x)
    if cfg.rot90:
        k = torch.randint(4, (b,), generator=g)
        x = torch.stack([torch.rot90(xi, int(ki), dims=(1, 2)) for xi, ki in zip(x, k)])
    noise = torch.randn(x.shape, generator=g)
    t = torch.randint(T, (b,), generator=g) if t_probs is None else torch.multinomial(t_probs, b, True, generator=g)
    if cfg.label_dropout > 0:
        drop = torch.rand(b, generator=g) < cfg.label_dropout
        y = torch.where(drop, torch.full_like(y, null_class), y)
    # drawn last, so that turning CBDM, self-conditioning or input perturbation off leaves every other draw as it was
    y_bal = torch.randint(null_class, (b,), generator=g) if cfg.cbdm_tau > 0 else None
    self_cond = torch.rand(b, generator=g) < 0.5 if cfg.self_condition else None
    perturb = torch.randn(x.shape, generator=g) if cfg.input_perturbation else None
    return x, y, noise, t, y_bal, self_cond, perturb


def _self_condition(unet: Any, noisy: torch.Tensor, t: torch.Tensor, y: torch.Tensor, rows: torch.Tensor,
                    alpha_bar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The extra input channels: zeros, and on ``rows`` the x0 estimate of a first, no-grad pass (through the
    unwrapped model: under DDP the ranks need not agree on whether they make one)."""
    prev = torch.zeros_like(noisy)
    if rows.any():
        with torch.no_grad():
            first = unet(torch.cat([noisy[rows], prev[rows]], 1), t[rows], class_labels=y[rows]).sample.float()
        prev[rows] = x0_estimate(first, noisy[rows], alpha_bar[t[rows]], prediction_type).to(prev.dtype)
    return torch.cat([noisy, prev], 1)


def train_ddpm(
    cfg: DDPMConfig, train: ImageSet, classes: list[str], work_dir: Path, seed: int = 0, device: str = "auto",
    stop_after: int | None = None, resume: bool = True, progress: bool = True,
    loss_fn: Callable[..., torch.Tensor] = compute_loss, tracker: Any = None,
) -> TrainResult:
    """Train (or resume) and return the EMA generator. Checkpoints go to ``work_dir/checkpoints``; ``tracker``
    (``synthmed.tracking.Tracker``) receives the loss and learning rate of every step."""
    from accelerate.utils import set_seed
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    if len(train) == 0:
        raise DataError("no training images for the generator")
    if train.labels.max() >= len(classes) or train.labels.min() < 0:
        raise DataError("training labels out of range of the class list")
    acc = make_accelerator(device)
    dev, world, rank = acc.device, acc.num_processes, acc.process_index
    dp = DataParallel(rank, world)
    dp.check_batch(cfg.batch_size, "generator.ddpm.batch_size")
    rows = dp.share(cfg.batch_size)
    n_local = rows.stop - rows.start
    amp = resolve_precision(cfg.mixed_precision, dev)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    arch = resolve_arch(cfg)
    h, w = train.size
    policy = ImagePolicy.for_data(h, w, train.channels, cfg, downsampling(arch))
    null_class = len(classes)

    set_seed(seed)
    unet = build_unet(arch, train.channels, len(classes), policy.resolution)
    n_params = count_params(unet)
    noise_sched = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                                prediction_type=cfg.prediction_type)
    opt = build_optimizer(list(unet.named_parameters()), cfg.optimizer, cfg.lr, cfg.weight_decay)
    lr_sched = get_cosine_schedule_with_warmup(opt, cfg.warmup_steps, cfg.steps)
    unet, opt = acc.prepare(unet, opt)
    base = acc.unwrap_model(unet)
    ema = EMAModel(base.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, inv_gamma=1.0, power=cfg.ema_power,
                   foreach=True)
    ema.to(dev)
    names = [n for n, _ in base.named_parameters()]
    g = torch.Generator("cpu").manual_seed(int(seed) * 1000 + 1)  # the same on every rank: one global batch

    data = policy.pad_uint8(train.images)  # uint8 (N, C, R, R), stays in memory
    labels = torch.as_tensor(train.labels, dtype=torch.long)
    draw = IndexSampler(train.labels, len(classes), cfg.class_power)
    fp = fingerprint(cfg, seed, train, world)
    ckpt_root = Path(work_dir) / "checkpoints"
    step = 0
    losses: list[float] = []  # every step's loss (refilled from the checkpoint on resume)
    if acc.is_main_process:
        st.clean_temp_checkpoints(ckpt_root)
    acc.wait_for_everyone()
    found = st.list_checkpoints(ckpt_root) if resume else []
    if found:
        step = _load_checkpoint(found[-1][1], fp, base, ema, names, opt, lr_sched, g, rank, losses)
        st.check_average_window(ckpt_root, average_window(cfg), step, fp, "generator.ddpm.average_checkpoints")
    resumed_from = step

    writer = tracker if acc.is_main_process else None
    bar = None
    if progress and acc.is_main_process and step < cfg.steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="finetune ddpm", unit="step", dynamic_ncols=True, leave=False)
    t_probs = timestep_probs(noise_sched, cfg)  # on the CPU, as the draws
    row_weight = None if t_probs is None else (1 / (cfg.num_train_timesteps * t_probs)).to(dev)
    acs = noise_sched.alphas_cumprod.to(dev)
    noise_sched.alphas_cumprod = acs
    unet.train()
    while step < cfg.steps:
        x, y, noise, t, y_bal, self_cond, perturb = (None if v is None else v[rows] for v in _batch(
            data, labels, g, cfg, null_class, cfg.num_train_timesteps, draw, t_probs))
        x = to_model_range(x.to(dev, non_blocking=True))
        noise, t, y = noise.to(dev), t.to(dev), y.to(dev)
        noisy = noise_sched.add_noise(x, noise if perturb is None else noise + cfg.input_perturbation * perturb.to(dev),
                                      t)  # input perturbation: the target below keeps the unperturbed noise
        target = noise if cfg.prediction_type == "epsilon" else noise_sched.get_velocity(x, noise, t)
        ctx = torch.autocast(dev.type, dtype=amp) if amp is not None else torch.autocast(dev.type, enabled=False)
        with ctx:
            inp = noisy if self_cond is None else _self_condition(base, noisy, t, y, self_cond.to(dev), acs,
                                                                  cfg.prediction_type)
            pred = unet(inp, t, class_labels=y).sample
        loss = loss_fn(pred, target, t, noise_sched, cfg.snr_gamma, cfg.prediction_type,
                       **({} if row_weight is None else {"sample_weight": row_weight[t]}))
        if y_bal is not None:
            with ctx:
                pred_bal = unet(inp, t, class_labels=y_bal.to(dev)).sample
            loss = loss + cbdm_regulariser(pred, pred_bal, t, cfg.num_train_timesteps, y, null_class, cfg.cbdm_tau,
                                           cfg.cbdm_gamma)
        value = dp.global_mean(loss, n_local, cfg.batch_size)
        if not math.isfinite(value):
            last = st.list_checkpoints(ckpt_root)
            keep = f"last good checkpoint: {last[-1][1]}" if last else "no checkpoint was written yet"
            raise TrainingDivergedError(
                f"generator loss became {value} at step {step + 1}; {keep}; lower generator.ddpm.lr or use "
                f"mixed_precision=no")
        optimizer_step(dp.local_loss(loss, n_local, cfg.batch_size), opt, lr_sched, unet.parameters(), cfg.grad_clip,
                       scaler, backward=acc.backward, clip_grad_norm=acc.clip_grad_norm_)
        ema.step(base.parameters())
        step += 1
        losses.append(value)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
        if writer is not None:
            writer.log({"generator/loss": value, "generator/lr": lr_sched.get_last_lr()[0]}, step)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            _save_checkpoint(acc, ckpt_root, step, fp, cfg, base, ema, names, opt, lr_sched, g, losses)
        if stop_after is not None and step >= stop_after and step < cfg.steps:
            raise SimulatedInterrupt(f"stopped after step {step}")
    if bar is not None:
        bar.close()

    final = build_unet(arch, train.channels, len(classes), policy.resolution)
    averaged = final_weights(final, ema, cfg, ckpt_root, fp, "generator.ddpm.average_checkpoints")
    meta = {"arch": arch, "n_params": n_params, "training": {
        "steps": cfg.steps, "batch_size": cfg.batch_size, "world_size": world, "seed": seed,
        "prediction_type": cfg.prediction_type, "beta_schedule": cfg.beta_schedule, "snr_gamma": cfg.snr_gamma,
        "label_dropout": cfg.label_dropout, "class_power": cfg.class_power, "ema_decay": cfg.ema_decay,
        "ema_power": cfg.ema_power, "optimizer": cfg.optimizer, "lr": cfg.lr,
        **({"cbdm_tau": cfg.cbdm_tau, "cbdm_gamma": cfg.cbdm_gamma} if cfg.cbdm_tau else {}),
        **({"input_perturbation": cfg.input_perturbation} if cfg.input_perturbation else {}),
        **({"timestep_importance": cfg.timestep_importance} if cfg.timestep_importance else {}),
        **({"average_checkpoints": cfg.average_checkpoints, "averaged_steps": averaged} if averaged else {}),
        "precision": str(amp).replace("torch.", "") if amp else "fp32", "fingerprint": fp}}
    gen = DDPMGenerator(final, dict(noise_sched.config), list(classes), policy, meta)
    gen.settings, gen.seed, gen.device_name, gen.world, gen.train = cfg, int(seed), device, world, train
    return TrainResult(gen, step, resumed_from, n_params, meta["training"]["precision"], losses)


def final_weights(final: torch.nn.Module, ema: Any, cfg: Any, root: Path, fp: str, field: str) -> list[int]:
    """Put the final weights into ``final`` (eval mode): the EMA weights, or with ``cfg.average_checkpoints`` = K the
    mean of the EMA weights of the last K checkpoints (returns their steps; [] for the EMA alone)."""
    steps = average_window(cfg)
    if not steps:
        ema.copy_to(final.parameters())
        final.eval()
        return []
    mean = st.mean_ema(st.check_average_window(root, steps, cfg.steps, fp, field))
    params = dict(final.named_parameters())
    if set(mean) != set(params):
        raise DataError(f"{root}: the checkpoints' EMA weights do not match the UNet's parameters")
    with torch.no_grad():
        for name, value in mean.items():
            params[name].copy_(value)
    final.eval()
    return steps


def average_window(cfg: Any) -> list[int]:
    """The checkpoint steps ``average_checkpoints`` averages ([] when unset): the schedule's last K."""
    k = cfg.average_checkpoints
    return st.checkpoint_steps(cfg.steps, cfg.checkpoint_every)[-k:] if k else []


def keep_count(cfg: Any) -> int:
    """How many checkpoints to keep: ``keep_checkpoints``, at least ``average_checkpoints``."""
    return max(cfg.keep_checkpoints, cfg.average_checkpoints or 1)


def _save_checkpoint(acc: Any, root: Path, step: int, fp: str, cfg: DDPMConfig, base: torch.nn.Module,
                     ema: Any, names: list[str], opt: Any, lr_sched: Any, g: torch.Generator,
                     losses: list[float] | None = None) -> None:
    """Every rank writes its RNG state into the temp folder; the main process writes the rest and commits."""
    tmp = root / f"{st.TMP_CKPT_PREFIX}{step:07d}"
    if acc.is_main_process:
        st.begin_checkpoint(root, step)
    acc.wait_for_everyone()
    rng: dict[str, Any] = {"batch": g.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    st.save_state(tmp, f"rng-rank{acc.process_index}", rng)
    acc.wait_for_everyone()
    if acc.is_main_process:
        st.save_tensors(tmp / "model.safetensors", base.state_dict())
        st.save_tensors(tmp / "ema.safetensors", dict(zip(names, ema.shadow_params)))
        ema_meta = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
        st.save_state(tmp, "train", {"optimizer": opt.state_dict(), "lr_scheduler": lr_sched.state_dict(),
                                     "ema": ema_meta, "step": step, "losses": list(losses or [])})
        st.commit_checkpoint(root, tmp, step, {"step": step, "fingerprint": fp, "world_size": acc.num_processes},
                             keep_count(cfg))
    acc.wait_for_everyone()


def _load_checkpoint(path: Path, fp: str, base: torch.nn.Module, ema: Any, names: list[str], opt: Any,
                     lr_sched: Any, g: torch.Generator, rank: int, losses: list[float] | None = None) -> int:
    """Restore a checkpoint; returns its step and refills ``losses`` with the loss of every step before it."""
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    if meta.get("fingerprint") != fp:
        raise UserError(f"checkpoints in {path.parent} come from another generator config or other training "
                        f"images; delete {path.parent} or use another run directory")
    base.load_state_dict(st.load_tensors(path / "model.safetensors"))
    shadow = st.load_tensors(path / "ema.safetensors")
    state = st.load_state(path, "train")
    opt.load_state_dict(state["optimizer"])
    lr_sched.load_state_dict(state["lr_scheduler"])
    ema.shadow_params = [shadow[n].to(p.device) for n, p in zip(names, base.parameters())]
    ema.optimization_step = int(state["ema"]["optimization_step"])
    rng = st.load_state(path, f"rng-rank{rank}")
    g.set_state(rng["batch"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if losses is not None:
        losses[:] = [float(v) for v in state.get("losses", [])]
    return int(state["step"])
