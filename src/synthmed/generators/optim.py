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


# Muon's quintic Newton-Schulz coefficients (Jordan et al. 2024; torch.optim.Muon's defaults).
_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalise(m: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately the nearest semi-orthogonal matrix to ``m`` (U V^T of its SVD), by Newton-Schulz iterations."""
    a, b, c = _NS_COEFFICIENTS
    x = m / (m.norm() + 1e-7)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class MuonAdamW(torch.optim.AdamW):
    """Muon on the hidden weight matrices, AdamW on everything else, as one optimizer (one state dict, one schedule).

    ``torch.optim.Muon`` takes 2-D parameters only; here a conv filter is orthogonalised as its (out, in * k * k)
    matrix, as in the CIFAR-10 speed runs Muon comes from. Each Muon update is scaled by ``0.2 * sqrt(max(A, B))``
    (Moonshot's "match_rms_adamw", torch's ``adjust_lr_fn``), so the AdamW learning rate serves both groups.
    Groups are marked with ``use_muon``; Muon uses Nesterov momentum ``momentum`` and decoupled weight decay.
    """

    def __init__(self, muon_params: list[torch.nn.Parameter], adamw_params: list[torch.nn.Parameter], lr: float,
                 weight_decay: float = 0.0, momentum: float = 0.95, ns_steps: int = 5) -> None:
        groups = [{"params": muon_params, "use_muon": True, "momentum": momentum, "ns_steps": ns_steps},
                  {"params": adamw_params, "use_muon": False}]
        super().__init__([g for g in groups if g["params"]], lr=lr, weight_decay=weight_decay, foreach=True)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One Muon step on the marked groups, then AdamW's on the rest (their gradients are left untouched)."""
        held: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        for group in self.param_groups:
            if not group.get("use_muon"):
                continue
            lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:  # "step" too: Adam's __setstate__ expects it in every state
                    state["momentum_buffer"], state["step"] = torch.zeros_like(p), torch.tensor(0.0)
                state["step"] += 1
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mu)
                m = p.grad.lerp(buf, mu).reshape(p.shape[0], -1)  # Nesterov
                p.mul_(1 - lr * wd)
                p.add_(orthogonalise(m, group["ns_steps"]).view_as(p), alpha=-lr * 0.2 * max(m.shape) ** 0.5)
                held.append((p, p.grad))
                p.grad = None  # AdamW skips it
        try:
            return super().step(closure)
        finally:
            for p, grad in held:
                p.grad = grad


def build_optimizer(named: list[tuple[str, torch.nn.Parameter]], name: str, lr: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, or Muon on the hidden weights (every >= 2-D tensor but the input/output convs and the label embedding)
    with AdamW on the rest."""
    if name == "adamw":
        return torch.optim.AdamW([p for _, p in named], lr=lr, weight_decay=weight_decay, foreach=True)
    outer = ("conv_in.", "conv_out.", "class_embedding.")
    hidden = [p for n, p in named if p.ndim >= 2 and not n.startswith(outer)]
    ids = {id(p) for p in hidden}
    return MuonAdamW(hidden, [p for _, p in named if id(p) not in ids], lr=lr, weight_decay=weight_decay)
