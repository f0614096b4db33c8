"""``synthmed run``: data -> finetune -> generate -> quality -> train (policy x seed) -> evaluate -> report.

Every stage is keyed by a hash of its config slice and its inputs' keys (``pipeline/keys.py``) and recorded in
``RUN_DIR/pipeline/state.json`` (``pipeline/state.py``): a rerun skips finished stages, resumes a crashed one, and
reruns only what a changed setting touches. See docs/pipeline.md.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.config import Config, save_resolved
from synthmed.data.dataset import RealData
from synthmed.data.orientation import active_augmentations
from synthmed.errors import UserError
from synthmed.io import atomic_write_bytes, atomic_write_json, atomic_write_text, remove_stale_temps
from synthmed.layout import RunLayout
from synthmed.pipeline.keys import (
    STAGES as STAGE_NAMES, UPSTREAM_STAGES, UpstreamKeys, digest, is_synthetic, resolve_policy, train_key,
    upstream_keys,
)
from synthmed.pipeline.progress import Display
from synthmed.pipeline.stages import STAGES
from synthmed.pipeline.state import State

REPORT_VERSION = 2


def outputs(layout: RunLayout, stage: str) -> list[str]:
    """Run-dir-relative outputs of an upstream stage (the first one marks the stage as present)."""
    paths = {
        "data": [layout.data, layout.data_summary, layout.real_samples],
        "finetune": [layout.generator, layout.generator_work],
        "generate": [layout.synthetic],
        "quality": [layout.quality],
    }[stage]
    return [layout.rel(p) for p in paths]


INPUTS: dict[str, list[str]] = {"data": [], "finetune": ["data"], "generate": ["finetune"], "quality": ["generate"]}


class DataHandle:
    """The real data of a run, loaded at most once per process and handed to every stage that needs it."""

    def __init__(self, cfg: Config, run_dir: Path) -> None:
        self.cfg, self.run_dir, self._data = cfg, run_dir, None

    def set(self, data: RealData) -> None:
        self._data = data

    def get(self) -> RealData:
        if self._data is None:
            self._data = STAGES.data(self.cfg.data, self.run_dir)
        return self._data


def parse_force(force: list[str] | None) -> set[str]:
    """Validate ``--force`` stage names."""
    out = set()
    for name in force or []:
        for part in str(name).split(","):
            part = part.strip()
            if part and part not in STAGE_NAMES:
                raise UserError(f"--force {part}: unknown stage (choose from {', '.join(STAGE_NAMES)})")
            if part:
                out.add(part)
    return out


def stage_status(state: State, name: str, key: str, outputs: list[str], forced: bool = False) -> str:
    """``done`` (cached with the same key and its first output present), ``running`` (interrupted: resume) or ``new``."""
    if forced:
        return "new"
    status = state.status(name, key)
    if status == "done" and not all((state.run_dir / o).exists() for o in outputs[:1]):
        return "new"
    return status


def run_stage(state: State, display: Display, name: str, key: str, inputs: list[str], outputs: list[str],
              fn: Callable[[], Any], forced: bool = False, classifier: bool = False) -> bool:
    """Skip, resume or freshly run one stage (``classifier``: one classifier unit); returns whether it ran."""
    status = stage_status(state, name, key, outputs, forced)
    if status == "done":
        display.skip(name, "cached")
        return False
    note = "resuming" if status == "running" else ("forced" if forced else "running")
    if status != "running":
        state.start(name, key, inputs, outputs)
    with display.unit(name, note, classifier=classifier):
        fn()
    state.finish(name)
    return True


# ---------------------------------------------------------------------------------------------- upstream


def _data_stage(cfg: Config, run_dir: Path, handle: DataHandle) -> None:
    layout = RunLayout(run_dir)
    real = STAGES.data(cfg.data, run_dir)
    handle.set(real)
    summary = real.summary()
    summary["source"] = getattr(real, "source", cfg.data.source)
    summary["warnings"] = list(getattr(real, "warnings", []) or [])
    summary["augmentations"] = active_augmentations(cfg)  # what runs, after the label-safety check
    atomic_write_json(layout.data_summary, summary)
    rng = np.random.default_rng(cfg.seed)
    idx: list[int] = []
    for c in range(real.n_classes):
        members = np.flatnonzero(real.train.labels == c)
        idx += sorted(rng.choice(members, size=min(8, len(members)), replace=False).tolist()) if len(members) else []
    buf = io.BytesIO()
    np.savez_compressed(buf, images=real.train.images[idx], labels=real.train.labels[idx],
                        classes=np.asarray(real.classes, dtype=str))
    atomic_write_bytes(layout.real_samples, buf.getvalue())


def upstream_stage_count(needs_synthetic: bool) -> int:
    return len(UPSTREAM_STAGES) if needs_synthetic else 1


def run_upstream(cfg: Config, run_dir: Path, display: Display, forced: set[str] | None = None,
                 needs_synthetic: bool = True, state: State | None = None,
                 handle: DataHandle | None = None) -> UpstreamKeys:
    """Run (or find cached) data, and finetune -> generate -> quality when a synthetic policy needs them."""
    forced = forced or set()
    state = state or State(run_dir)
    handle = handle or DataHandle(cfg, run_dir)
    layout = RunLayout(run_dir)
    keys = upstream_keys(cfg)
    calls: dict[str, Callable[[], Any]] = {
        "data": lambda: _data_stage(cfg, run_dir, handle),
        "finetune": lambda: STAGES.finetune(cfg, run_dir, data=handle.get()),
        "generate": lambda: STAGES.generate(cfg, run_dir, data=handle.get()),
        "quality": lambda: STAGES.quality(cfg, run_dir, data=handle.get()),
    }
    for name in UPSTREAM_STAGES[: upstream_stage_count(needs_synthetic)]:
        run_stage(state, display, name, keys.get(name), INPUTS[name], outputs(layout, name), calls[name],
                  name in forced)
    return keys


# ---------------------------------------------------------------------------------------------- run


def plan_units(cfg: Config, keys: UpstreamKeys) -> list[tuple[str, int, str, bool]]:
    """(policy, seed, train key, synthetic?) for every policy x seed of ``cfg.run``."""
    if not cfg.run.policies:
        raise UserError("run.policies is empty: name at least one policy (e.g. real_only: {mix.policy: real_only})")
    if not cfg.run.seeds:
        raise UserError("run.seeds is empty: give at least one seed")
    units = []
    for name in cfg.run.policies:
        pcfg = resolve_policy(cfg, name)
        for seed in cfg.run.seeds:
            units.append((name, int(seed), train_key(pcfg, seed, keys), is_synthetic(pcfg)))
    return units


def _retire_orphans(state: State, units: list[tuple[str, int, str, bool]]) -> None:
    """Move classifier folders of policies / seeds no longer configured out of the way (and drop their records)."""
    wanted = {(p, f"seed{s}") for p, s, _, _ in units}
    policies = {p for p, _ in wanted}
    layout = RunLayout(state.run_dir)
    root = layout.classifiers
    if root.is_dir():
        for pdir in sorted(root.iterdir()):
            if not pdir.is_dir():
                continue
            if pdir.name not in policies:
                state.move_aside(layout.rel(pdir), "orphan")
                continue
            for sdir in sorted(pdir.iterdir()):
                if sdir.is_dir() and sdir.name.startswith("seed") and (pdir.name, sdir.name) not in wanted:
                    state.move_aside(layout.rel(sdir), "orphan")
    names = {f"train/{p}/{s}" for p, s in wanted}
    for name in [n for n in state.records if n.startswith("train/") and n not in names]:
        state.drop(name)


def _evaluate(run_dir: Path) -> None:
    from synthmed.results import write_results_csv

    layout = RunLayout(run_dir)
    atomic_write_text(layout.evaluation_txt, str(STAGES.evaluate(run_dir)).rstrip() + "\n")
    atomic_write_text(layout.evaluation_json, str(STAGES.evaluate(run_dir, as_json=True)).rstrip() + "\n")
    write_results_csv(run_dir)


def _train_units(cfg: Config, run_dir: Path, state: State, display: Display,
                 units: list[tuple[str, int, str, bool]], forced: bool, workers: int,
                 handle: DataHandle | None = None) -> None:
    """The train stage: one classifier per (policy, seed), cached by key; in parallel when ``workers`` > 1."""
    layout = RunLayout(run_dir)
    handle = handle or DataHandle(cfg, run_dir)
    pending = [u for u in units if stage_status(state, f"train/{u[0]}/seed{u[1]}", u[2],
                                                [layout.rel(layout.classifier(u[0], u[1]))], forced) != "done"]
    if workers == 1 or len(pending) <= 1:
        for policy, seed, key, synth in units:
            run_stage(state, display, f"train/{policy}/seed{seed}", key, ["quality" if synth else "data"],
                      [layout.rel(layout.classifier(policy, seed))],
                      lambda p=policy, s=seed: STAGES.train(cfg, run_dir, policies=[p], seeds=[s], data=handle.get()),
                      forced=forced, classifier=True)
        return
    from synthmed.pipeline.workers import TrainJob, train_in_pool

    jobs = []
    cfg_json = cfg.model_dump(mode="json", by_alias=True)
    for policy, seed, key, synth in units:
        name, out = f"train/{policy}/seed{seed}", layout.rel(layout.classifier(policy, seed))
        status = stage_status(state, name, key, [out], forced)
        if status == "done":
            display.skip(name, "cached")
            continue
        if status != "running":
            state.start(name, key, ["quality" if synth else "data"], [out])
        jobs.append(TrainJob(name, cfg_json, run_dir, policy, seed))
    if jobs:
        display.log(f"training {len(jobs)} classifier(s) on {min(workers, len(jobs))} worker process(es)")

    def done(job: TrainJob, outcome: tuple[str, Any]) -> None:
        status, payload = outcome
        if status == "user_error":
            raise UserError(f"policy {job.policy}, seed {job.seed}: {payload}")
        state.finish(job.label)
        display.completed(job.label)

    train_in_pool(STAGES.train, jobs, workers, done)


def run_pipeline(cfg: Config, run_dir: str | Path, force: list[str] | None = None,
                 live: bool | None = None, workers: int = 1) -> Path:
    """Run every stage that is not cached; returns the path of ``RUN_DIR/report.html``.

    ``workers`` > 1 trains the classifiers (policy x seed) in that many parallel processes.
    """
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    forced = parse_force(force)
    keys = upstream_keys(cfg)
    units = plan_units(cfg, keys)  # validates policies before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, run_dir)
    if layout.pipeline.is_dir():
        remove_stale_temps(layout.pipeline)
    state = State(run_dir)
    handle = DataHandle(cfg, run_dir)
    needs_synth = any(u[3] for u in units)
    total = upstream_stage_count(needs_synth) + len(units) + 2
    with Display(total, "synthmed run", live=live) as display:
        if not needs_synth and forced & {"finetune", "generate", "quality"}:
            display.log("no synthetic policy in run.policies: finetune/generate/quality are not needed")
        run_upstream(cfg, run_dir, display, forced, needs_synth, state, handle)
        _retire_orphans(state, units)
        _train_units(cfg, run_dir, state, display, units, "train" in forced, workers, handle)
        train_names = [f"train/{p}/seed{s}" for p, s, _, _ in units]
        eval_key = digest({"stage": "evaluate", "units": sorted((f"{p}/{s}", k) for p, s, k, _ in units)})
        run_stage(state, display, "evaluate", eval_key, train_names,
                  [layout.rel(layout.evaluation_txt), layout.rel(layout.evaluation_json), layout.rel(layout.results)],
                  lambda: _evaluate(run_dir), "evaluate" in forced)
        report_key = digest({"stage": "report", "v": REPORT_VERSION, "eval": eval_key,
                             "up": keys.quality if needs_synth else keys.data, "cfg": cfg.model_dump(mode="json")})
        report_path = layout.report
        run_stage(state, display, "report", report_key, ["evaluate"],
                  [layout.rel(layout.report), layout.rel(layout.report_assets)],
                  lambda: STAGES.report(run_dir), "report" in forced)
        display.finish()
    if not cfg.run.keep_stale:
        state.purge_stale()
    table = layout.evaluation_txt
    if table.is_file():
        print(table.read_text(encoding="utf-8").rstrip())
    return report_path
