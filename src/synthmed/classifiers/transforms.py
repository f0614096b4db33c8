"""Training-batch tensor helpers: uint8 -> float conversion, per-sample augmentation, MixUp / CutMix.

Augmentation is applied to training batches only (never val/test), on in-memory tensors.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from synthmed.classifiers.config import AugmentConfig, ClassifierConfig


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> uint8 tensor (N, C, H, W) (converted to float per batch)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def to_float(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.to(device, non_blocking=True).float().div_(255.0)


def augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Per-sample flips, rot90 and brightness/contrast jitter of a float batch in [0, 1]."""
    b = x.shape[0]
    dev = x.device

    def coin() -> torch.Tensor:
        return (torch.rand(b, generator=gen) < 0.5).to(dev).view(b, 1, 1, 1)

    if cfg.hflip:
        x = torch.where(coin(), x.flip(3), x)
    if cfg.vflip:
        x = torch.where(coin(), x.flip(2), x)
    if cfg.rot90 and x.shape[2] == x.shape[3]:
        k = torch.randint(0, 4, (b,), generator=gen).to(dev)
        out = x.clone()
        for r in (1, 2, 3):
            sel = k == r
            if sel.any():
                out[sel] = torch.rot90(x[sel], r, dims=(2, 3))
        x = out
    if cfg.brightness > 0:
        f = 1.0 + (torch.rand(b, generator=gen) * 2 - 1) * cfg.brightness
        x = x * f.to(dev).view(b, 1, 1, 1)
    if cfg.contrast > 0:
        f = (1.0 + (torch.rand(b, generator=gen) * 2 - 1) * cfg.contrast).to(dev).view(b, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * f + mean
    return x.clamp_(0.0, 1.0)


def mix_batch(x: torch.Tensor, groups: list[int], cc: ClassifierConfig, rng: np.random.Generator,
              gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """MixUp / CutMix within each group (real part, synthetic part): returns images, partner index and lambda.

    A batch is mixed with probability ``classifier.mix_prob`` (one draw from ``rng`` per batch, made only when
    mix_prob < 1, so the default draws exactly what it drew before the setting existed)."""
    modes = [m for m, a in (("mixup", cc.mixup), ("cutmix", cc.cutmix)) if a > 0]
    if not modes:
        return x, None, 1.0
    if cc.mix_prob < 1.0 and not rng.random() < cc.mix_prob:
        return x, None, 1.0
    mode = modes[int(rng.integers(len(modes)))]
    alpha = cc.mixup if mode == "mixup" else cc.cutmix
    lam = float(rng.beta(alpha, alpha))
    perm, start = [], 0
    for n in groups:
        perm.append(start + torch.randperm(n, generator=gen))
        start += n
    index = torch.cat(perm).to(x.device)
    if mode == "mixup":
        return lam * x + (1 - lam) * x[index], index, lam
    h, w = x.shape[2], x.shape[3]
    ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1, x0, x1 = max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[index][:, :, y0:y1, x0:x1]
    return x, index, 1.0 - (y1 - y0) * (x1 - x0) / (h * w)

