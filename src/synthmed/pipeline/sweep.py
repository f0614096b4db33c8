"""``synthmed sweep``: a grid over config keys, sharing the generator and synthetic set across grid points.

The shared stages (data, finetune, generate, quality) run once in RUN_DIR, exactly as ``synthmed run`` runs them
(same cache). Each grid point trains its policies x seeds in ``RUN_DIR/sweep/<point-id>/`` (which links to the
shared ``data``, ``generator``, ``synthetic`` and ``quality``). One row per trained classifier goes to
``RUN_DIR/results.csv`` (``results.shard-I-of-N.csv`` under ``--shard``; every run merges all shard files it finds
into ``results.csv``). Grid keys under data/generator/generation/quality/filter change the shared stages: those
points get their own upstream in ``RUN_DIR/sweep/upstream-<key>/``. ``--launcher slurm`` (``pipeline/slurm.py``) runs
the same phases as cluster jobs: the shared stages in one job, then the shards as a job array, then the merge. Shards
may run side by side on one shared filesystem: each holds its own shard lock and writes its own results file, and a
grid point's ``pipeline/state.json`` is updated under a file lock. See docs/pipeline.md.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from synthmed.config import Config, save_resolved, with_overrides
from synthmed.errors import ConfigError, UserError
from synthmed.layout import RunLayout
from synthmed.pipeline.keys import (
    UPSTREAM_STAGES, digest, is_synthetic, policy_kind, resolve_policy, train_key, upstream_keys,
)
from synthmed.pipeline.progress import Display
from synthmed.pipeline.run import outputs, run_upstream, stage_status, upstream_stage_count
from synthmed.pipeline.stages import STAGES
from synthmed.pipeline.sweep_results import (
    ID_COLUMNS, merged_rows, metrics_row, read_rows, retire_rows, write_rows,
)
from synthmed.pipeline.workers import TrainJob, train_in_pool, train_unit
from synthmed.pipeline.state import State

SEED_KEYS = ("seed", "run.seeds")
UPSTREAM_SECTIONS = ("data", "generator", "generation", "quality", "filter")
SHARED = ("data", "generator", "synthetic", "quality")
_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; None stays None."""
    if text is None:
        return None
    m = _SHARD_RE.match(str(text))
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise UserError(f"--shard must be i/n with 0 <= i < n (e.g. 0/4), got '{text}'")
    return int(m.group(1)), int(m.group(2))


@dataclass
class Point:
    pid: str
    values: dict[str, Any]
    cfg: Config
    seeds: list[int]
    upstream_cfg: Config
    upstream_dir: Path


@dataclass
class Unit:
    point: Point
    policy: str
    seed: int
    key: str
    synthetic: bool
    kind: str
    row: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"train/{self.policy}/seed{self.seed}"


def _slug(values: dict[str, Any]) -> str:
    parts = [f"{k.split('.')[-1]}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()]
    text = re.sub(r"[^A-Za-z0-9._=,-]+", "", ",".join(parts))[:60]
    return f"{text}-{digest(values, 6)}" if text else digest(values, 6)


def _is_upstream_key(key: str) -> bool:
    return key.split(".")[0] in UPSTREAM_SECTIONS


def expand_grid(cfg: Config, run_dir: Path) -> list[Point]:
    """All grid points (the product of ``cfg.sweep.grid``), validated."""
    grid = cfg.sweep.grid
    if not grid:
        raise ConfigError("sweep.grid is empty: give at least one key, e.g. sweep.grid: {mix.ratio: [0, 0.5, 1]}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.grid.{key} must be a non-empty list of values")
    points = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid.keys(), combo))
        overrides = {k: v for k, v in values.items() if k not in SEED_KEYS}
        # the grid value wins over a policy's own setting of the same key
        policies = {name: {**(over or {}), **overrides} for name, over in cfg.run.policies.items()}
        try:
            pcfg = with_overrides(cfg, {**overrides, "run.policies": policies})
        except ConfigError as err:
            raise ConfigError(f"sweep.grid point {values}: {err}") from None
        seeds = list(cfg.run.seeds)
        if "run.seeds" in values:
            seeds = [int(s) for s in (values["run.seeds"] if isinstance(values["run.seeds"], list) else [values["run.seeds"]])]
        if "seed" in values:
            seeds = [int(values["seed"])]
        up = {k: v for k, v in overrides.items() if _is_upstream_key(k)}
        ucfg = with_overrides(cfg, up) if up else cfg
        udir = run_dir if not up else RunLayout(run_dir).sweep_upstream(upstream_keys(ucfg).quality)
        points.append(Point(_slug(values), values, pcfg, seeds, ucfg, udir))
    return points


