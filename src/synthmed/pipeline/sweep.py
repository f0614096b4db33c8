"""``synthmed sweep``: a grid over config keys, sharing the generator and synthetic set across grid points.

The shared stages (data, finetune, generate, quality) run once in RUN_DIR, exactly as ``synthmed run`` runs them
(same cache). Each grid point trains its policies x seeds in ``RUN_DIR/sweep/<point-id>/`` (which links to the
shared ``data``, ``generator``, ``synthetic`` and ``quality``). One row per trained classifier goes to
``RUN_DIR/results.csv`` (``results.shard-I-of-N.csv`` under ``--shard``; every run merges all shard files it finds
into ``results.csv``). Grid keys under data/generator/generation/quality/filter change the shared stages: those
points get their own upstream in ``RUN_DIR/sweep/upstream-<key>/``. See docs/pipeline.md.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthmed.config import Config, save_resolved, with_overrides
from synthmed.errors import ConfigError, UserError
from synthmed.io import atomic_write_csv
from synthmed.layout import RunLayout
from synthmed.pipeline.keys import (
    UpstreamKeys, digest, is_synthetic, policy_kind, resolve_policy, train_key, upstream_keys,
)
from synthmed.pipeline.progress import Display
from synthmed.pipeline.run import run_upstream, upstream_stage_count
from synthmed.pipeline.stages import STAGES
from synthmed.pipeline.workers import TrainJob, train_in_pool, train_unit
from synthmed.pipeline.state import State

SEED_KEYS = ("seed", "run.seeds")
UPSTREAM_SECTIONS = ("data", "generator", "generation", "quality", "filter")
SHARED = ("data", "generator", "synthetic", "quality")
ID_COLUMNS = ["point", "policy", "kind", "seed", "train_key"]
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


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_rows(path: Path, rows: list[dict[str, Any]], grid_keys: list[str]) -> None:
    """Write rows atomically: id columns, swept keys, then every other column sorted."""
    cols = list(dict.fromkeys(ID_COLUMNS + [k for k in grid_keys if k != "seed"]))
    extra = sorted({k for r in rows for k in r} - set(cols))
    rows = sorted(rows, key=lambda r: (str(r.get("point")), str(r.get("policy")), str(r.get("seed"))))
    atomic_write_csv(path, rows, cols + extra)


SKIP_METRICS = {"overrides", "mix", "imbalance", "classes", "history", "val", "warnings", "confusion"}


def metrics_row(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scalars of a metrics.json: top-level ones, ``test.*`` ones not already there, ``recall.<class>``."""
    out = {k: v for k, v in metrics.items()
           if k not in SKIP_METRICS and (v is None or isinstance(v, (bool, int, float, str)))}
    test = metrics.get("test") if isinstance(metrics.get("test"), dict) else {}
    out.update({f"test.{k}": v for k, v in test.items()
                if k not in out and isinstance(v, (int, float)) and not isinstance(v, bool)})
    recall = test.get("per_class_recall", metrics.get("per_class_recall"))
    classes = metrics.get("classes") or []
    if isinstance(recall, dict):
        out.update({f"recall.{c}": v for c, v in recall.items()})
    elif isinstance(recall, list):
        out.update({f"recall.{classes[i] if i < len(classes) else i}": v for i, v in enumerate(recall)})
    for key in ("train_real_per_class", "train_synthetic_per_class"):
        if isinstance(metrics.get(key), list):
            out[key] = json.dumps(metrics[key])
    return out


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


def _point_dir(run_dir: Path, point: Point) -> Path:
    pdir = RunLayout(run_dir).sweep_point(point.pid)
    pdir.mkdir(parents=True, exist_ok=True)
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
    save_resolved(point.cfg, pdir)
    return pdir


