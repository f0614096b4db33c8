"""Quality per CPU-minute, DDPM vs EDM: Inception FID on BloodMNIST at fixed minutes of generator training.

Each kind trains one run (one cosine schedule of ``--train-steps``) on the full BloodMNIST train split, with a
checkpoint every ``--every`` steps and the training wall time recorded at each; training stops once it has run the
largest of ``--marks`` minutes. For each mark the checkpoint nearest to it is sampled (EMA weights, ``--n``
images with the labels of ``--n`` real test images, per-image seeds 0..n-1, DPM-Solver++) and scored against those
real test images with the FID Inception (``../shared/weights``), with precision / recall / density / coverage
(k = 5) in the same feature space to tell fidelity from diversity. Everything except the kind is the same: preset,
batch, learning rate, warm-up, EMA, flips. Resumable: rerun the same command (points live in ``--work``).

    python benchmarks/bench_quality_per_minute.py --kinds ddpm,edm --preset S --marks 10,20,30,45 --n 1000

A screen of one change trains only part of a schedule and scores that checkpoint, e.g. ``--train-steps 14500
--at-step 4000 --set snr_gamma=2 --phase train``, then ``--phase score --ref val --first-seed 5000``.
``--average 2`` samples the mean of the EMA weights of the last two checkpoints up to the scored one. On a GPU
machine (no Inception weights there): ``--device cuda --phase train``, then ``--phase sample`` keeps the images in
WORK/samples, and ``--phase score`` here scores them (``benchmarks/gpu_quality_curve.sh`` does the GPU side).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ddpm_samplers import CLASSES, blood, cached, fid, inception_features  # noqa: E402


def settings(kind: str, args: argparse.Namespace):
    """The generator config of ``kind``: identical training settings, the formulation differs."""
    from synthmed.generators.config import DDPMConfig
    from synthmed.generators.edm.config import EDMConfig

    arch = {}
    if args.channels:  # a custom UNet between the presets, e.g. --channels 24,48
        arch = dict(preset="custom", block_out_channels=[int(c) for c in args.channels.split(",")],
                    layers_per_block=args.layers,
                    attention_levels=[int(a) for a in args.attention.split(",") if a])
    if getattr(args, "patch", 1) > 1:
        arch["patch_size"] = args.patch
    common = dict(**({"preset": args.preset} | arch), steps=args.train_steps, batch_size=args.batch, lr=args.lr,
                  warmup_steps=min(100, args.train_steps // 10), checkpoint_every=args.every, keep_checkpoints=1000,
                  hflip=True, vflip=True, ema_decay=args.ema_decay, mixed_precision="no")
    extra = overrides(args)
    if kind == "ddpm":
        return DDPMConfig(**({"prediction_type": "v_prediction", "snr_gamma": 5.0} | common | extra))
    return EDMConfig(**(common | extra))


def overrides(args: argparse.Namespace) -> dict:
    """``--set field=value`` pairs (YAML values) for the generator config, e.g. ``--set label_dropout=0``."""
    import yaml

    pairs = [s.split("=", 1) for s in getattr(args, "set", None) or []]
    bad = [s for s, *rest in pairs if not rest]
    if bad:
        raise SystemExit(f"--set {bad[0]}: expected field=value")
    return {k: yaml.safe_load(v) for k, v in pairs}


def train_until(kind: str, cfg, work: Path, step: int | None, x, y, device: str = "cpu", seed: int = 0,
                tracker=None) -> None:
    """Train (resuming from the last checkpoint) up to ``step`` (None: the schedule's end) on ``device``."""
    from synthmed.data.dataset import ImageSet
    from synthmed.generators.checkpoints import SimulatedInterrupt

    data = ImageSet(x, y, [f"train/{i}" for i in range(len(y))])
    if kind == "ddpm":
        from synthmed.generators.ddpm.train import train_ddpm as fn
    else:
        from synthmed.generators.edm.train import train_edm as fn
    try:
        fn(cfg, data, CLASSES, work, seed=seed, device=device, stop_after=step, progress=False, tracker=tracker)
    except SimulatedInterrupt:
        pass


def generator_at(kind: str, cfg, work: Path, step: int, average: int = 1):
    """The EMA weights of checkpoint ``step`` as a generator of ``kind`` (28 px, padded to 32); ``average`` > 1: the
    mean of the EMA weights of the ``average`` checkpoints ending at ``step`` (a longer average after the fact)."""
    from diffusers import DDPMScheduler

    from synthmed.generators.checkpoints import list_checkpoints, mean_ema
    from synthmed.generators.ddpm.generator import DDPMGenerator
    from synthmed.generators.ddpm.model import ImagePolicy, build_unet, downsampling, resolve_arch
    from synthmed.generators.edm import precond
    from synthmed.generators.edm.generator import EDMGenerator

    arch = resolve_arch(cfg)
    unet = build_unet(arch, 3, len(CLASSES), 32)
    found = [(s, path) for s, path in list_checkpoints(work / "checkpoints") if s <= step][-average:]
    if not found or found[-1][0] != step or len(found) < average:
        raise SystemExit(f"checkpoint {step}: needs {average} checkpoints up to it, found {[s for s, _ in found]}")
    ema = mean_ema([path for _, path in found])  # the arithmetic of generator.ddpm.average_checkpoints
    missing, _ = unet.load_state_dict(ema, strict=False)
    if [m for m in missing if m in dict(unet.named_parameters())]:
        raise SystemExit(f"checkpoint {step}: parameters missing from the EMA weights")
    policy = ImagePolicy.for_data(28, 28, 3, cfg, downsampling(arch))
    if kind == "ddpm":
        sched = dict(DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                                   prediction_type=cfg.prediction_type).config)
        return DDPMGenerator(unet.eval(), sched, CLASSES, policy)
    sched = precond.scheduler_config(cfg.sigma_data, cfg.sigma_min, cfg.sigma_max, cfg.rho)
    return EDMGenerator(unet.eval(), sched, CLASSES, policy)


