"""The DDPM's network and image geometry: UNet presets, the image policy (reflect padding), sampling schedulers.

The UNet is diffusers' ``UNet2DModel`` with ``num_class_embeds = n_classes + 1``: the last class index is the
"null" label used for classifier-free guidance. With ``patch_size`` p > 1 it is :class:`PatchUNet2DModel`, the same
network run on p x p pixel patches folded into channels (pixel-unshuffle; the U-ViT / simple-diffusion "patch 2"):
its levels run at resolution / p, so a wider network costs what a thin one at full resolution does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from synthmed.errors import ConfigError, DataError
from synthmed.generators.config import DDPMConfig

DEFAULT_GUIDANCE = 1.5
SAMPLERS = ("dpmpp", "dpmpp_sde", "ddim", "ddpm")
#: samplers that draw fresh noise at every step (from each image's own generator)
STOCHASTIC = ("dpmpp_sde", "ddpm")
#: DPM-Solver++ timesteps: "linspace" starts at the last training timestep (pure noise)
DPMPP_SPACING = "linspace"

#: architecture presets at 32 px (parameter counts with 3 channels and 9 class embeddings in docs/generator-ddpm.md)
PRESETS: dict[str, dict[str, Any]] = {
    "XS": {"block_out_channels": [16, 32], "layers_per_block": 1, "attention_levels": [], "norm_num_groups": 8},
    # XS's top level (which sets a step's cost) with two more coarse levels, down to 4x4 (self-attention there): a
    # wider receptive field at about the XS step cost (BENCHMARKS.md, "A deeper UNet at the XS step cost")
    "XS-deep": {"block_out_channels": [16, 32, 64, 64], "layers_per_block": 1, "attention_levels": [3],
                "norm_num_groups": 8},
    "S": {"block_out_channels": [32, 64, 64], "layers_per_block": 2, "attention_levels": [2], "norm_num_groups": 8},
    "M": {"block_out_channels": [64, 128, 128], "layers_per_block": 2, "attention_levels": [2], "norm_num_groups": 32},
    "L": {"block_out_channels": [128, 256, 256], "layers_per_block": 2, "attention_levels": [1, 2],
          "norm_num_groups": 32},
}


def resolve_arch(cfg: DDPMConfig) -> dict[str, Any]:
    """Channels, layers, attention levels, norm groups and patch size for a preset (explicit config keys override
    it)."""
    if cfg.preset == "custom":
        if not cfg.block_out_channels:
            raise ConfigError("generator.ddpm.preset=custom needs generator.ddpm.block_out_channels (e.g. [32, 64, 64])")
        chans = [int(c) for c in cfg.block_out_channels]
        groups = next(g for g in (32, 16, 8, 4, 2, 1) if all(c % g == 0 for c in chans) and min(chans) >= 2 * g)
        arch = {"block_out_channels": chans, "layers_per_block": cfg.layers_per_block,
                "attention_levels": list(cfg.attention_levels or []), "norm_num_groups": groups}
    else:
        arch = dict(PRESETS[cfg.preset])
        if cfg.block_out_channels is not None:
            raise ConfigError("generator.ddpm.block_out_channels needs generator.ddpm.preset=custom")
        if "layers_per_block" in cfg.model_fields_set:
            arch["layers_per_block"] = cfg.layers_per_block
        if cfg.attention_levels is not None:
            arch["attention_levels"] = list(cfg.attention_levels)
    arch["patch_size"] = int(cfg.patch_size or arch.get("patch_size", 1))
    for flag in ("self_condition", "time_scale_shift"):  # ddpm only; recorded only when on
        if getattr(cfg, flag, None):
            arch[flag] = True
    n = len(arch["block_out_channels"])
    bad = [lv for lv in arch["attention_levels"] if not 0 <= lv < n]
    if bad:
        raise ConfigError(f"generator.ddpm.attention_levels {bad} out of range 0..{n - 1}")
    return arch


def downsampling(arch: dict[str, Any]) -> int:
    """How many pixels of the input one pixel of the UNet's coarsest level spans, per side."""
    return int(arch.get("patch_size", 1)) * 2 ** (len(arch["block_out_channels"]) - 1)