def run_sweep(cfg: Config, run_dir: str | Path, workers: int = 1, shard: tuple[int, int] | None = None,
              live: bool | None = None) -> Path:
    """Train every grid point (of this shard) that has no result yet; returns ``RUN_DIR/results.csv``."""
    run_dir = Path(run_dir)
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, run_dir)
    units = plan_sweep(cfg, run_dir)
    grid_keys = list(cfg.sweep.grid)
    current = {u.key for u in units}
    layout = RunLayout(run_dir)
    results = layout.results
    own = layout.results_shard(*shard) if shard else results

    def merged() -> dict[str, dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        for path in [results, *sorted(run_dir.glob("results.shard-*-of-*.csv"))]:
            for row in read_rows(path):
                if row.get("train_key") in current:
                    rows[row["train_key"]] = row
        return rows

    _retire_rows(run_dir, current, grid_keys)
    done = merged()
    own_rows = {r["train_key"]: r for r in read_rows(own) if r.get("train_key") in current} if shard else dict(done)
    mine = [u for i, u in enumerate(units) if (shard is None or i % shard[1] == shard[0]) and u.key not in done]
    todo = []
    run_state = State(run_dir)
    for u in mine:  # a classifier `synthmed run` already trained with the same key is reused, not retrained
        if run_state.status(u.name, u.key) == "done" and layout.classifier_metrics(u.policy, u.seed).is_file():
            own_rows[u.key] = _result_row(u, run_dir, None)
        else:
            todo.append(u)
    if len(todo) < len(mine):
        write_rows(own, list(own_rows.values()), grid_keys)
    groups: dict[Path, tuple[Config, bool]] = {}
    for u in todo:
        cfg_u, synth = groups.get(u.point.upstream_dir, (u.point.upstream_cfg, False))
        groups[u.point.upstream_dir] = (cfg_u, synth or u.synthetic)
    total = sum(upstream_stage_count(s) for _, s in groups.values()) + len(todo)
    with Display(total, "synthmed sweep", live=live) as display:
        display.log(f"{len(units)} classifier(s) in the grid, {len(units) - len(todo)} already trained, {len(todo)} to train"
                    + (f" in shard {shard[0]}/{shard[1]}" if shard else ""))
        for udir, (ucfg, synth) in groups.items():
            udir.mkdir(parents=True, exist_ok=True)
            save_resolved(ucfg, udir)
            run_upstream(ucfg, udir, display, needs_synthetic=synth)
        _train_all(todo, run_dir, workers, display, own_rows, own, grid_keys)
        display.finish()
    all_rows = merged()
    all_rows.update(own_rows)
    write_rows(results, list(all_rows.values()), grid_keys)
    try:
        STAGES.report(run_dir)
    except Exception as err:  # noqa: BLE001 - results are safe; the report is a convenience here
        display.log(f"report not rebuilt: {err.__class__.__name__}: {err}")
    return results


def _retire_rows(run_dir: Path, current: set[str], grid_keys: list[str]) -> None:
    """Move rows of an earlier, different sweep config from results.csv to results.previous.csv."""
    results = RunLayout(run_dir).results
    rows = read_rows(results)
    old = [r for r in rows if r.get("train_key") not in current]
    if not old:
        return
    prev = run_dir / "results.previous.csv"
    keep = {r.get("train_key"): r for r in read_rows(prev) + old}
    atomic_write_csv(prev, list(keep.values()), list(dict.fromkeys(k for r in keep.values() for k in r)))
    write_rows(results, [r for r in rows if r.get("train_key") in current], grid_keys)


def _train_all(todo: list[Unit], run_dir: Path, workers: int, display: Display,
               own_rows: dict[str, dict[str, Any]], own: Path, grid_keys: list[str]) -> None:
    spec = STAGES.train
    states: dict[Path, State] = {}
    jobs = []
    for u in todo:
        pdir = _point_dir(run_dir, u.point)
        st = states.setdefault(pdir, State(pdir))
        if st.status(u.name, u.key) != "running":
            st.start(u.name, u.key, [], [RunLayout(pdir).rel(RunLayout(pdir).classifier(u.policy, u.seed))])
        jobs.append((u, pdir, st))

    def finish(u: Unit, pdir: Path, st: State, outcome: tuple[str, Any]) -> None:
        status, payload = outcome
        if status == "user_error":
            raise UserError(f"sweep point {u.point.pid}, policy {u.policy}, seed {u.seed}: {payload}")
        st.finish(u.name)
        own_rows[u.key] = _result_row(u, pdir, payload)
        write_rows(own, list(own_rows.values()), grid_keys)

    if workers == 1 or len(jobs) <= 1:
        for u, pdir, st in jobs:
            with display.unit(f"{u.point.pid} {u.policy} seed{u.seed}", classifier=True):
                finish(u, pdir, st, train_unit(spec, u.point.cfg.model_dump(mode="json", by_alias=True),
                                               str(pdir), u.policy, u.seed, 0))
        return

    def done(job: TrainJob, outcome: tuple[str, Any]) -> None:
        u, pdir, st = job.tag
        finish(u, pdir, st, outcome)
        display.completed(job.label)

    train_in_pool(spec, [TrainJob(f"{u.point.pid} {u.policy} seed{u.seed}",
                                  u.point.cfg.model_dump(mode="json", by_alias=True), pdir, u.policy, u.seed,
                                  (u, pdir, st)) for u, pdir, st in jobs], workers, done)