class CheckpointClock:
    """A tracker for ``train_ddpm`` / ``train_edm`` that records wall and CPU minutes at every checkpoint step (taken
    before that checkpoint is written; the write counts towards the next point)."""

    def __init__(self, every: int, end: int, points: dict, log: Path) -> None:
        self.every, self.end, self.points, self.path = every, end, points, log
        self.t0, self.c0 = time.time(), time.process_time()

    def log(self, values: dict, step: int) -> None:  # the Tracker interface the training loops call
        if step % self.every == 0 or step == self.end:
            self.points[str(step)] = {"minutes": (time.time() - self.t0) / 60,
                                      "cpu_minutes": (time.process_time() - self.c0) / 60}
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.points, indent=1))
            tmp.replace(self.path)
            print(f"step {step}: {self.points[str(step)]['minutes']:.1f} min", flush=True)


def train_phase(kind: str, cfg, work: Path, points: dict, log: Path, stop_minutes: float, x, y,
                stop_step: int | None = None, device: str = "cpu", seed: int = 0, one_go: bool = False) -> None:
    """Train checkpoint by checkpoint, recording wall and CPU minutes at each, until ``stop_minutes`` (or, for a
    screen, until checkpoint ``stop_step`` of the schedule). ``one_go``: one uninterrupted call to the end of the
    schedule, as ``synthmed finetune`` trains (no resume per checkpoint), timed at each checkpoint by a tracker."""
    from synthmed.generators.checkpoints import checkpoint_steps, list_checkpoints

    if one_go:  # timed from the start of the schedule: not resumable
        if points or list_checkpoints(work / "checkpoints"):
            raise SystemExit(f"--one-go: {work} already holds a run (a one-go timing cannot resume); use a fresh "
                             "--work")
        if stop_step is not None:
            raise SystemExit("--one-go trains the whole schedule: drop --at-step from the train phase")
        train_until(kind, cfg, work, None, x, y, device, seed, CheckpointClock(cfg.checkpoint_every, cfg.steps,
                                                                                 points, log))
        return
    for step in checkpoint_steps(cfg.steps, cfg.checkpoint_every):  # the schedule's end is always a point
        if str(step) in points:
            continue
        if stop_step is not None and step > stop_step:
            return
        done = [p["minutes"] for p in points.values()]
        if stop_step is None and done and max(done) >= stop_minutes:
            return
        prev = max(done, default=0.0), max((p["cpu_minutes"] for p in points.values()), default=0.0)
        t0, c0 = time.time(), time.process_time()
        train_until(kind, cfg, work, step, x, y, device, seed)
        points[str(step)] = {"minutes": prev[0] + (time.time() - t0) / 60,
                             "cpu_minutes": prev[1] + (time.process_time() - c0) / 60}
        log.write_text(json.dumps(points, indent=1))
        print(f"{kind} step {step}: {points[str(step)]['minutes']:.1f} min", flush=True)