def build_unet(arch: dict[str, Any], channels: int, n_classes: int, resolution: int) -> Any:
    """A fresh ``UNet2DModel`` (initialised from torch's global RNG); a ``PatchUNet2DModel`` when patch_size > 1."""
    from diffusers import UNet2DModel

    n = len(arch["block_out_channels"])
    p = int(arch.get("patch_size", 1))
    attn = set(arch["attention_levels"])
    down = tuple("AttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(n))
    up = tuple("AttnUpBlock2D" if (n - 1 - i) in attn else "UpBlock2D" for i in range(n))
    inputs = 2 * channels if arch.get("self_condition") else channels  # + the previous x0 estimate
    unet = (UNet2DModel if p == 1 else patch_unet_class())(
        sample_size=resolution // p, in_channels=inputs * p * p, out_channels=channels * p * p,
        block_out_channels=tuple(arch["block_out_channels"]), layers_per_block=arch["layers_per_block"],
        down_block_types=down, up_block_types=up, num_class_embeds=n_classes + 1,
        norm_num_groups=arch["norm_num_groups"], attention_head_dim=8,
        resnet_time_scale_shift="scale_shift" if arch.get("time_scale_shift") else "default",
    )
    if p > 1:
        unet.patch_size = p
    return unet


def x0_estimate(out: torch.Tensor, x: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The clean image implied by a model output at noisy ``x`` (``alpha_bar`` per row), clamped to [-1, 1]."""
    a = alpha_bar.reshape(-1, 1, 1, 1).to(x.dtype)
    if prediction_type == "v_prediction":
        x0 = a.sqrt() * x - (1 - a).sqrt() * out
    else:
        x0 = (x - (1 - a).sqrt() * out) / a.sqrt()
    return x0.clamp(-1, 1)


def load_unet(folder: Any, patch_size: int = 1) -> Any:
    """A saved UNet (``save_pretrained`` folder); ``patch_size`` from the generator's metadata (``arch``)."""
    from diffusers import UNet2DModel

    if int(patch_size) == 1:
        return UNet2DModel.from_pretrained(folder, use_safetensors=True)
    unet = patch_unet_class().from_pretrained(folder, use_safetensors=True)
    unet.patch_size = int(patch_size)
    return unet


def patch_unet_class() -> type:
    """``PatchUNet2DModel``: a ``UNet2DModel`` whose forward folds p x p patches into channels and back
    (``F.pixel_unshuffle`` / ``F.pixel_shuffle``); same weights, config and call signature (``.sample``)."""
    global _PATCH_UNET
    if _PATCH_UNET is None:
        import torch.nn.functional as F
        from diffusers import UNet2DModel
        from diffusers.models.unets.unet_2d import UNet2DOutput

        class PatchUNet2DModel(UNet2DModel):
            patch_size = 2

            def forward(self, sample: torch.Tensor, timestep: Any, class_labels: Any = None,
                        return_dict: bool = True) -> Any:
                p = self.patch_size
                if sample.shape[-1] % p or sample.shape[-2] % p:
                    raise ValueError(f"input {tuple(sample.shape[-2:])} is not a multiple of the patch size {p}")
                out = super().forward(F.pixel_unshuffle(sample, p), timestep, class_labels=class_labels).sample
                out = F.pixel_shuffle(out, p)
                return UNet2DOutput(sample=out) if return_dict else (out,)

        _PATCH_UNET = PatchUNet2DModel
    return _PATCH_UNET


_PATCH_UNET: type | None = None


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------ image policy


@dataclass(frozen=True)
class ImagePolicy:
    """Real image size/channels and the reflect padding to the UNet resolution (cropped back after sampling)."""

    height: int
    width: int
    channels: int
    resolution: int
    pad: tuple[int, int, int, int]  # top, bottom, left, right

    @classmethod
    def for_data(cls, height: int, width: int, channels: int, cfg: DDPMConfig, factor: int) -> ImagePolicy:
        """``factor``: the UNet's total downsampling (:func:`downsampling`); the resolution is a multiple of it."""
        mult = max(8, factor)
        need = max(height, width)
        res = cfg.resolution if cfg.resolution is not None else mult * math.ceil(need / mult)
        if res % mult or res < need:
            raise ConfigError(
                f"generator.ddpm.resolution={res} must be a multiple of {mult} and at least the image size {need}"
            )
        ph, pw = res - height, res - width
        if (ph and ph >= height) or (pw and pw >= width):
            raise ConfigError(f"generator.ddpm.resolution={res} is too large for {height}x{width} images (reflect pad)")
        return cls(height, width, channels, res, (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2))

    def to_dict(self) -> dict[str, Any]:
        return {"height": self.height, "width": self.width, "channels": self.channels, "resolution": self.resolution,
                "padding": list(self.pad), "pad_mode": "reflect"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImagePolicy:
        return cls(int(d["height"]), int(d["width"]), int(d["channels"]), int(d["resolution"]),
                   tuple(int(v) for v in d["padding"]))  # type: ignore[arg-type]

    def pad_uint8(self, images: np.ndarray) -> torch.Tensor:
        """(N, H, W, C) uint8 -> (N, C, R, R) uint8 tensor, reflect-padded."""
        t, b, l, r = self.pad
        if images.shape[1:] != (self.height, self.width, self.channels):
            raise DataError(f"images are {images.shape[1:]}, the generator expects "
                            f"{(self.height, self.width, self.channels)}")
        arr = np.pad(images, ((0, 0), (t, b), (l, r), (0, 0)), mode="reflect") if any(self.pad) else images
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))

    def to_uint8(self, x: torch.Tensor) -> np.ndarray:
        """(N, C, R, R) in [-1, 1] -> (N, H, W, C) uint8, cropped back to the real size."""
        t, _, l, _ = self.pad
        x = x[:, :, t : t + self.height, l : l + self.width]
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).cpu().numpy()


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1.0


# ------------------------------------------------------------------------------------------ samplers


def make_sampler(name: str, scheduler_config: dict[str, Any]) -> Any:
    """A fresh sampling scheduler built from the training (DDPM) scheduler config."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    # diffusers' bookkeeping keys (``_use_default_values``: which keys the sampler may replace by its own defaults)
    # exist on a scheduler built in this process but not on one read back from disk, so a trained and a loaded
    # generator sampled differently; without them both read every key from the saved config, and the DPM++
    # spacing is set here
    scheduler_config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    if name in ("dpmpp", "dpmpp_sde"):  # dpmpp_sde: the stochastic DPM-Solver++ (2M SDE, Lu et al. 2022)
        return DPMSolverMultistepScheduler.from_config(
            scheduler_config, algorithm_type="dpmsolver++" if name == "dpmpp" else "sde-dpmsolver++", solver_order=2,
            lower_order_final=True, timestep_spacing=DPMPP_SPACING)
    if name == "ddim":
        return DDIMScheduler.from_config(scheduler_config, clip_sample=True, set_alpha_to_one=True)
    if name == "ddpm":
        return DDPMScheduler.from_config(scheduler_config, clip_sample=True, variance_type="fixed_small")
    raise ConfigError(f"unknown sampler '{name}' (choose from {', '.join(SAMPLERS)})")


def default_steps(sampler: str) -> int:
    return {"dpmpp": 20, "dpmpp_sde": 30, "ddim": 50, "ddpm": 1000}[sampler]
