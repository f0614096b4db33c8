"""Small training runs for the multi-process tests (``tests/test_multiprocess.py``): the same function runs in one
process (the reference) or under ``torchrun --nproc_per_node N`` / ``accelerate launch`` (data parallel), and rank 0
writes what the test compares (weights as safetensors, losses as JSON)::

    torchrun --nproc_per_node 2 -m synthmed.testing.multiprocess ddpm OUT
    torchrun --nproc_per_node 2 -m synthmed.testing.multiprocess sd OUT --base TINY_SD --data FOLDER
    torchrun --nproc_per_node 2 -m synthmed.testing.multiprocess classifier OUT
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

#: the DDPM run: a tiny UNet on 2 phantom classes at 16 px; batch 6 does not divide by 4 processes on purpose
#: average_checkpoints 2: the final weights average both checkpoints (3 and 6), which every rank reads after rank 0
#: committed them
DDPM_SETTINGS = {"steps": 6, "batch_size": 6, "preset": "XS", "checkpoint_every": 3, "warmup_steps": 1,
                 "mixed_precision": "no", "lr": 1e-3, "hflip": True, "average_checkpoints": 2}


def ddpm(out: Path, stop_after: int | None = None) -> dict[str, object]:
    """Train the tiny DDPM (``DDPM_SETTINGS``) into ``out/work``; rank 0 writes ``out/ddpm.safetensors`` (the final
    weights: the mean EMA of both checkpoints) and ``out/ddpm.json`` (losses, world size, averaged steps)."""
    from synthmed.data.dataset import ImageSet
    from synthmed.data.phantom import make_phantom
    from synthmed.generators.accel import processes
    from synthmed.generators.checkpoints import save_tensors
    from synthmed.generators.config import DDPMConfig
    from synthmed.generators.ddpm.train import train_ddpm

    images, labels, classes = make_phantom(2, 6, 16, seed=3)
    train = ImageSet(images, labels, [f"p{i}" for i in range(len(labels))])
    cfg = DDPMConfig(**DDPM_SETTINGS)
    res = train_ddpm(cfg, train, classes, out / "work", seed=5, device="cpu", progress=False, stop_after=stop_after)
    facts = {"losses": res.losses, "world": res.generator.world, "steps": res.steps, "resumed_from": res.resumed_from,
             "averaged_steps": res.generator.meta["training"].get("averaged_steps")}
    if processes("cpu")[0] == 0:
        save_tensors(out / "ddpm.safetensors", res.generator.unet.state_dict())
        (out / "ddpm.json").write_text(json.dumps(facts))
    return facts


def sd_overrides(base: Path, data: Path, **extra: object) -> list[str]:
    """A fast Stable Diffusion run on the tiny SD at 32 px, 2 shots per class."""
    items: dict[str, object] = {
        "offline": True, "device": "cpu", "seed": 1,
        "data.source": f"folder:{data}", "data.size": 32, "data.shots": 2,
        "generator.kind": "stable_diffusion", "generator.stable_diffusion.base": str(base),
        "generator.stable_diffusion.resolution": 32, "generator.stable_diffusion.rank": 4,
        "generator.stable_diffusion.alpha": 4, "generator.stable_diffusion.lr": 1e-3,
        "generator.stable_diffusion.warmup_steps": 0, "generator.stable_diffusion.batch_size": 3,
        "generator.stable_diffusion.max_steps": 4, "generator.stable_diffusion.checkpoint_every": 2,
        "generation.n_per_class": 2, "generation.steps": 3, "generation.batch_size": 2,
    }
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]


def sd(out: Path, base: Path, data: Path) -> None:
    """Three runs under ``out``: ``perclass`` (per-class LoRAs, data parallel), ``joint`` (one LoRA, data parallel,
    then a 2-image-per-class synthetic set, sharded) and ``unet`` (full-UNet fine-tune, data parallel)."""
    from synthmed.config import load_config
    from synthmed.data.load import load_data
    from synthmed.generators import stage
    from synthmed.generators.stable_diffusion import StableDiffusionGenerator
    from synthmed.generators.accel import processes
    from synthmed.layout import RunLayout

    runs = {"perclass": {"generator.stable_diffusion.recipe": "cytodiff", "generator.stable_diffusion.batch_size": 2},
            "joint": {"generator.stable_diffusion.recipe": "datadream_joint"},
            "unet": {"generator.stable_diffusion.recipe": "full_unet", "generator.stable_diffusion.lr": 1e-4}}
    for name, extra in runs.items():
        cfg = load_config(None, sd_overrides(base, data, **extra))
        layout = RunLayout(out / name)
        real = load_data(cfg.data, layout.root)
        gen = StableDiffusionGenerator.from_config(cfg, real)
        gen.rt.parallel = "data"  # also for the per-class LoRAs (auto would split them round-robin)
        gen.fit(real.train, layout.generator_work, progress=False)
        rank, _, barrier = processes("cpu")
        if rank == 0:
            gen.save(layout.generator)
        barrier()
        if name == "joint":
            stage.generate(cfg, layout.root, real, progress=False)


def classifier(out: Path) -> None:
    """synthmed's small two-layer CNN (``cnn``) on 2 phantom classes, 2 epochs of batch 7 (uneven shares, a last
    partial batch); rank 0 writes ``out/clf/`` (weights, ``classifier.json`` with the per-epoch history)."""
    from synthmed.classifiers.train import fit_classifier
    from synthmed.config import load_config
    from synthmed.data.load import load_data

    cfg = load_config(None, ["device=cpu", "data.source=phantom:blood", "data.phantom.n_classes=2",
                             "data.phantom.n_per_class=20", "data.phantom.size=28", "classifier.model=cnn",
                             "classifier.epochs=2", "classifier.batch_size=7", "classifier.lr=0.01"])
    data = load_data(cfg.data, echo_warnings=False)
    fit_classifier(cfg, data.train, data.val, data.n_classes, seed=2, out_dir=out / "clf", progress=False)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Small training runs for the multi-process tests.")
    ap.add_argument("task", choices=["ddpm", "sd", "classifier"])
    ap.add_argument("out", type=Path)
    ap.add_argument("--base", type=Path, help="tiny SD folder (sd)")
    ap.add_argument("--data", type=Path, help="class-per-folder images (sd)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if args.task == "ddpm":
        ddpm(args.out)
    elif args.task == "classifier":
        classifier(args.out)
    else:
        sd(args.out, args.base, args.data)


if __name__ == "__main__":
    main()