def plan_sweep(cfg: Config, run_dir: Path) -> list[Unit]:
    """Every (grid point, policy, seed), in a stable order, with its train key."""
    policies = cfg.sweep.policies if cfg.sweep.policies is not None else list(cfg.run.policies)
    if not policies:
        raise ConfigError("no policy to sweep: set sweep.policies or run.policies")
    units: dict[str, Unit] = {}
    for point in expand_grid(cfg, run_dir):
        keys = upstream_keys(point.upstream_cfg)
        for policy in policies:
            pcfg = resolve_policy(point.cfg, policy)
            for seed in point.seeds:
                key = train_key(pcfg, seed, keys)
                # identical classifiers (e.g. real_only at every mix.ratio) are trained once
                units.setdefault(key, Unit(point, policy, seed, key, is_synthetic(pcfg), policy_kind(pcfg)))
    return list(units.values())


# ---------------------------------------------------------------------------------------------- results


def _result_row(unit: Unit, point_dir: Path, returned: list[dict[str, Any]] | None) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    mpath = RunLayout(point_dir).classifier_metrics(unit.policy, unit.seed)
    if mpath.is_file():
        metrics = json.loads(mpath.read_text(encoding="utf-8"))
    elif returned:
        metrics = dict(returned[0])
    row = {k: v for k, v in metrics_row(metrics).items() if k not in ID_COLUMNS}
    row.update({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in unit.point.values.items()})
    row.update(point=unit.point.pid, policy=unit.policy, kind=unit.kind, seed=unit.seed, train_key=unit.key)
    return row


# ---------------------------------------------------------------------------------------------- workers


@contextmanager
def _point_state(pdir: Path) -> Iterator[State]:
    """A point's state, read afresh and saved under its lock: shards on other nodes may update it at the same time."""
    lock = RunLayout(pdir).state_lock
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock)):
        yield State(pdir)


def _save_config(cfg: Config, run_dir: Path) -> None:
    """``save_resolved`` unless the same config is already there (concurrent shards then write nothing)."""
    path = RunLayout(run_dir).config
    try:
        if path.read_text(encoding="utf-8") == cfg.to_yaml():
            return
    except OSError:
        pass
    save_resolved(cfg, run_dir)


def _point_dir(run_dir: Path, point: Point) -> Path:
    pdir = RunLayout(run_dir).sweep_point(point.pid)
    pdir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(_mkparent(RunLayout(pdir).state_lock))):
        for name in SHARED:
            link = pdir / name
            target = Path(os.path.relpath(point.upstream_dir / name, pdir))
            if link.is_symlink() and os.readlink(link) == str(target):
                continue
            if link.is_symlink() or link.is_file():
                link.unlink()
            elif link.exists():
                continue  # a real folder (e.g. written by a stage): leave it
            link.symlink_to(target, target_is_directory=True)
        _save_config(point.cfg, pdir)
    return pdir


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def reused_rows(units: list[Unit], run_dir: Path) -> dict[str, dict[str, Any]]:
    """Rows of classifiers that `synthmed run` already trained in RUN_DIR with the same key (reused, not retrained)."""
    layout, run_state, out = RunLayout(run_dir), State(run_dir), {}
    for u in units:
        if run_state.status(u.name, u.key) == "done" and layout.classifier_metrics(u.policy, u.seed).is_file():
            out[u.key] = _result_row(u, run_dir, None)
    return out


