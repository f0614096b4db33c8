"""``DDPMGenerator``: the class-conditional pixel-space DDPM as a :class:`synthmed.generators.base.Generator`.

Training is in ``ddpm/train.py``; the folder it writes follows ``generators/contract.py`` (diffusers ``unet/`` and
``scheduler/``, ``generator_config.json``, ``synthmed.json``, ``training_images.csv``).
Sampling supports real-image guidance (SDEdit): a source image noised to ``strength`` and denoised under the label.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from synthmed.data.dataset import ImageSet
from synthmed.errors import DataError
from synthmed.generators import contract
from synthmed.generators.accel import resolve_precision
from synthmed.generators.base import SampleOptions
from synthmed.generators.config import DDPMConfig
from synthmed.generators.ddpm.model import (
    DEFAULT_GUIDANCE, STOCHASTIC, ImagePolicy, default_steps, downsampling, load_unet, make_sampler, resolve_arch,
    to_model_range, x0_estimate,
)
from synthmed.io import atomic_write_json, sha256_file

if TYPE_CHECKING:
    from synthmed.config import Config
    from synthmed.data.dataset import RealData

WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


class DDPMGenerator:
    """A class-conditional UNet with its scheduler config, image policy and metadata (untrained until fit/load)."""

    kind: ClassVar[str] = "ddpm"
    supports_guidance: ClassVar[bool] = True  # SDEdit from SampleOptions.sources / strength
    supports_precision: ClassVar[bool] = True  # SampleOptions.precision (bf16 autocast)

    def __init__(self, unet: Any, scheduler_config: dict[str, Any], classes: list[str], policy: ImagePolicy,
                 meta: dict[str, Any] | None = None, device: str | torch.device = "cpu") -> None:
        self.unet = unet
        self.scheduler_config = dict(scheduler_config)
        self.classes = list(classes)
        self.policy = policy
        self.meta: dict[str, Any] = dict(meta or {})
        self.device = torch.device(device)
        # set by from_config / fit (what save writes beside the weights)
        self.settings: DDPMConfig | None = None
        self.seed = 0
        self.device_name = "cpu"
        self.world = 1
        self.train: ImageSet | None = None
        self.last_fit: Any = None
        if unet is not None:
            self.unet.to(self.device)

    @property
    def null_class(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.policy.height, self.policy.width, self.policy.channels

    def to(self, device: str | torch.device) -> DDPMGenerator:
        self.device = torch.device(device)
        if self.unet is not None:
            self.unet.to(self.device)
        return self

    # -------------------------------------------------------------- protocol: construction, training
    @classmethod
    def from_config(cls, cfg: Config, data: RealData) -> DDPMGenerator:
        from synthmed.generators.accel import make_accelerator

        dcfg = getattr(cfg.generator, cls.kind)  # generator.ddpm (generator.edm for the EDM subclass)
        arch = resolve_arch(dcfg)
        h, w = data.size
        policy = ImagePolicy.for_data(h, w, data.channels, dcfg, downsampling(arch))
        acc = make_accelerator(cfg.device)
        gen = cls(None, {}, list(data.classes), policy, device=acc.device)
        gen.settings, gen.seed, gen.device_name, gen.world = dcfg, int(cfg.seed), cfg.device, acc.num_processes
        gen.train = data.train
        gen.tracking = cfg.tracking
        summary = data.summary()
        gen.meta["data"] = {"source": data.source, "classes": summary["classes"], "train": summary["splits"]["train"]}
        return gen

    def fit(self, train: ImageSet, work_dir: Path, *, progress: bool = True,
            stop_after: int | None = None) -> DDPMGenerator:
        from synthmed.generators.ddpm.train import train_ddpm

        if self.settings is None:
            raise RuntimeError("fit needs a generator made by from_config")
        from synthmed.tracking import tracker_for

        kind = "tensorboard" if self.settings.tensorboard else getattr(self, "tracking", "none")
        with tracker_for(kind, Path(work_dir).parent, "generator",
                         {"generator": {"kind": self.kind, **self.settings.model_dump(mode="json")}}) as tracker:
            res = train_ddpm(self.settings, train, self.classes, Path(work_dir), seed=self.seed,
                             device=self.device_name, stop_after=stop_after, progress=progress, tracker=tracker)
            data_meta = self.meta.get("data")
            trained = res.generator
            self.unet, self.scheduler_config, self.meta = trained.unet, trained.scheduler_config, trained.meta
            if data_meta is not None:
                self.meta["data"] = data_meta
            self.train, self.last_fit = train, res
            self.to(self.device)
            log_sample_grid(self, tracker, res.steps)
        return self

    def fingerprint(self) -> str:
        from synthmed.generators.checkpoints import weights_fingerprint
        from synthmed.generators.ddpm.train import fingerprint

        if self.settings is not None and self.train is not None:
            return weights_fingerprint(fingerprint(self.settings, self.seed, self.train, self.world),
                                       self.settings.average_checkpoints)
        return str(self.meta.get("fingerprint") or self.meta.get("training", {}).get("fingerprint", ""))

    # -------------------------------------------------------------- protocol: sampling
    @property
    def self_conditioned(self) -> bool:
        """Whether the UNet takes the previous x0 estimate as extra input channels (``self_condition``)."""
        p = int(getattr(self.unet, "patch_size", 1))
        return int(self.unet.config.in_channels) == 2 * self.policy.channels * p * p

    def options(self, options: SampleOptions | None) -> tuple[str, int, float]:
        """(sampler, steps, guidance) with the defaults filled in; ``default`` is the saved (training) DDPM
        scheduler, i.e. the ``ddpm`` sampler."""
        o = options or SampleOptions()
        sampler = o.sampler or "dpmpp"
        sampler = "ddpm" if sampler == "default" else sampler
        steps = o.steps or default_steps(sampler)
        return sampler, steps, DEFAULT_GUIDANCE if o.guidance is None else float(o.guidance)

    def provenance(self, options: SampleOptions) -> dict[str, Any]:
        sampler, steps, guidance = self.options(options)
        bf16 = self.sampling_dtype(options) == torch.bfloat16
        return {"generator": self.kind, "sampler": sampler, "steps": steps, "guidance": guidance,
                "model_sha256": self.meta.get("model_sha256", ""), "precision": "bf16" if bf16 else ""}

    def sampling_dtype(self, options: SampleOptions | None) -> torch.dtype | None:
        """The autocast dtype of ``options.precision`` on this generator's device (None = fp32)."""
        setting = (options or SampleOptions()).precision
        if setting not in ("fp32", "bf16", "auto"):
            raise ValueError(f"sampling precision '{setting}' (choose from fp32, bf16, auto)")
        if setting == "fp32":
            return None
        if setting == "bf16":
            return torch.bfloat16
        native = resolve_precision("auto", self.device, "generation.precision")
        return torch.bfloat16 if native == torch.bfloat16 else None

    def initial_noise(self, seeds: Sequence[int]) -> tuple[torch.Tensor, list[torch.Generator]]:
        """Per-image generators and their initial noise (drawn first from each image's own generator)."""
        shape = (self.policy.channels, self.policy.resolution, self.policy.resolution)
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        noise = torch.stack([torch.randn(shape, generator=g) for g in gens])
        return noise, gens

    @torch.inference_mode()
    def sample(self, labels: Sequence[int], seeds: Sequence[int], options: SampleOptions | None = None, *,
               autocast: torch.dtype | None = None) -> np.ndarray:
        """Images (N, H, W, C) uint8; image i depends only on (labels[i], seeds[i], sources[i]) and the options.
        ``autocast`` (a dtype) overrides ``options.precision``; None = as the options say (fp32 by default)."""
        if self.unet is None:
            raise RuntimeError("the generator is not trained: fit or load it first")
        o = options or SampleOptions()
        if len(labels) != len(seeds):
            raise ValueError("labels and seeds differ in length")
        bad = [int(c) for c in labels if not 0 <= int(c) < len(self.classes)]
        if bad:
            raise ValueError(f"class index {bad[0]} out of range 0..{len(self.classes) - 1}")
        sources = None
        if o.sources is not None and o.strength is not None and o.strength < 1.0:
            sources = np.asarray(o.sources)
            if len(sources) != len(labels):
                raise ValueError("sources and labels differ in length")
        sampler, steps, guidance = self.options(o)
        if autocast is None:
            autocast = self.sampling_dtype(o)
        bs = max(1, int(o.batch_size))
        out = []
        for start in range(0, len(labels), bs):
            src = None if sources is None else sources[start:start + bs]
            out.append(self._sample_batch(list(labels[start:start + bs]), list(seeds[start:start + bs]), sampler,
                                          steps, guidance, autocast, src, o.strength))
        if not out:
            return np.zeros((0, *self.image_shape), np.uint8)
        return np.concatenate(out)

    def _sample_batch(self, labels: list[int], seeds: list[int], sampler: str, steps: int, guidance: float,
                      autocast: torch.dtype | None, sources: np.ndarray | None, strength: float | None) -> np.ndarray:
        sched = make_sampler(sampler, self.scheduler_config)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2 __array__ copy warning inside diffusers
            sched.set_timesteps(steps)
        noise, gens = self.initial_noise(seeds)
        timesteps = sched.timesteps
        if sources is None:
            x = (noise * sched.init_noise_sigma).to(self.device)
        else:  # SDEdit: start from the source noised to `strength` of the schedule (as diffusers' img2img)
            n_init = min(max(int(steps * float(strength or 1.0)), 1), steps)
            begin = (steps - n_init) * sched.order
            timesteps = timesteps[begin:]
            if hasattr(sched, "set_begin_index"):
                sched.set_begin_index(begin)
            x0 = to_model_range(self.policy.pad_uint8(sources)).to(self.device)
            x = sched.add_noise(x0, noise.to(self.device), timesteps[:1].repeat(len(x0)))
        y = torch.tensor(labels, dtype=torch.long, device=self.device)
        use_cfg = guidance != 1.0
        if use_cfg:
            y = torch.cat([y, torch.full_like(y, self.null_class)])
        self.unet.eval()
        step_kwargs: dict[str, Any] = {"generator": gens} if sampler in STOCHASTIC else {}
        ctx = (torch.autocast(self.device.type, dtype=autocast) if autocast is not None
               else torch.autocast(self.device.type, enabled=False))
        prev = torch.zeros_like(x) if self.self_conditioned else None  # the last step's x0 estimate
        for t in timesteps:
            inp = sched.scale_model_input(x, t)
            if prev is not None:
                inp = torch.cat([inp, prev], 1)
            if use_cfg:
                inp = torch.cat([inp, inp])
            tt = torch.full((len(inp),), int(t), dtype=torch.long, device=self.device)
            with ctx:
                eps = self.unet(inp, tt, class_labels=y).sample.float()
            if use_cfg:
                cond, uncond = eps.chunk(2)
                eps = uncond + guidance * (cond - uncond)
            if prev is not None:
                prev = x0_estimate(eps, x, sched.alphas_cumprod[int(t)].expand(len(x)).to(x.device),
                                   self.scheduler_config.get("prediction_type", "epsilon"))
            x = sched.step(eps, t, x, **step_kwargs).prev_sample
        return self.policy.to_uint8(x)

    # -------------------------------------------------------------- protocol: persistence
    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> str:
        """The generator folder (generators/contract.py); returns the UNet's sha256."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(path / "unet", safe_serialization=True)
        self._save_scheduler(path / "scheduler")
        sha = sha256_file(path / WEIGHTS)
        meta = dict(self.meta)
        meta.update(extra or {})
        meta.update({"kind": self.kind, "classes": list(self.classes), "null_class": self.null_class,
                     "image_policy": self.policy.to_dict(), "model_sha256": sha})
        if self.settings is not None:
            settings = self.settings.model_dump(mode="json")
            atomic_write_json(path / contract.CONFIG, {"kind": self.kind, "settings": settings, "seed": self.seed})
        fit = self.last_fit
        if fit is not None and getattr(fit, "losses", None):
            contract.write_training_log(path, list(fit.losses), int(fit.steps) - len(fit.losses) + 1)
        if self.train is not None:
            contract.write_training_images(path, self.train, self.classes)
            meta["training_images"] = contract.TRAINING_IMAGES
            meta["fingerprint"] = self.fingerprint()
        atomic_write_json(path / contract.METADATA, meta)
        self.meta = meta
        return sha

    @classmethod
    def load(cls, path: str | Path, cfg: Config | None = None, device: str | torch.device | None = None
             ) -> DDPMGenerator:
        """Load a saved generator onto ``cfg.device`` (this process's device under accelerate) or ``device``."""
        path = Path(path)
        meta = contract.read_metadata(path, cls.kind)
        weights = path / WEIGHTS
        if not weights.is_file():
            raise DataError(f"{weights} missing: rerun `synthmed finetune`")
        if device is None and cfg is not None:
            from synthmed.generators.accel import make_accelerator

            device = make_accelerator(cfg.device).device
        unet = load_unet(path / "unet", int(meta.get("arch", {}).get("patch_size", 1)))
        sched_cfg = cls._load_scheduler_config(path / "scheduler")
        gen = cls(unet, sched_cfg, list(meta["classes"]), ImagePolicy.from_dict(meta["image_policy"]), meta,
                  device=device or "cpu")
        if cfg is not None:
            gen.settings, gen.seed, gen.device_name = getattr(cfg.generator, cls.kind), int(cfg.seed), cfg.device
        return gen

    # -------------------------------------------------------------- what differs between kinds
    def _save_scheduler(self, folder: Path) -> None:
        from diffusers import DDPMScheduler

        DDPMScheduler.from_config(self.scheduler_config).save_pretrained(folder)

    @classmethod
    def _load_scheduler_config(cls, folder: Path) -> dict[str, Any]:
        from diffusers import DDPMScheduler

        return dict(DDPMScheduler.load_config(folder))


def log_sample_grid(gen: Any, tracker: Any, step: int) -> None:
    """One image per class from the just-trained generator to the tracker (when tracking is on)."""
    if tracker.enabled:
        labels = list(range(len(gen.classes)))
        tracker.log_images({"generator/samples": gen.sample(labels, labels, SampleOptions(steps=10))}, step)