def scored_steps(points: dict, marks: list[float], schedule_end: int, at_step: int | None) -> list[tuple[float, int]]:
    """(mark in minutes, checkpoint step) pairs to score: the checkpoint nearest each mark (a schedule that ended
    before a mark is scored at its end), or only checkpoint ``at_step`` for a screen."""
    if at_step is not None:
        if str(at_step) not in points:
            print(f"no checkpoint at step {at_step}", flush=True)
            return []
        return [(points[str(at_step)]["minutes"], at_step)]
    pairs = []
    for mark in marks:
        if not points or (max(q["minutes"] for q in points.values()) < mark and str(schedule_end) not in points):
            print(f"training has not reached {mark} min", flush=True)
            continue
        pairs.append((mark, min((int(s) for s in points), key=lambda s: abs(points[str(s)]["minutes"] - mark))))
    return pairs


def main() -> None:
    import numpy as np
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", default="ddpm,edm")
    p.add_argument("--preset", default="S")
    p.add_argument("--train-steps", type=int, default=2000, help="length of the cosine schedule")
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--channels", default="", help="custom UNet channels per level (overrides --preset)")
    p.add_argument("--layers", type=int, default=1, help="layers per block of the custom UNet")
    p.add_argument("--attention", default="", help="levels of the custom UNet with self-attention, e.g. 2")
    p.add_argument("--patch", type=int, default=1, choices=[1, 2, 4],
                   help="pixel-unshuffle patch size of the UNet (2: the UNet runs at 16x16 on 12 channels)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any other generator config field, e.g. --set label_dropout=0 (repeatable; names the work dir)")
    p.add_argument("--marks", default="10,20,30,45", help="training minutes at which to score")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--guidance", type=float, default=1.5)
    p.add_argument("--sampler-steps", type=int, default=20)
    p.add_argument("--sampler", default="dpmpp", choices=["dpmpp", "dpmpp_sde", "ddim", "ddpm"])
    p.add_argument("--strength", type=float, default=None,
                   help="real-image guidance (SDEdit): image i starts from a random training image of its class "
                        "noised to this strength; what the pipeline's guided sets look like, not the generator alone")
    p.add_argument("--ref", default="test", choices=["val", "test"],
                   help="real images scored against: choose guidance and sampler steps on val, report on test")
    p.add_argument("--at-step", type=int, default=None,
                   help="a screen: train only up to this checkpoint of the schedule and score it (instead of --marks)")
    p.add_argument("--average", type=int, default=1,
                   help="sample the mean of the EMA weights of this many checkpoints ending at the scored one")
    p.add_argument("--sample-bf16", action="store_true",
                   help="sample under bf16 autocast (fast only on CPUs with native bf16), not fp32")
    p.add_argument("--first-seed", type=int, default=0,
                   help="per-image sampling seeds first..first+n-1 (another seed set measures the sampling noise)")
    p.add_argument("--seed", type=int, default=0, help="training seed (the work folder is named after it unless 0)")
    p.add_argument("--one-go", action="store_true",
                   help="train the whole schedule in one call (as synthmed finetune does), timed at each checkpoint")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--phase", default="all", choices=["all", "train", "sample", "score"],
                   help="sample: sample the scored checkpoints and keep the images in WORK/samples, without FID (on a "
                        "GPU machine, which lacks the Inception weights); score then scores kept images as they are")
    p.add_argument("--device", default="cpu", help="train and sample on this device (cuda on a GPU machine)")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_quality_per_minute"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    marks = [float(m) for m in args.marks.split(",")]
    if args.average < 1:
        raise SystemExit(f"--average {args.average}: expected a number of checkpoints >= 1")
    if args.at_step is not None and args.at_step % args.every and args.at_step != args.train_steps:
        raise SystemExit(f"--at-step {args.at_step}: not a checkpoint (a multiple of --every {args.every})")
    xr, yr = blood(args.ref, args.n, seed=1)
    xt, yt = blood("train")
    real = None
    rows = []
    for kind in args.kinds.split(","):
        cfg = settings(kind, args)
        name = f"c{args.channels.replace(',', '-')}l{args.layers}" if args.channels else args.preset
        name += f"a{args.attention.replace(',', '-')}" if args.channels and args.attention else ""
        name += f"p{args.patch}" if args.patch > 1 else ""
        name += "".join(f"-{k}{v}" for k, v in overrides(args).items())
        work = args.work / f"{kind}-{name}-b{args.batch}-lr{args.lr}-s{args.train_steps}"
        work = work.with_name(work.name + (f"-seed{args.seed}" if args.seed else ""))
        work.mkdir(parents=True, exist_ok=True)
        log = work / "points.json"
        points = json.loads(log.read_text()) if log.is_file() else {}
        if args.phase in ("all", "train"):
            train_phase(kind, cfg, work, points, log, max(marks), xt, yt, args.at_step, args.device, args.seed,
                        args.one_go)
        if args.phase == "train":
            continue
        for mark, step in scored_steps(points, marks, cfg.steps, args.at_step):
            pt = points[str(step)]
            key = f"fid_n{args.n}_g{args.guidance}_k{args.sampler_steps}" + ("_val" if args.ref == "val" else "")
            key += "" if args.sampler == "dpmpp" else f"_{args.sampler}"
            key += "" if args.strength is None else f"_guided{args.strength}"
            key += f"_seed{args.first_seed}" if args.first_seed else ""
            key += f"_avg{args.average}" if args.average > 1 else ""
            key += "_bf16" if args.sample_bf16 else ""
            kept = work / "samples" / f"{key}_step{step}.npy"  # images sampled by --phase sample (on a GPU)
            if args.phase == "sample" and kept.is_file():
                continue
            if key not in pt:
                from synthmed.generators.base import SampleOptions
                from synthmed.metrics.fidelity import prdc

                t0 = time.time()
                sources = None
                if args.strength is not None:  # one training image of the same class per image, drawn with seed 2
                    rng = np.random.default_rng(2)
                    sources = np.stack([xt[rng.choice(np.flatnonzero(yt == c))] for c in yr])
                if kept.is_file():
                    imgs = np.load(kept)
                else:
                    imgs = generator_at(kind, cfg, work, step, args.average).to(args.device).sample(
                        yr.tolist(), list(range(args.first_seed, args.first_seed + len(yr))),
                        SampleOptions(args.sampler, args.sampler_steps, args.guidance, batch_size=100,
                                      sources=sources, strength=args.strength,
                                      precision="bf16" if args.sample_bf16 else "fp32"))
                if args.phase == "sample":
                    kept.parent.mkdir(exist_ok=True)
                    tmp = kept.with_suffix(f".{os.getpid()}.tmp.npy")
                    np.save(tmp, imgs)
                    tmp.replace(kept)
                    print(f"{kind} step {step}: sampled {key} in {time.time() - t0:.1f} s", flush=True)
                    continue
                sample_min = (time.time() - t0) / 60
                if real is None:
                    real = cached(args.work / f"real_{args.ref}_{args.n}.npy", lambda: inception_features(xr))
                feats = inception_features(imgs)
                pt[key] = fid(real, feats)
                pt[key + "_prdc"] = prdc(real, feats, k=5)  # precision/recall: fidelity vs diversity
                if not kept.is_file():  # sampled here (not loaded): its time means something
                    pt["sample_minutes"] = sample_min
                print(f"{kind} step {step} ({args.ref}, guidance {args.guidance}, {args.sampler} "
                      f"{args.sampler_steps}, seeds from {args.first_seed}): FID {pt[key]:.2f}, "
                      f"{pt[key + '_prdc']}", flush=True)
                # merge into the file as it is now: a val and a test scoring of the same run may run side by side
                on_disk = json.loads(log.read_text()) if log.is_file() else {}
                on_disk.setdefault(str(step), {}).update(pt)
                tmp = log.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(on_disk, indent=1))
                tmp.replace(log)
            rows.append((kind, mark, step, pt["minutes"], pt["cpu_minutes"], pt[key]))
            print(f"| {kind} | {mark:g} | {step} | {pt['minutes']:.1f} | {pt['cpu_minutes']:.1f} | {pt[key]:.1f} |",
                  flush=True)
    print(f"\n{args.channels or args.preset}, batch {args.batch}, lr {args.lr}, {args.sampler} {args.sampler_steps} "
          f"steps, guidance {args.guidance}, FID at n = {args.n} (generated vs real {args.ref})\n"
          "| kind | mark (min) | step | training wall (min) | training CPU (min) | FID |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:g} | {r[2]} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.1f} |")


if __name__ == "__main__":
    main()
