"""synthmed sweep: grid expansion, shared upstream, results.csv, shards, workers (with fake stages)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from synthmed.config import Config, load_config, with_overrides
from synthmed.errors import ConfigError, UserError
from synthmed.pipeline.sweep import expand_grid, parse_shard, run_sweep
from test_pipeline import POLICIES, calls, fake_log, stages  # noqa: F401 - fixture re-export


def sweep_cfg(grid: dict, **over: object) -> Config:
    cfg = load_config(None, ["generation.n_per_class=3", "run.seeds=[0]"])
    cfg = with_overrides(cfg, {"run.policies": POLICIES, "sweep.grid": grid, "sweep.policies": ["ratio"]})
    return with_overrides(cfg, dict(over)) if over else cfg


GRID = {"mix.ratio": [0.0, 0.5, 1.0], "seed": [0, 1]}


def test_sweep_shares_upstream_and_caches(tmp_path: Path, fake_log: Path) -> None:  # noqa: F811
    run = tmp_path / "run"
    path = run_sweep(sweep_cfg(GRID), run, live=False)
    got = calls(fake_log)
    assert [s for s in stages(got) if s in ("data", "finetune", "generate", "quality")] == [
        "data", "finetune", "generate", "quality"]
    trained = [line for line in got if line.startswith("train")]
    assert len(trained) == 6 and any("ratio=0.5" in t for t in trained)
    df = pd.read_csv(path)
    assert len(df) == 6 and {"mix.ratio", "seed", "policy", "balanced_accuracy", "point"} <= set(df.columns)
    assert sorted(df["mix.ratio"].unique().tolist()) == [0.0, 0.5, 1.0]
    assert df.groupby("mix.ratio")["balanced_accuracy"].mean().is_monotonic_increasing
    assert (run / "report.html").is_file()
    run_sweep(sweep_cfg(GRID), run, live=False)
    assert [s for s in stages(calls(fake_log)) if s != "report"] == [], "a finished sweep trains nothing"


def test_shards_split_and_merge(tmp_path: Path, fake_log: Path) -> None:  # noqa: F811
    run = tmp_path / "run"
    run_sweep(sweep_cfg(GRID), run, shard=(0, 2), live=False)
    first = [x for x in calls(fake_log) if x.startswith("train")]
    assert (run / "results.shard-0-of-2.csv").is_file() and len(first) == 3
    run_sweep(sweep_cfg(GRID), run, shard=(1, 2), live=False)
    second = [x for x in calls(fake_log) if x.startswith("train")]
    assert len(second) == 3 and not set(first) & set(second)
    df = pd.read_csv(run / "results.csv")
    assert len(df) == 6 and df["train_key"].is_unique


def test_changed_base_config_retrains_and_keeps_old_rows(tmp_path: Path, fake_log: Path) -> None:  # noqa: F811
    run = tmp_path / "run"
    run_sweep(sweep_cfg({"mix.ratio": [0.5]}), run, live=False)
    calls(fake_log)
    run_sweep(sweep_cfg({"mix.ratio": [0.5]}, **{"classifier.epochs": 2}), run, live=False)
    got = stages(calls(fake_log))
    assert "quality" in got and got.count("train") == 1 and "finetune" not in got
    assert len(pd.read_csv(run / "results.csv")) == 1
    assert len(pd.read_csv(run / "results.previous.csv")) == 1


def test_rows_of_synthmed_run_are_kept_in_previous(tmp_path: Path, fake_log: Path) -> None:  # noqa: F811
    """`synthmed run` writes results.csv rows without a train key; a later sweep retires them, one row each."""
    from synthmed.io import atomic_write_csv
    from synthmed.results import RESULT_COLUMNS

    run = tmp_path / "run"
    run.mkdir()
    old = [{"policy": p, "seed": s, "balanced_accuracy": 0.5 + s / 10} for p in ("real_only", "ratio") for s in (0, 1)]
    atomic_write_csv(run / "results.csv", old, RESULT_COLUMNS)
    run_sweep(sweep_cfg({"mix.ratio": [0.5]}), run, live=False)
    prev = pd.read_csv(run / "results.previous.csv")
    assert sorted(zip(prev["policy"], prev["seed"])) == [("ratio", 0), ("ratio", 1), ("real_only", 0), ("real_only", 1)]
    run_sweep(sweep_cfg({"mix.ratio": [1.0]}), run, live=False)
    assert len(pd.read_csv(run / "results.previous.csv")) == 5, "the run's 4 rows and the earlier grid's 1"


def test_upstream_grid_key_gets_own_generator(tmp_path: Path, fake_log: Path) -> None:  # noqa: F811
    run = tmp_path / "run"
    run_sweep(sweep_cfg({"generation.n_per_class": [2, 3]}), run, live=False)
    got = stages(calls(fake_log))
    assert got.count("generate") == 2 and got.count("finetune") == 2
    assert len(list((run / "sweep").glob("upstream-*"))) == 2
    assert len(pd.read_csv(run / "results.csv")) == 2


def test_workers_in_processes(tmp_path: Path, fake_log: Path) -> None:  # noqa: F811
    run = tmp_path / "run"
    run_sweep(sweep_cfg({"mix.ratio": [0.0, 1.0]}), run, workers=2, live=False)
    assert len([x for x in calls(fake_log) if x.startswith("train")]) == 2
    assert len(pd.read_csv(run / "results.csv")) == 2


def test_bad_input(tmp_path: Path) -> None:
    assert parse_shard(None) is None and parse_shard("1/4") == (1, 4) and parse_shard(" 0 / 1 ") == (0, 1)
    for bad in ["4/4", "a/b", "1", "-1/2", "0/0", "1/2/3"]:
        with pytest.raises(UserError, match="--shard"):
            parse_shard(bad)
    with pytest.raises(ConfigError, match="sweep.grid is empty"):
        expand_grid(sweep_cfg({}), tmp_path)
    with pytest.raises(ConfigError, match="mix.ratio"):
        expand_grid(sweep_cfg({"mix.ratio": [2.0]}), tmp_path)
    with pytest.raises(ConfigError, match="non-empty list"):
        expand_grid(sweep_cfg({"mix.ratio": []}), tmp_path)
    with pytest.raises(UserError, match="workers"):
        run_sweep(sweep_cfg(GRID), tmp_path / "r", workers=0)


def test_sweep_reuses_classifiers_of_run(tmp_path: Path, fake_log: Path) -> None:  # noqa: F811
    from synthmed.pipeline.run import run_pipeline

    run = tmp_path / "run"
    cfg = sweep_cfg({"mix.ratio": [0.5, 1.0]})  # the run's `ratio` policy has mix.ratio 0.5
    run_pipeline(cfg, run, live=False)
    calls(fake_log)
    run_sweep(cfg, run, live=False)
    trained = [x for x in calls(fake_log) if x.startswith("train")]
    assert len(trained) == 1 and "ratio=1.0" in trained[0]
    assert len(pd.read_csv(run / "results.csv")) == 2


def test_a_sweep_policy_outside_run_policies_is_one_line(tmp_path: Path) -> None:
    from synthmed.pipeline.sweep import plan_sweep

    cfg = with_overrides(sweep_cfg({"mix.ratio": [0.5]}), ["sweep.policies=[nope]"])
    with pytest.raises(ConfigError) as err:
        plan_sweep(cfg, tmp_path / "run")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("unknown policy 'nope' (run.policies has: ")
    assert not (tmp_path / "run").exists()
