"""Class-conditional pixel-space diffusion (``generator.kind: ddpm``): model presets, image policy, sampling, save/load.

The UNet is diffusers' ``UNet2DModel`` with ``num_class_embeds = n_classes + 1``: the last class index is the
"null" label used for classifier-free guidance. Training lives in ``ddpm_train.py``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthmed.data.dataset import ImageSet
from synthmed.errors import ConfigError, DataError, MissingStageError
from synthmed.generators.config import DDPMConfig
from synthmed.io import atomic_write_json, sha256_file

METADATA = "synthmed.json"
TRAINING_IMAGES = "training_images.csv"
DEFAULT_GUIDANCE = 1.5
SAMPLERS = ("dpmpp", "ddim", "ddpm")

#: architecture presets at 32 px (parameter counts with 3 channels and 9 class embeddings in docs/generator-ddpm.md)
PRESETS: dict[str, dict[str, Any]] = {
    "XS": {"block_out_channels": [16, 32], "layers_per_block": 1, "attention_levels": [], "norm_num_groups": 8},
    "S": {"block_out_channels": [32, 64, 64], "layers_per_block": 2, "attention_levels": [2], "norm_num_groups": 8},
    "M": {"block_out_channels": [64, 128, 128], "layers_per_block": 2, "attention_levels": [2], "norm_num_groups": 32},
    "L": {"block_out_channels": [128, 256, 256], "layers_per_block": 2, "attention_levels": [1, 2],
          "norm_num_groups": 32},
}


def resolve_arch(cfg: DDPMConfig) -> dict[str, Any]:
    """Channels, layers, attention levels and norm groups for a preset (explicit config keys override it)."""
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
    n = len(arch["block_out_channels"])
    bad = [lv for lv in arch["attention_levels"] if not 0 <= lv < n]
    if bad:
        raise ConfigError(f"generator.ddpm.attention_levels {bad} out of range 0..{n - 1}")
    return arch


def build_unet(arch: dict[str, Any], channels: int, n_classes: int, resolution: int) -> Any:
    """A fresh ``UNet2DModel`` (initialised from torch's global RNG)."""
    from diffusers import UNet2DModel

    n = len(arch["block_out_channels"])
    attn = set(arch["attention_levels"])
    down = tuple("AttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(n))
    up = tuple("AttnUpBlock2D" if (n - 1 - i) in attn else "UpBlock2D" for i in range(n))
    return UNet2DModel(
        sample_size=resolution, in_channels=channels, out_channels=channels,
        block_out_channels=tuple(arch["block_out_channels"]), layers_per_block=arch["layers_per_block"],
        down_block_types=down, up_block_types=up, num_class_embeds=n_classes + 1,
        norm_num_groups=arch["norm_num_groups"], attention_head_dim=8,
    )


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
    def for_data(cls, height: int, width: int, channels: int, cfg: DDPMConfig, n_levels: int) -> ImagePolicy:
        mult = max(8, 2 ** (n_levels - 1))
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


# ------------------------------------------------------------------------------------------ the generator


def make_sampler(name: str, scheduler_config: dict[str, Any]) -> Any:
    """A fresh sampling scheduler built from the training (DDPM) scheduler config."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if name == "dpmpp":
        return DPMSolverMultistepScheduler.from_config(
            scheduler_config, algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True)
    if name == "ddim":
        return DDIMScheduler.from_config(scheduler_config, clip_sample=True, set_alpha_to_one=True)
    if name == "ddpm":
        return DDPMScheduler.from_config(scheduler_config, clip_sample=True, variance_type="fixed_small")
    raise ConfigError(f"unknown sampler '{name}' (choose from {', '.join(SAMPLERS)})")


def default_steps(sampler: str) -> int:
    return {"dpmpp": 20, "ddim": 50, "ddpm": 1000}[sampler]


@dataclass
class DDPMGenerator:
    """A trained class-conditional UNet with its scheduler config, image policy and metadata."""

    unet: Any
    scheduler_config: dict[str, Any]
    classes: list[str]
    policy: ImagePolicy
    meta: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def null_class(self) -> int:
        return len(self.classes)

    def to(self, device: str | torch.device) -> DDPMGenerator:
        self.device = torch.device(device)
        self.unet.to(self.device)
        return self

    # -------------------------------------------------------------- sampling
    def initial_noise(self, seeds: Sequence[int]) -> tuple[torch.Tensor, list[torch.Generator]]:
        """Per-image generators and their initial noise (drawn first from each image's own generator)."""
        shape = (self.policy.channels, self.policy.resolution, self.policy.resolution)
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        noise = torch.stack([torch.randn(shape, generator=g) for g in gens])
        return noise, gens

    @torch.inference_mode()
    def sample(
        self, labels: Sequence[int], seeds: Sequence[int], sampler: str = "dpmpp", steps: int | None = None,
        guidance: float | None = None, batch_size: int = 64, autocast: torch.dtype | None = None,
    ) -> np.ndarray:
        """Images (N, H, W, C) uint8; image i depends only on (labels[i], seeds[i]) and the settings."""
        if len(labels) != len(seeds):
            raise ValueError("labels and seeds differ in length")
        bad = [int(c) for c in labels if not 0 <= int(c) < len(self.classes)]
        if bad:
            raise ValueError(f"class index {bad[0]} out of range 0..{len(self.classes) - 1}")
        steps = steps or default_steps(sampler)
        guidance = DEFAULT_GUIDANCE if guidance is None else float(guidance)
        out = []
        for start in range(0, len(labels), batch_size):
            out.append(self._sample_batch(list(labels[start:start + batch_size]), list(seeds[start:start + batch_size]),
                                          sampler, steps, guidance, autocast))
        if not out:
            return np.zeros((0, self.policy.height, self.policy.width, self.policy.channels), np.uint8)
        return np.concatenate(out)

    def _sample_batch(self, labels: list[int], seeds: list[int], sampler: str, steps: int, guidance: float,
                      autocast: torch.dtype | None) -> np.ndarray:
        sched = make_sampler(sampler, self.scheduler_config)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2 __array__ copy warning inside diffusers
            sched.set_timesteps(steps)
        x, gens = self.initial_noise(seeds)
        x = (x * sched.init_noise_sigma).to(self.device)
        y = torch.tensor(labels, dtype=torch.long, device=self.device)
        use_cfg = guidance != 1.0
        if use_cfg:
            y = torch.cat([y, torch.full_like(y, self.null_class)])
        self.unet.eval()
        step_kwargs: dict[str, Any] = {"generator": gens} if sampler == "ddpm" else {}
        ctx = (torch.autocast(self.device.type, dtype=autocast) if autocast is not None
               else torch.autocast(self.device.type, enabled=False))
        for t in sched.timesteps:
            inp = sched.scale_model_input(x, t)
            if use_cfg:
                inp = torch.cat([inp, inp])
            tt = torch.full((len(inp),), int(t), dtype=torch.long, device=self.device)
            with ctx:
                eps = self.unet(inp, tt, class_labels=y).sample.float()
            if use_cfg:
                cond, uncond = eps.chunk(2)
                eps = uncond + guidance * (cond - uncond)
            x = sched.step(eps, t, x, **step_kwargs).prev_sample
        return self.policy.to_uint8(x)

    # -------------------------------------------------------------- persistence
    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> str:
        """diffusers layout (``unet/``, ``scheduler/``) + ``synthmed.json``; returns the UNet's sha256."""
        from diffusers import DDPMScheduler

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(path / "unet", safe_serialization=True)
        DDPMScheduler.from_config(self.scheduler_config).save_pretrained(path / "scheduler")
        sha = sha256_file(path / "unet" / "diffusion_pytorch_model.safetensors")
        meta = dict(self.meta)
        meta.update(extra or {})
        meta.update({"kind": "ddpm", "classes": list(self.classes), "null_class": self.null_class,
                     "image_policy": self.policy.to_dict(), "model_sha256": sha})
        atomic_write_json(path / METADATA, meta)
        self.meta = meta
        return sha

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> DDPMGenerator:
        from diffusers import DDPMScheduler, UNet2DModel

        path = Path(path)
        if not (path / METADATA).is_file():
            raise MissingStageError(f"generator ({path})", "finetune")
        try:
            meta = json.loads((path / METADATA).read_text(encoding="utf-8"))
        except ValueError:
            raise DataError(f"{path / METADATA}: not valid JSON") from None
        if meta.get("kind") != "ddpm":
            raise DataError(f"{path} holds a '{meta.get('kind')}' generator, not ddpm")
        weights = path / "unet" / "diffusion_pytorch_model.safetensors"
        if not weights.is_file():
            raise DataError(f"{weights} missing: rerun `synthmed finetune`")
        unet = UNet2DModel.from_pretrained(path / "unet", use_safetensors=True)
        sched_cfg = dict(DDPMScheduler.load_config(path / "scheduler"))
        gen = cls(unet, sched_cfg, list(meta["classes"]), ImagePolicy.from_dict(meta["image_policy"]), meta)
        return gen.to(device)


def write_training_images(path: Path, train: ImageSet) -> None:
    """``training_images.csv`` (id, label, pixel_hash): which real images the generator saw."""
    from synthmed.io import atomic_write_csv, pixel_hash

    rows = ({"id": i, "label": int(y), "pixel_hash": pixel_hash(img)}
            for i, y, img in zip(train.ids, train.labels, train.images))
    atomic_write_csv(path, rows, ["id", "label", "pixel_hash"])
