"""``EDMGenerator``: the class-conditional pixel-space UNet in the EDM formulation (``generator.kind: edm``).

It shares the DDPM kind's network presets, image policy, folder contract and per-image seeding (it subclasses
:class:`DDPMGenerator`) and differs in what the network learns and how it is sampled (``edm/precond.py``):
preconditioned denoiser, log-normal noise levels, Karras sigmas with DPM-Solver++ (default), Euler or Heun.
Folder: ``unet/`` (diffusers), ``scheduler/`` (the ``EDMEulerScheduler`` config: sigma_data, sigma range, rho),
``generator_config.json``, ``synthmed.json``, ``training_images.csv`` (generators/contract.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from synthmed.data.dataset import ImageSet
from synthmed.errors import DataError
from synthmed.generators import contract
from synthmed.generators.base import SampleOptions
from synthmed.generators.ddpm.generator import DDPMGenerator
from synthmed.generators.ddpm.model import DEFAULT_GUIDANCE, ImagePolicy, resolve_arch, to_model_range
from synthmed.generators.edm import precond

if TYPE_CHECKING:
    from synthmed.config import Config
    from synthmed.data.dataset import RealData

WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


class EDMGenerator(DDPMGenerator):
    """EDM-preconditioned class-conditional UNet (see module docstring)."""

    kind: ClassVar[str] = "edm"
    supports_guidance: ClassVar[bool] = True

    @classmethod
    def from_config(cls, cfg: Config, data: RealData) -> EDMGenerator:
        from synthmed.generators.accel import make_accelerator

        ecfg = cfg.generator.edm
        arch = resolve_arch(ecfg)  # type: ignore[arg-type]  (same architecture fields as the ddpm kind)
        policy = ImagePolicy.for_data(*data.size, data.channels, ecfg, len(arch["block_out_channels"]))  # type: ignore[arg-type]
        acc = make_accelerator(cfg.device)
        gen = cls(None, {}, list(data.classes), policy, device=acc.device)
        gen.settings, gen.seed, gen.device_name, gen.world = ecfg, int(cfg.seed), cfg.device, acc.num_processes  # type: ignore[assignment]
        gen.train = data.train
        gen.tracking = cfg.tracking
        summary = data.summary()
        gen.meta["data"] = {"source": data.source, "classes": summary["classes"], "train": summary["splits"]["train"]}
        return gen

    def fit(self, train: ImageSet, work_dir: Path, *, progress: bool = True,
            stop_after: int | None = None) -> EDMGenerator:
        from synthmed.generators.edm.train import train_edm

        if self.settings is None:
            raise RuntimeError("fit needs a generator made by from_config")
        from synthmed.tracking import tracker_for

        s = self.settings
        with tracker_for(getattr(self, "tracking", "none"), Path(work_dir).parent, "generator",
                         {"generator": {"kind": self.kind, **s.model_dump(mode="json")}}) as tracker:
            res = train_edm(s, train, self.classes, Path(work_dir), seed=self.seed, device=self.device_name,  # type: ignore[arg-type]
                            stop_after=stop_after, progress=progress, tracker=tracker)
            self.unet, self.scheduler_config = res.unet.to(self.device), dict(res.scheduler_config)
            if tracker.enabled:  # one image per class from the trained network
                labels = list(range(len(self.classes)))
                tracker.log_images({"generator/samples": self.sample(labels, labels, SampleOptions(steps=10))}, res.steps)
        self.meta.update({"arch": res.arch, "n_params": res.n_params, "training": {
            "formulation": "edm", "steps": s.steps, "batch_size": s.batch_size, "world_size": self.world,
            "seed": self.seed, "lr": s.lr, "class_power": s.class_power, "p_mean": s.p_mean, "p_std": s.p_std,
            "sigma_data": s.sigma_data, "label_dropout": s.label_dropout, "ema_decay": s.ema_decay,
            "precision": res.precision, "fingerprint": res.fingerprint, "resumed_from": res.resumed_from}})
        self.train, self.last_fit = train, res
        return self.to(self.device)

    def fingerprint(self) -> str:
        from synthmed.generators.edm.train import fingerprint

        if self.settings is not None and self.train is not None:
            return fingerprint(self.settings, self.seed, self.train, self.world)  # type: ignore[arg-type]
        return str(self.meta.get("training", {}).get("fingerprint", ""))

    # -------------------------------------------------------------- sampling
    def options(self, options: SampleOptions | None) -> tuple[str, int, float]:
        o = options or SampleOptions()
        sampler = precond.resolve_sampler(o.sampler or "dpmpp")
        steps = o.steps or precond.DEFAULT_STEPS[sampler]
        return sampler, steps, DEFAULT_GUIDANCE if o.guidance is None else float(o.guidance)

    def _sample_batch(self, labels: list[int], seeds: list[int], sampler: str, steps: int, guidance: float,
                      autocast: torch.dtype | None, sources: np.ndarray | None, strength: float | None) -> np.ndarray:
        noise, _ = self.initial_noise(seeds)
        y = torch.tensor(labels, dtype=torch.long, device=self.device)
        src = None if sources is None else to_model_range(self.policy.pad_uint8(sources)).to(self.device)
        ctx_args = {"dtype": autocast} if autocast is not None else {"enabled": False}
        self.unet.eval()

        def net(x: torch.Tensor, c_noise: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
            with torch.autocast(self.device.type, **ctx_args):
                return self.unet(x, c_noise.to(self.device), class_labels=yy).sample

        x = precond.sample(net, self.scheduler_config, noise.to(self.device), y, self.null_class, sampler, steps,
                           guidance, sources=src, strength=strength)
        return self.policy.to_uint8(x)

    # -------------------------------------------------------------- persistence
    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> str:
        """The generator folder (generators/contract.py); returns the UNet's sha256."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        precond.euler_scheduler(self.scheduler_config).save_pretrained(path / "scheduler")
        return self._save_common(path, extra)

    def _save_common(self, path: Path, extra: dict[str, Any] | None) -> str:
        from synthmed.io import atomic_write_json, sha256_file

        self.unet.save_pretrained(path / "unet", safe_serialization=True)
        sha = sha256_file(path / WEIGHTS)
        meta = dict(self.meta)
        meta.update(extra or {})
        meta.update({"kind": self.kind, "classes": list(self.classes), "null_class": self.null_class,
                     "image_policy": self.policy.to_dict(), "model_sha256": sha})
        if self.settings is not None:
            atomic_write_json(path / contract.CONFIG, {"kind": self.kind, "settings": self.settings.model_dump(mode="json"),
                                                        "seed": self.seed})
        if self.train is not None:
            contract.write_training_images(path, self.train, self.classes)
            meta["training_images"] = contract.TRAINING_IMAGES
            meta["fingerprint"] = self.fingerprint()
        atomic_write_json(path / contract.METADATA, meta)
        self.meta = meta
        return sha

    @classmethod
    def load(cls, path: str | Path, cfg: Config | None = None, device: str | torch.device | None = None
             ) -> EDMGenerator:
        from diffusers import EDMEulerScheduler, UNet2DModel

        path = Path(path)
        meta = contract.read_metadata(path, cls.kind)
        if not (path / WEIGHTS).is_file():
            raise DataError(f"{path / WEIGHTS} missing: rerun `synthmed finetune`")
        if device is None and cfg is not None:
            from synthmed.generators.accel import make_accelerator

            device = make_accelerator(cfg.device).device
        unet = UNet2DModel.from_pretrained(path / "unet", use_safetensors=True)
        keys = ("sigma_data", "sigma_min", "sigma_max", "rho")
        loaded = dict(EDMEulerScheduler.load_config(path / "scheduler"))
        sched_cfg = precond.scheduler_config(*(float(loaded[k]) for k in keys))
        gen = cls(unet, sched_cfg, list(meta["classes"]), ImagePolicy.from_dict(meta["image_policy"]), meta,
                  device=device or "cpu")
        if cfg is not None:
            gen.settings, gen.seed, gen.device_name = cfg.generator.edm, int(cfg.seed), cfg.device  # type: ignore[assignment]
        return gen