def upstream_groups(units: list[Unit]) -> dict[Path, tuple[Config, bool]]:
    """The upstream folders ``units`` need: folder -> (its config, whether a synthetic policy needs the synthetic
    set)."""
    groups: dict[Path, tuple[Config, bool]] = {}
    for u in units:
        cfg_u, synth = groups.get(u.point.upstream_dir, (u.point.upstream_cfg, False))
        groups[u.point.upstream_dir] = (cfg_u, synth or u.synthetic)
    return groups


def missing_upstream(groups: dict[Path, tuple[Config, bool]], run_dir: Path) -> list[str]:
    """``folder: stage`` for every shared stage the groups need that has not finished (with its current key)."""
    out = []
    for udir, (ucfg, synth) in groups.items():
        keys, state, layout = upstream_keys(ucfg), State(udir), RunLayout(udir)
        for name in UPSTREAM_STAGES[: upstream_stage_count(synth)]:
            if stage_status(state, name, keys.get(name), outputs(layout, name)) != "done":
                out.append(name if udir == run_dir else f"{os.path.relpath(udir, run_dir)}: {name}")
    return out


PHASES = ("all", "upstream", "train")


def run_sweep(cfg: Config, run_dir: str | Path, workers: int = 1, shard: tuple[int, int] | None = None,
              live: bool | None = None, phase: str = "all") -> Path:
    """Train every grid point (of this shard) that has no result yet; returns ``RUN_DIR/results.csv``.

    ``phase``: ``all`` runs the shared stages, trains and merges (the local sweep); ``upstream`` only runs the shared
    stages the classifiers still to train need (the first SLURM job); ``train`` trains this shard's classifiers,
    refusing to start when a shared stage has not finished, and writes only the shard's own results file (a SLURM
    array task; returns that file).
    """
    run_dir = Path(run_dir)
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    run_dir.mkdir(parents=True, exist_ok=True)
    _save_config(cfg, run_dir)
    units = plan_sweep(cfg, run_dir)
    grid_keys = list(cfg.sweep.grid)
    current = {u.key for u in units}
    layout = RunLayout(run_dir)
    own = layout.results_shard(*shard) if shard else layout.results
    if phase != "train":  # array tasks write nothing but their shard file (the launcher retired old rows)
        retire_rows(run_dir, current, grid_keys)
    done = merged_rows(run_dir, current)
    own_rows = {r["train_key"]: r for r in read_rows(own) if r.get("train_key") in current} if shard else dict(done)
    mine = [u for i, u in enumerate(units) if (shard is None or i % shard[1] == shard[0]) and u.key not in done]
    reused = reused_rows(mine, run_dir)
    todo = [u for u in mine if u.key not in reused]
    if reused and phase != "upstream":
        own_rows.update(reused)
        write_rows(own, list(own_rows.values()), grid_keys)
    groups = upstream_groups(todo)
    if phase == "train" and (missing := missing_upstream(groups, run_dir)):
        raise UserError(f"the shared stages of {run_dir} have not finished ({', '.join(missing)}): run them first "
                        f"(`synthmed sweep --launcher slurm` submits them as a job before the array)")
    total = (sum(upstream_stage_count(s) for _, s in groups.values()) if phase != "train" else 0) \
        + (len(todo) if phase != "upstream" else 0)
    with Display(total, "synthmed sweep", live=live) as display:
        display.log(f"{len(units)} classifier(s) in the grid, {len(units) - len(todo)} already trained, {len(todo)} to train"
                    + (f" in shard {shard[0]}/{shard[1]}" if shard else ""))
        if phase != "train":
            for udir, (ucfg, synth) in groups.items():
                udir.mkdir(parents=True, exist_ok=True)
                _save_config(ucfg, udir)
                run_upstream(ucfg, udir, display, needs_synthetic=synth)
        if phase != "upstream":
            _train_all(todo, run_dir, workers, display, own_rows, own, grid_keys)
        display.finish()
    if phase != "all":
        return own
    all_rows = merged_rows(run_dir, current)
    all_rows.update(own_rows)
    return _write_results(run_dir, all_rows, grid_keys, display.log)


