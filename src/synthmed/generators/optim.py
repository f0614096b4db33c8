"""The optimisation step shared by the generator training loops (DDPM from scratch, Stable Diffusion)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


def optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer, lr_sched: Any, params: Iterable[torch.nn.Parameter],
                   grad_clip: float | None, scaler: Any | None = None,
                   backward: Callable[[torch.Tensor], None] | None = None,
                   clip_grad_norm: Callable[..., Any] | None = None) -> None:
    """Backward, (unscale), clip, step, schedule, zero: in this order, so resumed runs stay bit-identical.

    ``scaler`` is a ``torch.amp.GradScaler`` for fp16 (None otherwise); ``backward`` / ``clip_grad_norm`` default to
    ``loss.backward()`` / ``torch.nn.utils.clip_grad_norm_`` and take accelerate's versions under an ``Accelerator``.
    """
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    elif backward is not None:
        backward(loss)
    else:
        loss.backward()
    if grad_clip:
        (clip_grad_norm or torch.nn.utils.clip_grad_norm_)(params, grad_clip)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    lr_sched.step()
    opt.zero_grad(set_to_none=True)
