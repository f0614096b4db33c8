"""Training loop of the EDM generator: in-memory uint8 data, class-power draws, EDM loss, EMA with warm-up,
AdamW + warm-up + cosine, exact resume from pickle-free checkpoints (the DDPM kind's checkpoint helpers).

Every random draw (batch indices, flips, noise, noise levels, label dropout) comes from one CPU ``torch.Generator``
whose state is checkpointed, so an interrupted-then-resumed run on CPU ends with bit-identical weights. Several
processes share each global batch of ``batch_size`` as the DDPM kind does (``accel.DataParallel``).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthmed.data.dataset import ImageSet
from synthmed.errors import DataError, TrainingDivergedError
from synthmed.generators.edm.config import EDMConfig, without_unset_later_fields
from synthmed.generators.edm.precond import euler_scheduler, scheduler_config, training_loss
from synthmed.generators.checkpoints import SimulatedInterrupt
from synthmed.generators.sampling import IndexSampler

NON_TRAJECTORY_KEYS = ("checkpoint_every", "keep_checkpoints", "tensorboard", "average_checkpoints")


def fingerprint(cfg: EDMConfig, seed: int, train: ImageSet, world: int) -> str:
    """What a checkpoint must match to be resumed: trajectory config, seed, training images, world size (several
    processes: marked as sharing one global batch, unlike the per-process batches of older versions)."""
    d = {k: v for k, v in without_unset_later_fields(cfg.model_dump(mode="json")).items()
         if k not in NON_TRAJECTORY_KEYS}
    facts: dict[str, Any] = {"kind": "edm", "cfg": d, "seed": seed, "world": world}
    if world > 1:
        facts["batch"] = "global"
    h = hashlib.sha256(json.dumps(facts, sort_keys=True).encode())
    h.update(np.asarray(train.labels, np.int64).tobytes())
    h.update(np.ascontiguousarray(train.images).tobytes())
    return h.hexdigest()


@dataclass
class TrainState:
    """What ``train_edm`` returns: the EMA network and the facts of the run."""

    unet: Any
    arch: dict[str, Any]
    policy: Any
    scheduler_config: dict[str, Any]
    steps: int
    resumed_from: int
    n_params: int
    precision: str
    fingerprint: str
    losses: list[float]
    averaged_steps: list[int] = field(default_factory=list)  # checkpoints averaged into the weights ([]: EMA alone)


def _batch(data: torch.Tensor, labels: torch.Tensor, sampler: IndexSampler, g: torch.Generator, cfg: EDMConfig,
           null_class: int) -> tuple[torch.Tensor, ...]:
    """All random draws of one step, from ``g`` only, in a fixed order."""
    b = cfg.batch_size
    idx = sampler(b, g)
    x, y = data[idx], labels[idx]
    if cfg.hflip:
        x = torch.where((torch.rand(b, generator=g) < 0.5)[:, None, None, None], x.flip(3), x)
    if cfg.vflip:
        x = torch.where((torch.rand(b, generator=g) < 0.5)[:, None, None, None], x.flip(2), x)
    if cfg.rot90:
        k = torch.randint(4, (b,), generator=g)
        x = torch.stack([torch.rot90(xi, int(ki), dims=(1, 2)) for xi, ki in zip(x, k)])
    noise = torch.randn(x.shape, generator=g)
    z = torch.randn(b, generator=g)
    if cfg.label_dropout > 0:
        y = torch.where(torch.rand(b, generator=g) < cfg.label_dropout, torch.full_like(y, null_class), y)
    return x, y, noise, z


def train_edm(cfg: EDMConfig, train: ImageSet, classes: list[str], work_dir: Path, seed: int = 0,
              device: str = "auto", stop_after: int | None = None, progress: bool = True,
              tracker: Any = None) -> TrainState:
    """Train (or resume) and return the EMA network. Checkpoints go to ``work_dir/checkpoints``; ``tracker``
    (``synthmed.tracking.Tracker``) receives the loss and learning rate of every step."""
    from accelerate.utils import set_seed
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    from synthmed.generators import checkpoints as st
    from synthmed.generators.accel import DataParallel, make_accelerator, resolve_precision
    from synthmed.generators.ddpm.model import (
        ImagePolicy, build_unet, count_params, downsampling, resolve_arch, to_model_range,
    )
    from synthmed.generators.ddpm.train import _load_checkpoint, _save_checkpoint, average_window, final_weights
    from synthmed.generators.optim import optimizer_step

    if len(train) == 0:
        raise DataError("no training images for the generator")
    if train.labels.max() >= len(classes) or train.labels.min() < 0:
        raise DataError("training labels out of range of the class list")
    acc = make_accelerator(device)
    dev, world, rank = acc.device, acc.num_processes, acc.process_index
    dp = DataParallel(rank, world)
    dp.check_batch(cfg.batch_size, "generator.edm.batch_size")
    rows = dp.share(cfg.batch_size)
    n_local = rows.stop - rows.start
    amp = resolve_precision(cfg.mixed_precision, dev, "generator.edm.mixed_precision")
    arch = resolve_arch(cfg)  # type: ignore[arg-type]  (same architecture fields as DDPMConfig)
    policy = ImagePolicy.for_data(*train.size, train.channels, cfg, downsampling(arch))  # type: ignore[arg-type]
    null_class = len(classes)

    set_seed(seed)
    unet = build_unet(arch, train.channels, len(classes), policy.resolution)
    n_params = count_params(unet)
    sched_cfg = scheduler_config(cfg.sigma_data, cfg.sigma_min, cfg.sigma_max, cfg.rho)
    sched = euler_scheduler(sched_cfg)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    lr_sched = get_cosine_schedule_with_warmup(opt, cfg.warmup_steps, cfg.steps)
    unet, opt = acc.prepare(unet, opt)
    base = acc.unwrap_model(unet)
    ema = EMAModel(base.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, inv_gamma=1.0, power=cfg.ema_power,
                   foreach=True)
    ema.to(dev)
    names = [n for n, _ in base.named_parameters()]
    g = torch.Generator("cpu").manual_seed(int(seed) * 1000 + 1)  # the same on every rank: one global batch
    data = policy.pad_uint8(train.images)
    labels = torch.as_tensor(train.labels, dtype=torch.long)
    draws = IndexSampler(train.labels, len(classes), cfg.class_power)
    fp = fingerprint(cfg, seed, train, world)
    root = Path(work_dir) / "checkpoints"
    if acc.is_main_process:
        st.clean_temp_checkpoints(root)
    acc.wait_for_everyone()
    step = 0
    losses: list[float] = []  # every step's loss (refilled from the checkpoint on resume)
    found = st.list_checkpoints(root)
    if found:
        step = _load_checkpoint(found[-1][1], fp, base, ema, names, opt, lr_sched, g, rank, losses)
        st.check_average_window(root, average_window(cfg), step, fp, "generator.edm.average_checkpoints")
    resumed_from = step
    bar = None
    if progress and acc.is_main_process and step < cfg.steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="finetune edm", unit="step", dynamic_ncols=True, leave=False)

    def net(x: torch.Tensor, c_noise: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ctx = torch.autocast(dev.type, dtype=amp) if amp is not None else torch.autocast(dev.type, enabled=False)
        with ctx:
            return unet(x, c_noise, class_labels=y).sample

    unet.train()
    while step < cfg.steps:
        x, y, noise, z = (v[rows] for v in _batch(data, labels, draws, g, cfg, null_class))
        loss = training_loss(net, sched, to_model_range(x.to(dev)), y.to(dev), noise.to(dev), z, cfg.p_mean, cfg.p_std)
        value = dp.global_mean(loss, n_local, cfg.batch_size)
        if not math.isfinite(value):
            raise TrainingDivergedError(f"generator loss became {value} at step {step + 1}; lower generator.edm.lr "
                                        "or use mixed_precision=no")
        optimizer_step(dp.local_loss(loss, n_local, cfg.batch_size), opt, lr_sched, unet.parameters(), cfg.grad_clip,
                       None, backward=acc.backward, clip_grad_norm=acc.clip_grad_norm_)
        ema.step(base.parameters())
        step += 1
        losses.append(value)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
        if tracker is not None and acc.is_main_process:
            tracker.log({"generator/loss": value, "generator/lr": lr_sched.get_last_lr()[0]}, step)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            _save_checkpoint(acc, root, step, fp, cfg, base, ema, names, opt, lr_sched, g, losses)  # type: ignore[arg-type]
        if stop_after is not None and stop_after <= step < cfg.steps:
            raise SimulatedInterrupt(f"stopped after step {step}")
    if bar is not None:
        bar.close()
    final = build_unet(arch, train.channels, len(classes), policy.resolution)
    averaged = final_weights(final, ema, cfg, root, fp, "generator.edm.average_checkpoints")
    precision = str(amp).replace("torch.", "") if amp else "fp32"
    return TrainState(final, arch, policy, sched_cfg, step, resumed_from, n_params, precision, fp, losses, averaged)