def _write_results(run_dir: Path, rows: dict[str, dict[str, Any]], grid_keys: list[str],
                   log: Callable[[str], None]) -> Path:
    results = RunLayout(run_dir).results
    write_rows(results, list(rows.values()), grid_keys)
    try:
        STAGES.report(run_dir)
    except Exception as err:  # noqa: BLE001 - results are safe; the report is a convenience here
        log(f"report not rebuilt: {err.__class__.__name__}: {err}")
    return results


def merge_sweep(cfg: Config, run_dir: str | Path, report: bool = True) -> tuple[Path, list[Unit]]:
    """Merge every shard's rows (and classifiers `synthmed run` trained) into ``results.csv`` and rebuild the report
    (``report``); trains nothing. Returns the file and the classifiers of the grid that still have no row."""
    run_dir = Path(run_dir)
    units = plan_sweep(cfg, run_dir)
    grid_keys, current = list(cfg.sweep.grid), {u.key for u in units}
    retire_rows(run_dir, current, grid_keys)
    rows = merged_rows(run_dir, current)
    rows.update(reused_rows([u for u in units if u.key not in rows], run_dir))
    if report:
        path = _write_results(run_dir, rows, grid_keys, lambda m: print(f"[synthmed sweep] {m}", file=sys.stderr))
    else:
        path = RunLayout(run_dir).results
        write_rows(path, list(rows.values()), grid_keys)
    return path, [u for u in units if u.key not in rows]


def _train_all(todo: list[Unit], run_dir: Path, workers: int, display: Display,
               own_rows: dict[str, dict[str, Any]], own: Path, grid_keys: list[str]) -> None:
    spec = STAGES.train
    jobs = []
    for u in todo:
        pdir = _point_dir(run_dir, u.point)
        with _point_state(pdir) as st:
            if st.status(u.name, u.key) != "running":
                st.start(u.name, u.key, [], [RunLayout(pdir).rel(RunLayout(pdir).classifier(u.policy, u.seed))])
        jobs.append((u, pdir))

    def finish(u: Unit, pdir: Path, outcome: tuple[str, Any]) -> None:
        status, payload = outcome
        if status == "user_error":
            raise UserError(f"sweep point {u.point.pid}, policy {u.policy}, seed {u.seed}: {payload}")
        with _point_state(pdir) as st:
            st.finish(u.name)
        own_rows[u.key] = _result_row(u, pdir, payload)
        write_rows(own, list(own_rows.values()), grid_keys)

    if workers == 1 or len(jobs) <= 1:
        for u, pdir in jobs:
            with display.unit(f"{u.point.pid} {u.policy} seed{u.seed}", classifier=True):
                finish(u, pdir, train_unit(spec, u.point.cfg.model_dump(mode="json", by_alias=True),
                                           str(pdir), u.policy, u.seed, 0))
        return

    def done(job: TrainJob, outcome: tuple[str, Any]) -> None:
        u, pdir = job.tag
        finish(u, pdir, outcome)
        display.completed(job.label)

    train_in_pool(spec, [TrainJob(f"{u.point.pid} {u.policy} seed{u.seed}",
                                  u.point.cfg.model_dump(mode="json", by_alias=True), pdir, u.policy, u.seed,
                                  (u, pdir)) for u, pdir in jobs], workers, done)
