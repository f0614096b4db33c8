"""The notebook API (synthmed.api, re-exported lazily by synthmed) and the one result-row definition (results.py)."""

from __future__ import annotations

import csv
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import synthmed
from synthmed.errors import UserError
from synthmed.layout import RunLayout
from synthmed.results import RESULT_COLUMNS, collect_results, result_row, write_results_csv

ROOT = Path(__file__).resolve().parents[1]


def fake_metrics(policy: str, seed: int, bacc: float, kind: str | None = "real") -> dict:
    m = {"policy": policy, "seed": seed, "model": "cnn", "n_train_real": 40, "n_train_synthetic": 12 if seed else 0,
         "accuracy": bacc + 0.01, "balanced_accuracy": bacc, "macro_f1": bacc - 0.01, "auc_macro_ovr": 0.9,
         "val_balanced_accuracy": bacc + 0.02, "mix": {"policy": "add_per_class", "add_per_class": 12},
         "imbalance": {"method": "none"}, "test": {"balanced_accuracy": bacc}, "history": [1, 2]}
    if kind is not None:
        m["policy_kind"] = kind
    return m


def write_run(run_dir: Path, entries: list[tuple[str, int, float]]) -> None:
    layout = RunLayout(run_dir)
    for policy, seed, bacc in entries:
        path = layout.classifier_metrics(policy, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(fake_metrics(policy, seed, bacc)))


def test_import_synthmed_is_light() -> None:
    code = ("import sys, synthmed; heavy = [m for m in ('synthmed.api', 'synthmed.pipeline', 'torch', 'pandas', "
            "'numpy', 'pydantic') if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_result_row_columns_and_sources() -> None:
    row = result_row(fake_metrics("mix", 1, 0.7))
    assert list(row) == RESULT_COLUMNS
    assert row["policy_kind"] == "real" and row["mix_policy"] == "add_per_class" and row["imbalance_method"] == "none"
    assert row["balanced_accuracy"] == 0.7 and row["n_train_synthetic"] == 12
    old = fake_metrics("mix", 0, 0.5, kind=None)
    del old["balanced_accuracy"]
    row = result_row(old)  # an older metrics.json: no policy_kind, headline metric only under test
    assert row["policy_kind"] is None and row["balanced_accuracy"] == 0.5


def test_collect_and_write_results_csv(tmp_path: Path) -> None:
    write_run(tmp_path, [("real_only", 1, 0.6), ("real_only", 0, 0.5), ("mix", 0, 0.7)])
    unfinished = RunLayout(tmp_path).classifier("mix", 1)
    unfinished.mkdir(parents=True)  # no metrics.json yet: not a result
    (RunLayout(tmp_path).classifiers / "mix" / "notes").mkdir()
    rows = collect_results(tmp_path)
    assert [(r["policy"], r["seed"]) for r in rows] == [("mix", 0), ("real_only", 0), ("real_only", 1)]
    path = write_results_csv(tmp_path)
    assert path == RunLayout(tmp_path).results
    with open(path, newline="") as fh:
        read = list(csv.DictReader(fh))
    assert list(read[0]) == RESULT_COLUMNS and len(read) == 3 and read[2]["balanced_accuracy"] == "0.6"
    assert not list(tmp_path.glob(".tmp-*"))
    df = synthmed.open_run(tmp_path).results()
    assert list(df.columns) == RESULT_COLUMNS and df["balanced_accuracy"].tolist() == [0.7, 0.5, 0.6]


def test_stages_call_through_and_save_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from synthmed.pipeline.stages import STAGES

    calls = []

    def fake(name: str, result: object):
        def stage(cfg, run_dir, **kw):
            calls.append((name, Path(run_dir), sorted(kw)))
            assert (Path(run_dir) / "config.yaml").is_file()  # the resolved config is saved first, as the CLI does
            return result
        return stage

    for name in ("finetune", "generate", "quality"):
        monkeypatch.setattr(STAGES, name, fake(name, tmp_path / name))
    monkeypatch.setattr(STAGES, "train", fake("train", []))
    monkeypatch.setattr(STAGES, "report", lambda run_dir: Path(run_dir) / "report.html")
    monkeypatch.setattr(STAGES, "evaluate", lambda run_dir, as_json=False: '{"policies": []}' if as_json else "table")
    cfg = synthmed.load_config(ROOT / "configs" / "smoke.yaml", overrides=["classifier.epochs=1"])
    assert cfg.classifier.epochs == 1
    run_dir = tmp_path / "run"
    assert synthmed.finetune(cfg, run_dir) == tmp_path / "finetune"
    assert synthmed.generate(cfg, run_dir, data="DATA") == tmp_path / "generate"
    assert synthmed.quality(cfg, run_dir) == tmp_path / "quality"  # callable although synthmed.quality is a package
    assert synthmed.train(cfg, run_dir, policies=["real_only"]).run_dir == run_dir
    assert synthmed.evaluate(run_dir) == "table" and synthmed.evaluate(run_dir, as_json=True) == {"policies": []}
    assert synthmed.report(run_dir) == run_dir / "report.html"
    assert [c[0] for c in calls] == ["finetune", "generate", "quality", "train"]
    assert calls[1][2] == ["data"] and calls[0][2] == []
    importlib.import_module("synthmed.report.html")  # the package stays a package

    assert synthmed.report.html.__name__ == "synthmed.report.html" and callable(synthmed.report)
    with pytest.raises(UserError, match="not found"):
        synthmed.open_run(tmp_path / "missing")


def test_notebook_example_on_smoke_config(tmp_path: Path) -> None:
    """The README's notebook example, end to end on configs/smoke.yaml."""
    cfg = synthmed.load_config(ROOT / "configs" / "smoke.yaml", overrides=["run.seeds=[0]"])
    run = synthmed.run(cfg, tmp_path / "x")
    df = run.results()
    assert list(df.columns) == RESULT_COLUMNS
    assert sorted(df["policy"]) == sorted(cfg.run.policies) and (df["seed"] == 0).all()
    assert df["balanced_accuracy"].between(0, 1).all() and (df["n_train_real"] > 0).all()
    assert run.report_path.is_file()
    assert isinstance(run.evaluation(), str) and "real_only" in run.evaluation()
    best = df.sort_values("balanced_accuracy", ascending=False).iloc[0]
    assert best["policy"] in cfg.run.policies


def test_api_writers_take_the_run_directory_lock(tmp_path: Path) -> None:
    """A notebook call writing into a directory another writer holds fails at once, naming the holder."""
    from synthmed.lock import RunDirLockedError, run_lock

    cfg = synthmed.load_config(ROOT / "configs" / "smoke.yaml")
    with run_lock(tmp_path / "x", "run"):
        with pytest.raises(RunDirLockedError, match="in use by `synthmed run`"):
            synthmed.train(cfg, tmp_path / "x")
