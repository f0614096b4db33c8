"""``EDMGenerator``: the class-conditional pixel-space UNet in the EDM formulation (``generator.kind: edm``).

It shares the DDPM kind's network presets, image policy, folder contract and per-image seeding (it subclasses
:class:`DDPMGenerator`) and differs in what the network learns and how it is sampled (``edm/precond.py``):
preconditioned denoiser, log-normal noise levels, Karras sigmas with DPM-Solver++ (default), Euler or Heun.
Folder: ``unet/`` (diffusers), ``scheduler/`` (the ``EDMEulerScheduler`` config: sigma_data, sigma range, rho),
``generator_config.json``, ``synthmed.json``, ``training_images.csv`` (generators/contract.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from synthmed.data.dataset import ImageSet
from synthmed.generators.base import SampleOptions
from synthmed.generators.ddpm.generator import DDPMGenerator, log_sample_grid
from synthmed.generators.ddpm.model import DEFAULT_GUIDANCE, to_model_range
from synthmed.generators.edm import precond

class EDMGenerator(DDPMGenerator):
    """EDM-preconditioned class-conditional UNet (see module docstring)."""

    kind: ClassVar[str] = "edm"
    supports_guidance: ClassVar[bool] = True

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
            log_sample_grid(self, tracker, res.steps)
        self.meta.update({"arch": res.arch, "n_params": res.n_params, "training": {
            "formulation": "edm", "steps": s.steps, "batch_size": s.batch_size, "world_size": self.world,
            "seed": self.seed, "lr": s.lr, "class_power": s.class_power, "p_mean": s.p_mean, "p_std": s.p_std,
            "sigma_data": s.sigma_data, "label_dropout": s.label_dropout, "ema_decay": s.ema_decay,
            "precision": res.precision, "fingerprint": res.fingerprint, "resumed_from": res.resumed_from,
            **({"average_checkpoints": s.average_checkpoints, "averaged_steps": res.averaged_steps}
               if res.averaged_steps else {})}})
        self.train, self.last_fit = train, res
        return self.to(self.device)

    def fingerprint(self) -> str:
        from synthmed.generators.checkpoints import weights_fingerprint
        from synthmed.generators.edm.train import fingerprint

        if self.settings is not None and self.train is not None:
            return weights_fingerprint(fingerprint(self.settings, self.seed, self.train, self.world),
                                       self.settings.average_checkpoints)
        return str(self.meta.get("fingerprint") or self.meta.get("training", {}).get("fingerprint", ""))

    # -------------------------------------------------------------- sampling
    def options(self, options: SampleOptions | None) -> tuple[str, int, float]:
        o = options or SampleOptions()
        # default = the saved scheduler (EDMEulerScheduler), i.e. the euler sampler
        sampler = precond.resolve_sampler("euler" if o.sampler == "default" else o.sampler or "dpmpp")
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

    # -------------------------------------------------------------- persistence (the rest is the DDPM kind's)
    def _save_scheduler(self, folder: Path) -> None:
        precond.euler_scheduler(self.scheduler_config).save_pretrained(folder)

    @classmethod
    def _load_scheduler_config(cls, folder: Path) -> dict[str, Any]:
        from diffusers import EDMEulerScheduler

        loaded = dict(EDMEulerScheduler.load_config(folder))
        return precond.scheduler_config(*(float(loaded[k]) for k in ("sigma_data", "sigma_min", "sigma_max", "rho")))
