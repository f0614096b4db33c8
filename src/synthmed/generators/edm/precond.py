"""The EDM formulation (Karras et al., NeurIPS 2022) on top of diffusers' EDM schedulers.

The network F is diffusers' ``UNet2DModel``; the denoiser is ``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)``
with the scheduler's own ``precondition_inputs / precondition_noise / precondition_outputs`` (sigma_data = 0.5 for
images in [-1, 1]). Training draws ``ln sigma ~ N(p_mean, p_std^2)`` and weights the denoising error by
``(sigma^2 + sigma_data^2) / (sigma sigma_data)^2``; that weight times ``c_out^2`` is 1, so the loss is the plain MSE
between F and its effective target ``(x0 - c_skip x) / c_out`` (the form used here: no large weights).

Samplers on Karras sigmas: ``dpmpp`` (``EDMDPMSolverMultistepScheduler``, DPM-Solver++ 2M), ``euler``
(``EDMEulerScheduler``; first order, the EDM view of DDIM) and ``heun`` (EDM's 2nd-order sampler: an Euler step
corrected with the slope at its end point, written here around the Euler scheduler's preconditioning).
Classifier-free guidance mixes the conditional and null-label network outputs; since D is affine in F, this is
the same as mixing the two denoised images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from synthmed.errors import ConfigError

SAMPLERS = ("dpmpp", "euler", "heun")
DEFAULT_STEPS = {"dpmpp": 20, "euler": 40, "heun": 18}
#: generation.sampler names shared with the ddpm kind, mapped to their EDM counterpart
ALIASES = {"ddim": "euler", "ddpm": "euler"}


def scheduler_config(sigma_data: float, sigma_min: float, sigma_max: float, rho: float) -> dict[str, Any]:
    return {"sigma_data": float(sigma_data), "sigma_min": float(sigma_min), "sigma_max": float(sigma_max),
            "rho": float(rho), "sigma_schedule": "karras", "prediction_type": "epsilon", "final_sigmas_type": "zero"}


def euler_scheduler(config: dict[str, Any]) -> Any:
    from diffusers import EDMEulerScheduler

    return EDMEulerScheduler(**config)


def resolve_sampler(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in SAMPLERS:
        raise ConfigError(f"generation.sampler={name} is not an EDM sampler (choose from {', '.join(SAMPLERS)})")
    return name


def training_loss(net: Callable[..., torch.Tensor], sched: Any, x0: torch.Tensor, y: torch.Tensor,
                  noise: torch.Tensor, z: torch.Tensor, p_mean: float, p_std: float) -> torch.Tensor:
    """EDM loss for clean images ``x0`` in [-1, 1], standard-normal ``noise`` and ``z`` (one per image)."""
    sigma = torch.exp(p_mean + p_std * z.float()).to(x0.device)
    s = sigma[:, None, None, None]
    x = x0 + s * noise
    sd = float(sched.config.sigma_data)
    c_skip = sd**2 / (s**2 + sd**2)
    c_out = s * sd / (s**2 + sd**2).sqrt()
    out = net(sched.precondition_inputs(x, s), sched.precondition_noise(sigma), y)
    target = (x0 - c_skip * x) / c_out
    return torch.nn.functional.mse_loss(out.float(), target.float())


def _guided(net: Callable[..., torch.Tensor], x_in: torch.Tensor, c_noise: torch.Tensor, y: torch.Tensor,
            null: int, guidance: float) -> torch.Tensor:
    """Network output with classifier-free guidance (``guidance == 1``: conditional only)."""
    if guidance == 1.0:
        return net(x_in, c_noise.expand(len(x_in)), y).float()
    both = net(torch.cat([x_in, x_in]), c_noise.expand(2 * len(x_in)), torch.cat([y, torch.full_like(y, null)]))
    cond, uncond = both.float().chunk(2)
    return uncond + guidance * (cond - uncond)


def start_index(steps: int, strength: float | None) -> int:
    """First sampling step for SDEdit at ``strength`` in (0, 1] (1 = from pure noise)."""
    if strength is None or strength >= 1.0:
        return 0
    return min(steps - 1, max(0, int(round(steps * (1.0 - float(strength))))))


@torch.inference_mode()
def sample(net: Callable[..., torch.Tensor], config: dict[str, Any], noise: torch.Tensor, y: torch.Tensor,
           null: int, sampler: str, steps: int, guidance: float, sources: torch.Tensor | None = None,
           strength: float | None = None) -> torch.Tensor:
    """Denoise ``noise`` (standard normal, (N, C, R, R)) into images in [-1, 1] under labels ``y``.

    With ``sources`` (clean images in [-1, 1]) sampling starts at the Karras sigma of step
    ``start_index(steps, strength)`` from ``source + sigma * noise`` (SDEdit)."""
    sampler = resolve_sampler(sampler)
    if sampler == "dpmpp":
        from diffusers import EDMDPMSolverMultistepScheduler

        sched = EDMDPMSolverMultistepScheduler(**config, algorithm_type="dpmsolver++", solver_order=2,
                                               lower_order_final=True)
    else:
        sched = euler_scheduler(config)
    sched.set_timesteps(steps)
    begin = start_index(steps, strength) if sources is not None else 0
    sigma0 = float(sched.sigmas[begin])
    x = noise * sigma0 if sources is None else sources + noise * sigma0
    if sampler == "heun":
        return _heun(net, sched, x, y, null, guidance, begin)
    if begin:
        sched.set_begin_index(begin)
    for t in sched.timesteps[begin:]:
        out = _guided(net, sched.scale_model_input(x, t), t.reshape(1), y, null, guidance)
        x = sched.step(out, t, x).prev_sample
    return x


def _heun(net: Callable[..., torch.Tensor], sched: Any, x: torch.Tensor, y: torch.Tensor, null: int,
          guidance: float, begin: int) -> torch.Tensor:
    """EDM Algorithm 1 (deterministic Heun) on the scheduler's Karras sigmas."""
    sig = sched.sigmas.tolist()

    def denoise(x_: torch.Tensor, s: float) -> torch.Tensor:
        st = torch.tensor([s], dtype=torch.float32)
        out = _guided(net, sched.precondition_inputs(x_, s), sched.precondition_noise(st), y, null, guidance)
        return sched.precondition_outputs(x_, out, s)

    for i in range(begin, len(sig) - 1):
        s, s_next = sig[i], sig[i + 1]
        d = (x - denoise(x, s)) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d_next = (x_next - denoise(x_next, s_next)) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d_next)
        x = x_next
    return x
