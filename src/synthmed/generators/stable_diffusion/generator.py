"""``StableDiffusionGenerator``: a fine-tuned Stable Diffusion as a :class:`synthmed.generators.base.Generator`.

``fit`` trains one adapter per job (per-class LoRAs, a joint LoRA or the full UNet) under ``work_dir/<adapter>/``
(checkpoints, ``done.json``; a finished adapter with the same fingerprint is reused). Several processes
(``accelerate launch`` / torchrun) share the work by ``parallel_mode``: per-class adapters round-robin, or every
adapter data-parallel (a joint LoRA, the full UNet, or fewer adapters than processes); docs/multi-gpu.md.
``save`` writes the generator folder (``contract.py``): ``lora/<class>/pytorch_lora_weights.safetensors`` +
``README.md`` (load with plain diffusers: ``StableDiffusionPipeline.from_pretrained(base).load_lora_weights(folder)``)
or ``unet/``, ``README.md``,
``generator_config.json``, ``synthmed.json``, ``training_images.csv``. ``sample`` is text-to-image, or image-to-image
from ``SampleOptions.sources`` ("real guidance", ``strength``).
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from synthmed.data.dataset import ImageSet
from synthmed.errors import ConfigError
from synthmed.generators import contract
from synthmed.generators.base import SampleOptions
from synthmed.generators.stable_diffusion.base import (
    check_lora_stack, check_prompts, derived_seed, float_to_uint8, load_pipeline, pick_device, pick_dtype,
    to_data_geometry, to_sd_image,
)
from synthmed.generators.stable_diffusion.recipes import SDSettings, resolve
from synthmed.generators.stable_diffusion.train import LORA_FILE, AdapterJob, Runtime
from synthmed.io import atomic_write_json, atomic_write_text, pixel_hash, sha256_bytes

if TYPE_CHECKING:
    from synthmed.config import Config
    from synthmed.data.dataset import RealData

JOINT = "joint"
#: settings that may change without invalidating finished adapters / checkpoints (they do not change the weights)
_NOT_FINGERPRINTED = {"guidance", "checkpoint_every", "keep_checkpoints"}


def settings_and_runtime(cfg: Config, classes: list[str] | None = None) -> tuple[SDSettings, Runtime]:
    sd = cfg.generator.stable_diffusion
    device = pick_device(cfg.device)
    rt = Runtime(device=device, dtype=pick_dtype(sd.mixed_precision, device),
                 seed=int(sd.seed if sd.seed is not None else cfg.seed), cache_latents=sd.cache_latents,
                 cache_text=sd.cache_text, gradient_checkpointing=sd.gradient_checkpointing,
                 use_8bit_adam=sd.use_8bit_adam, checkpoint_every=sd.checkpoint_every,
                 keep_checkpoints=sd.keep_checkpoints, parallel=sd.parallel)
    return resolve(sd, classes), rt


def select_training(train: ImageSet, classes: list[str], shots: int | None, seed: int) -> ImageSet:
    """At most ``shots`` images per class (seeded pick, original order kept); all of them when ``shots`` is None."""
    keep: list[int] = []
    for c in range(len(classes)):
        idx = np.flatnonzero(train.labels == c)
        if shots is not None and len(idx) > shots:
            rng = np.random.default_rng(derived_seed(seed, "shots", classes[c]) % (2**32))
            idx = np.sort(rng.choice(idx, size=shots, replace=False))
        keep.extend(idx.tolist())
    return train.subset(sorted(keep))


class StableDiffusionGenerator:
    """Base SD + the recipe's adapters; the pipeline is loaded on first use."""

    kind: ClassVar[str] = "stable_diffusion"
    supports_guidance: ClassVar[bool] = True  # img2img from SampleOptions.sources / strength

    def __init__(self, cfg: Config, classes: list[str], st: SDSettings, rt: Runtime,
                 meta: dict[str, Any] | None = None) -> None:
        self.cfg, self.sd, self.st, self.rt = cfg, cfg.generator.stable_diffusion, st, rt
        self.classes = list(classes)
        self.meta: dict[str, Any] = dict(meta or {})
        self.prompts: dict[str, str] = dict(self.meta.get("prompts") or {c: st.prompt(c, cfg.data) for c in self.classes})
        self.train: ImageSet | None = None
        self.chosen: ImageSet | None = None
        self.data_info: dict[str, Any] = dict(self.meta.get("data") or {})
        self.summaries: dict[str, dict[str, Any]] = {}
        self.path: Path | None = None
        self._pipe: Any = None
        self._i2i: Any = None
        self._active: str | None = None
        self._sampler: str | None = None

    # -------------------------------------------------------------- construction, training
    @classmethod
    def from_config(cls, cfg: Config, data: RealData) -> StableDiffusionGenerator:
        st, rt = settings_and_runtime(cfg, list(data.classes))
        gen = cls(cfg, list(data.classes), st, rt)
        gen.data_info = {"source": data.source, "image_policy": data.image_policy, "size": list(data.size),
                         "channels": data.channels}
        gen._use(data.train)
        return gen

    def _use(self, train: ImageSet) -> None:
        self.train = train
        self.chosen = select_training(train, self.classes, self.st.shots, self.rt.seed)

    def adapter_of(self, class_name: str) -> str:
        return (class_name if self.st.per_class else JOINT) if self.st.lora else "unet"

    def batch_group(self, label: int) -> str:
        """Batches hold one adapter (the writer groups the plan by this key)."""
        return self.adapter_of(self.classes[int(label)])

    def _jobs(self, work_dir: Path) -> list[AdapterJob]:
        chosen = self.chosen
        assert chosen is not None
        if self.st.per_class:
            jobs = []
            for c, name in enumerate(self.classes):
                sub = chosen.subset(np.flatnonzero(chosen.labels == c))
                if len(sub) == 0:
                    raise ConfigError(f"class '{name}' has no training images to fine-tune its LoRA on")
                jobs.append(AdapterJob(name, sub.images, [self.prompts[name]] * len(sub), work_dir / name / "adapter",
                                       work_dir / name))
            return jobs
        name = JOINT if self.st.lora else "unet"
        return [AdapterJob(name, chosen.images, [self.prompts[self.classes[int(y)]] for y in chosen.labels],
                           work_dir / name / "adapter", work_dir / name)]

    def _job_fingerprint(self, job: AdapterJob) -> str:
        settings = {k: v for k, v in self.st.as_dict().items() if k not in _NOT_FINGERPRINTED}
        blob = json.dumps({"base": self.sd.base, "revision": self.sd.revision, "variant": self.sd.variant,
                           "settings": settings, "seed": self.rt.seed, "prompts": job.prompts,
                           "images": [pixel_hash(a) for a in job.images], "dtype": str(self.rt.dtype)},
                          sort_keys=True, default=str)
        return sha256_bytes(blob.encode())

    def fingerprint(self) -> str:
        if self.chosen is None:
            return str(self.meta.get("fingerprint", ""))
        fps = {job.name: self._job_fingerprint(job) for job in self._jobs(Path("."))}
        return sha256_bytes(json.dumps(fps, sort_keys=True).encode())

    def fit(self, train: ImageSet, work_dir: Path, *, progress: bool = True,
            stop_after: int | None = None) -> StableDiffusionGenerator:
        from synthmed.generators.accel import DataParallel, processes
        from synthmed.generators.stable_diffusion.train import train_adapter

        self._use(train)
        if self.st.lora:
            check_lora_stack()
        base = load_pipeline(self.sd.base, self.cfg.is_offline, self.rt.dtype, self.sd.revision, self.sd.variant)

        def load() -> Any:
            """A pipeline with fresh copies of the trainable parts (UNet, text encoder); VAE and tokenizer shared."""
            return type(base)(**{**base.components, "unet": copy.deepcopy(base.unet),
                                 "text_encoder": copy.deepcopy(base.text_encoder)}, requires_safety_checker=False)

        self._check_prompts(base.tokenizer)
        from synthmed.tracking import tracker_for

        rank, world, barrier = processes(self.cfg.device)
        jobs = self._jobs(Path(work_dir))
        mode = parallel_mode(self.rt.parallel, len(jobs), world)
        # adapters: whole adapters round-robin over the processes, each trained alone (bit-identical to one process);
        # data: every process takes its share of every batch of every adapter (DDP)
        mine, dp = (jobs[rank::world], DataParallel()) if mode == "adapters" else (jobs, DataParallel(rank, world))
        kind = self.cfg.tracking if rank == 0 else "none"
        with tracker_for(kind, Path(work_dir).parent, "generator",
                         {"generator": self.cfg.generator.stable_diffusion.model_dump(mode="json")}) as tracker:
            for job in mine:
                fp = self._job_fingerprint(job)
                dp.barrier()  # everyone sees the same finished / unfinished state
                if _finished(job, fp) is None:
                    dp.barrier()
                    fpf = job.work_dir / "fingerprint.txt"
                    if dp.rank == 0:
                        if fpf.is_file() and fpf.read_text().strip() != fp:
                            shutil.rmtree(job.work_dir)  # other settings or images: old checkpoints must not resume
                        atomic_write_text(fpf, fp)
                    train_adapter(load, self.st, self.rt, job, progress=progress and rank == 0,
                                  stop_after=stop_after, tracker=tracker, dp=dp)
        barrier()
        self.summaries = {job.name: json.loads((job.work_dir / "done.json").read_text()) for job in jobs}
        return self

    def _check_prompts(self, tokenizer: Any) -> None:
        check_prompts(tokenizer, {f"class {c}": p for c, p in self.prompts.items()})
        if self.cfg.generation.negative_prompt:
            check_prompts(tokenizer, {"generation.negative_prompt": self.cfg.generation.negative_prompt})

    # -------------------------------------------------------------- persistence
    def save(self, path: Path) -> None:
        from synthmed.generators.stable_diffusion.card import model_card

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        chosen = self.chosen
        assert chosen is not None and self.summaries, "fit before save"
        counts = chosen.counts(len(self.classes))
        source = str(self.data_info.get("source", ""))
        adapters = {}
        for name, s in self.summaries.items():
            src = Path(s["file"])
            if self.st.lora:
                dst = path / "lora" / name
                dst.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst / LORA_FILE)
                atomic_write_text(dst / "README.md", model_card(self.sd, self.st, source, self.classes, counts,
                                                                {name: s}, name, self.prompts))
            else:
                dst = path / "unet"
                shutil.copytree(src.parent, dst)
            adapters[name] = {**{k: v for k, v in s.items() if k != "file"}, "path": dst.relative_to(path).as_posix()}
        contract.write_training_images(path, chosen, self.classes)
        atomic_write_json(path / contract.CONFIG, {"kind": self.kind, "settings": self.sd.model_dump(mode="json"),
                                                    "seed": self.rt.seed})
        self.meta = {
            "kind": self.kind, "base": self.sd.base, "revision": self.sd.revision, "variant": self.sd.variant,
            "recipe": self.st.recipe, "settings": self.st.as_dict(), "classes": self.classes, "prompts": self.prompts,
            "seed": self.rt.seed, "device": str(self.rt.device), "dtype": str(self.rt.dtype).replace("torch.", ""),
            "data": {**self.data_info, "images_per_class": counts}, "adapters": adapters,
            "training_images": contract.TRAINING_IMAGES, "fingerprint": self.fingerprint(),
        }
        atomic_write_json(path / contract.METADATA, self.meta)
        atomic_write_text(path / "README.md", model_card(self.sd, self.st, source, self.classes, counts,
                                                         self.summaries, None, self.prompts))

    @classmethod
    def load(cls, path: Path, cfg: Config) -> StableDiffusionGenerator:
        meta = contract.read_metadata(path, cls.kind)
        st, rt = settings_and_runtime(cfg)
        saved = meta["settings"]
        st.lora, st.per_class, st.resolution = saved["lora"], saved["per_class"], saved["resolution"]
        if st.lora:
            check_lora_stack()
        gen = cls(cfg, list(meta["classes"]), st, rt, meta)
        gen.path = Path(path)
        return gen

    # -------------------------------------------------------------- sampling
    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        size, ch = self.data_info.get("size"), self.data_info.get("channels")
        return None if size is None or ch is None else (int(size[0]), int(size[1]), int(ch))

    def options(self, options: SampleOptions | None) -> tuple[str, int, float]:
        o = options or SampleOptions()
        sampler = o.sampler or "dpmpp"
        steps = o.steps or {"default": 50, "dpmpp": 25, "dpmpp_sde": 25, "ddim": 50, "ddpm": 1000}[sampler]
        return sampler, steps, float(self.st.guidance if o.guidance is None else o.guidance)

    def provenance(self, options: SampleOptions) -> dict[str, Any]:
        sampler, steps, guidance = self.options(options)
        adapters = [self.adapter_of(c) for c in self.classes]
        return {"generator": self.kind, "sampler": sampler, "steps": steps, "guidance": guidance,
                "model_sha256": [self.meta["adapters"][a]["sha256"] for a in adapters],
                "prompt": [self.prompts[c] for c in self.classes],
                "adapter": [a if self.st.lora else "" for a in adapters]}

    def _pipeline(self, sampler: str) -> Any:
        from synthmed.generators.stable_diffusion.sampling import load_full_unet, set_sampler

        if self._pipe is None:
            if self.path is None:
                raise RuntimeError("sample needs a saved generator: save and load it first")
            pipe = load_pipeline(self.sd.base, self.cfg.is_offline, self.rt.dtype, self.sd.revision, self.sd.variant)
            self._check_prompts(pipe.tokenizer)
            if not self.st.lora:
                load_full_unet(pipe, self.path / "unet", str(self.sd.base), self.rt.dtype)
            pipe.to(self.rt.device)
            pipe.set_progress_bar_config(disable=True)
            self._pipe = pipe
        if self._sampler != sampler:
            set_sampler(self._pipe, sampler)
            self._i2i, self._sampler = None, sampler
        return self._pipe

    def _adapter(self, pipe: Any, name: str) -> None:
        from synthmed.generators.stable_diffusion.sampling import load_adapter

        if not self.st.lora or self._active == name:
            return
        if self._active is not None:
            pipe.unload_lora_weights()
        assert self.path is not None
        load_adapter(pipe, self.path / "lora" / name, name, str(self.sd.base), self.meta.get("base"))
        self._active = name

    def sample(self, labels: Sequence[int], seeds: Sequence[int], options: SampleOptions | None = None) -> np.ndarray:
        """Images (N, H, W, C) uint8 at the data's geometry, sampled per adapter in batches of ``batch_size``."""
        import torch
        from diffusers import StableDiffusionImg2ImgPipeline

        o = options or SampleOptions()
        if len(labels) != len(seeds):
            raise ValueError("labels and seeds differ in length")
        shape = self.image_shape
        if shape is None:
            raise ConfigError(f"{self.path}: no image size in {contract.METADATA}; rerun `synthmed finetune`")
        sampler, steps, guidance = self.options(o)
        pipe = self._pipeline(sampler)
        guided = o.sources is not None and o.strength is not None
        if guided and self._i2i is None:
            self._i2i = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
            self._i2i.set_progress_bar_config(disable=True)
        negative = o.extra.get("negative_prompt") if o.extra else None
        out = np.zeros((len(labels), *shape), np.uint8)
        order = list(dict.fromkeys(self.batch_group(y) for y in labels))
        for name in order:
            self._adapter(pipe, name)
            idx = [i for i, y in enumerate(labels) if self.batch_group(y) == name]
            for start in range(0, len(idx), max(1, o.batch_size)):
                part = idx[start:start + o.batch_size]
                kw: dict[str, Any] = dict(
                    prompt=[self.prompts[self.classes[int(labels[i])]] for i in part], num_inference_steps=steps,
                    guidance_scale=guidance, negative_prompt=[negative] * len(part) if negative else None,
                    output_type="np", generator=[torch.Generator("cpu").manual_seed(int(seeds[i])) for i in part])
                with torch.inference_mode():
                    if not guided:
                        imgs = pipe(height=self.st.resolution, width=self.st.resolution, **kw).images
                    else:
                        srcs = [to_sd_image(o.sources[i], self.st.resolution) for i in part]  # type: ignore[index]
                        imgs = self._i2i(image=srcs, strength=o.strength, **kw).images
                for i, a in zip(part, float_to_uint8(np.asarray(imgs))):
                    out[i] = to_data_geometry(a, shape[:2], shape[2])
        return out


def parallel_mode(setting: str, n_adapters: int, world: int) -> str:
    """How several processes share the adapters: ``adapters`` (round-robin, each adapter on one process) or ``data``
    (every adapter data-parallel over all processes). ``auto``: round-robin when there are at least as many adapters
    as processes (per-class LoRAs: no communication, full batches, bit-identical to one process), else data."""
    if setting not in ("auto", "data", "adapters"):
        raise ConfigError(f"generator.stable_diffusion.parallel must be auto, data or adapters, got '{setting}'")
    if world == 1:
        return "adapters"
    if setting == "auto":
        return "adapters" if n_adapters >= world else "data"
    return setting


def _finished(job: AdapterJob, fp: str) -> dict[str, Any] | None:
    """The summary of a finished adapter trained with fingerprint ``fp`` whose weights file is intact, else None."""
    from synthmed.io import sha256_file

    done, fpf = job.work_dir / "done.json", job.work_dir / "fingerprint.txt"
    if not (done.is_file() and fpf.is_file()) or fpf.read_text().strip() != fp:
        return None
    summary = json.loads(done.read_text())
    path = Path(summary.get("file", ""))
    if not path.is_file() or sha256_file(path) != summary.get("sha256"):
        return None
    return summary
