"""synthmed run: stage graph, caching keys, resume, --force, invalidation (with fake stages)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthmed.cli import main
from synthmed.config import Config, load_config, with_overrides
from synthmed.errors import ConfigError, UserError
from synthmed.pipeline import run as run_mod
from synthmed.pipeline.run import parse_force, run_pipeline
from synthmed.pipeline.stages import STAGES

import test_pipeline_fakes as fakes

POLICIES = {
    "real_only": {"mix.policy": "real_only"},
    "resample": {"imbalance.method": "resample"},
    "ratio": {"mix.policy": "ratio", "mix.ratio": 0.5},
}


@pytest.fixture()
def fake_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for stage, attr in [("data", "load_data"), ("finetune", "finetune"), ("generate", "generate"),
                        ("quality", "run_quality"), ("train", "train"), ("evaluate", "evaluate_run"),
                        ("report", "build_report")]:
        monkeypatch.setattr(STAGES, stage, getattr(fakes, attr))
    log = tmp_path / "calls.log"
    monkeypatch.setenv("FAKE_STAGE_LOG", str(log))
    monkeypatch.delenv("FAKE_FAIL", raising=False)
    return log


def calls(log: Path) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    log.write_text("")
    return lines


def stages(lines: list[str]) -> list[str]:
    return [line.split()[0] for line in lines]


def make_cfg(**over: object) -> Config:
    cfg = load_config(None, ["generation.n_per_class=3", "run.seeds=[0, 1]"])
    cfg = with_overrides(cfg, {"run.policies": POLICIES})
    return with_overrides(cfg, dict(over)) if over else cfg


def test_first_run_then_cache_hit(tmp_path: Path, fake_log: Path) -> None:
    run = tmp_path / "run"
    report = run_pipeline(make_cfg(), run, live=False)
    assert report == run / "report.html" and report.is_file()
    got = stages(calls(fake_log))
    assert got[:4] == ["data", "finetune", "generate", "quality"]
    assert got.count("train") == 6 and got[-1] == "report" and "evaluate" in got
    assert (run / "pipeline" / "state.json").is_file() and (run / "config.yaml").is_file()
    assert (run / "pipeline" / "data_summary.json").is_file() and (run / "pipeline" / "real_samples.npz").is_file()
    run_pipeline(make_cfg(), run, live=False)
    assert calls(fake_log) == [], "a second identical run must rerun nothing"


def test_changed_generation_reruns_only_dependents(tmp_path: Path, fake_log: Path) -> None:
    run = tmp_path / "run"
    run_pipeline(make_cfg(), run, live=False)
    calls(fake_log)
    data_record = json.loads((run / "pipeline" / "state.json").read_text())["records"]["data"]
    run_pipeline(make_cfg(**{"generation.n_per_class": 2}), run, live=False)
    got = calls(fake_log)
    # the data stage is not rerun (its state record is untouched); the split is read once for the stages that need it
    assert json.loads((run / "pipeline" / "state.json").read_text())["records"]["data"] == data_record
    assert stages(got).count("data") == 1 and "finetune" not in stages(got)
    assert [s for s in stages(got) if s != "data"][:2] == ["generate", "quality"]
    trained = sorted(line.split()[2] for line in got if line.startswith("train"))
    assert trained == ["ratio", "ratio"], "only the synthetic policy depends on the synthetic set"
    # the stale synthetic set was cleared, not mixed with the new one
    pngs = list((run / "synthetic").rglob("*.png"))
    assert len(pngs) == 2 * 3
    assert not (run / ".stale").exists()


def test_changed_classifier_reruns_quality_and_training(tmp_path: Path, fake_log: Path) -> None:
    run = tmp_path / "run"
    run_pipeline(make_cfg(), run, live=False)
    calls(fake_log)
    run_pipeline(make_cfg(**{"classifier.epochs": 2}), run, live=False)
    got = stages(calls(fake_log))
    assert "finetune" not in got and "generate" not in got and "quality" in got and got.count("train") == 6


def test_force_reruns_stage_and_downstream(tmp_path: Path, fake_log: Path) -> None:
    run = tmp_path / "run"
    run_pipeline(make_cfg(), run, live=False)
    calls(fake_log)
    run_pipeline(make_cfg(), run, force=["finetune"], live=False)
    got = stages(calls(fake_log))
    got = [s for s in got if s != "data"]  # the split is read (not remade) for the stages that run
    assert got[:3] == ["finetune", "generate", "quality"] and got.count("train") == 2
    run_pipeline(make_cfg(), run, force=["report"], live=False)
    assert stages(calls(fake_log)) == ["report"]


def test_real_only_skips_generator(tmp_path: Path, fake_log: Path) -> None:
    cfg = with_overrides(make_cfg(), {"run.policies": {"real_only": {"mix.policy": "real_only"}}})
    run_pipeline(cfg, tmp_path / "run", live=False)
    got = stages(calls(fake_log))
    assert not {"finetune", "generate", "quality"} & set(got) and got.count("train") == 2


def test_crash_resumes_without_redoing_finished_work(tmp_path: Path, fake_log: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    monkeypatch.setenv("FAKE_FAIL", "evaluate")
    with pytest.raises(RuntimeError):
        run_pipeline(make_cfg(), run, live=False)
    assert stages(calls(fake_log)).count("train") == 6
    monkeypatch.delenv("FAKE_FAIL")
    run_pipeline(make_cfg(), run, live=False)
    assert stages(calls(fake_log)) == ["evaluate", "evaluate", "report"]


def test_removed_policy_is_retired(tmp_path: Path, fake_log: Path) -> None:
    run = tmp_path / "run"
    run_pipeline(make_cfg(), run, live=False)
    assert (run / "classifiers" / "resample").is_dir()
    cfg = with_overrides(make_cfg(), {"run.policies": {k: v for k, v in POLICIES.items() if k != "resample"},
                                      "run.seeds": [0]})
    calls(fake_log)
    run_pipeline(cfg, run, live=False)
    assert not (run / "classifiers" / "resample").exists()
    assert not (run / "classifiers" / "ratio" / "seed1").exists()
    assert stages(calls(fake_log)) == ["evaluate", "evaluate", "report"]


def test_keep_stale(tmp_path: Path, fake_log: Path) -> None:
    run = tmp_path / "run"
    run_pipeline(make_cfg(**{"run.keep_stale": True}), run, live=False)
    run_pipeline(make_cfg(**{"run.keep_stale": True, "generation.n_per_class": 2}), run, live=False)
    assert list((run / ".stale").rglob("manifest.csv")), "the old synthetic set is kept under .stale"


def test_bad_input(tmp_path: Path) -> None:
    assert parse_force(["train", "data,quality"]) == {"train", "data", "quality"}
    with pytest.raises(UserError, match="unknown stage"):
        parse_force(["trian"])
    with pytest.raises(ConfigError, match="run.policies.bad"):
        run_pipeline(with_overrides(make_cfg(), {"run.policies": {"bad": {"mix.polcy": "ratio"}}}), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_cli_force_typo_is_exit_2(tmp_path: Path, fake_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("run: {seeds: [0]}\n")
    assert main(["run", str(cfg), "-o", str(tmp_path / "r"), "--force", "nope"]) == 2
    assert "unknown stage" in capsys.readouterr().err
    assert main(["run", str(cfg), "-o", str(tmp_path / "r")]) == 0
    assert "report:" in capsys.readouterr().out


def test_live_display_and_eta(tmp_path: Path, fake_log: Path) -> None:
    from synthmed.pipeline.progress import Display

    run_pipeline(make_cfg(), tmp_path / "run", live=True)  # the rich bar must not break a run
    d = Display(5, live=False)
    assert d.eta() == "ETA ?"
    with d.unit("finetune"):
        pass
    assert d.eta() == "ETA ?", "a long upstream stage says nothing about the classifiers"
    with d.unit("train/a/seed0", classifier=True):
        pass
    d.skip("train/b/seed0", "cached")
    assert d.done == 3 and d.eta().startswith("ETA ") and d.eta() != "ETA ?"
    with pytest.raises(ValueError):
        with d.unit("train/c/seed0", classifier=True):
            raise ValueError("boom")
    assert d.done == 3
    p = Display(4, live=False)
    with p.unit("quality"):
        pass
    p.completed("train/a/seed0")  # a parallel worker's classifier
    assert p.classifiers_ran == 1 and p.eta().startswith("ETA ") and p.eta() != "ETA ?"


def test_run_workers_train_in_processes_and_cache(tmp_path: Path, fake_log: Path) -> None:
    run = tmp_path / "run"
    run_pipeline(make_cfg(), run, live=False, workers=2)
    got = calls(fake_log)
    assert sorted(x.split()[0] for x in got).count("train") == 6 and stages(got)[-1] == "report"
    assert len(list((run / "classifiers").glob("*/seed*"))) == 6
    run_pipeline(make_cfg(), run, live=False, workers=2)
    assert calls(fake_log) == [], "finished classifiers are cached with --workers too"
    with pytest.raises(UserError, match="workers"):
        run_pipeline(make_cfg(), run, workers=0)


def test_run_workers_error_stops_the_pool_and_resumes(tmp_path: Path, fake_log: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    monkeypatch.setenv("FAKE_FAIL", "train")
    with pytest.raises(RuntimeError, match="fake train crashed"):
        run_pipeline(make_cfg(), run, live=False, workers=2)
    monkeypatch.delenv("FAKE_FAIL")
    calls(fake_log)
    run_pipeline(make_cfg(), run, live=False, workers=2)
    got = stages(calls(fake_log))
    assert got.count("train") == 6 and got[-1] == "report", got


def test_finetune_key_ignores_an_unset_later_generator_field() -> None:
    """Run directories made before ``generator.*.patch_size``, ``generator.ddpm.self_condition``,
    ``generator.*.average_checkpoints``, ``generator.ddpm.input_perturbation``, ``generator.ddpm.time_scale_shift``
    and ``generator.ddpm.timestep_importance`` existed keep their cached generator; setting one is a new generator."""
    from synthmed.pipeline import keys

    cfg = Config()
    up = keys.upstream_keys(cfg)
    old = cfg.generator.model_dump(mode="json", by_alias=True)
    for kind in ("ddpm", "edm"):
        assert old[kind].pop("patch_size") is None  # the field exists, unset
    assert old["ddpm"].pop("self_condition") is None
    assert old["ddpm"].pop("input_perturbation") is None
    assert old["ddpm"].pop("time_scale_shift") is None
    assert old["ddpm"].pop("timestep_importance") is None
    for kind in ("ddpm", "edm"):
        assert old[kind].pop("average_checkpoints") is None
    assert up.finetune == keys.digest({"stage": "finetune", "in": up.data, "generator": old})
    off = with_overrides(cfg, ["generator.ddpm.self_condition=false"])
    assert keys.upstream_keys(off).finetune == up.finetune  # false is the old behaviour: the same generator
    assert keys.upstream_keys(with_overrides(cfg, ["generator.ddpm.average_checkpoints=1"])).finetune == up.finetune
    for change in ("generator.ddpm.patch_size=2", "generator.ddpm.self_condition=true",
                   "generator.ddpm.input_perturbation=0.1",
                   "generator.ddpm.time_scale_shift=true",
                   "generator.ddpm.timestep_importance=0.75",
                   "generator.edm.average_checkpoints=2"):
        patched = with_overrides(cfg, [change])
        assert keys.upstream_keys(patched).finetune != up.finetune
        assert keys.upstream_keys(patched).data == up.data
