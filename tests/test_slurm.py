"""synthmed sweep --launcher slurm: parameters reaching submitit, sbatch scripts, and whole sweeps run through
submitit's local executor (fake stages) compared with a local sweep; failures, --no-wait, --merge, bad input."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
import yaml

from synthmed.cli import main
from synthmed.config import Config, with_overrides
from synthmed.errors import UserError
from synthmed.pipeline import slurm
from synthmed.pipeline.stages import STAGES
from synthmed.pipeline.sweep import run_sweep
import test_pipeline_fakes as fakes
from test_pipeline import calls, fake_log, stages  # noqa: F401 - fixture re-export
from test_sweep import sweep_cfg

TESTS = Path(__file__).resolve().parent
GRID = {"mix.ratio": [0.0, 1.0], "seed": [0, 1]}


def write_cfg(path: Path, cfg: Config) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False))
    return path


@pytest.fixture()
def local_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs started by submitit's local executor import the fake stages from tests/."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def local_cfg(grid: dict, shards: int = 2) -> Config:
    return with_overrides(sweep_cfg(grid), {"sweep.launcher": "slurm", "sweep.slurm.cluster": "local",
                                            "sweep.slurm.shards": shards, "sweep.slurm.poll_s": 0.2})


def table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path).sort_values("train_key").reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ parameters


class FakeJob:
    def __init__(self, folder: str, job_id: str, state: str = "PENDING") -> None:
        self.job_id, self.state = job_id, state
        base = Path(folder.replace("%j", job_id))
        self.paths = SimpleNamespace(result_pickle=base / "none.pkl", stderr=base / f"{job_id}_0_log.err")


class FakeExecutor:
    made: list[FakeExecutor] = []

    def __init__(self, folder: str, cluster: str) -> None:
        self.folder, self.cluster, self.params, self.calls = folder, cluster, [], []
        FakeExecutor.made.append(self)

    def update_parameters(self, **kw: Any) -> None:
        self.params.append(kw)

    def submit(self, fn: Any, *args: Any) -> FakeJob:
        self.calls.append((fn, args))
        return FakeJob(self.folder, "100")

    def map_array(self, fn: Any, *columns: Any) -> list[FakeJob]:
        self.calls.append((fn, list(zip(*columns))))
        return [FakeJob(self.folder, f"101_{i}") for i in range(len(columns[0]))]


def test_parameters_reach_the_executor(tmp_path: Path, fake_log: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                       capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("submitit")
    FakeExecutor.made = []
    fake = SimpleNamespace(AutoExecutor=FakeExecutor, SlurmJob=lambda folder, job_id: FakeJob(folder, job_id, "RUNNING"),
                           LocalJob=None)
    monkeypatch.setattr(slurm, "load_submitit", lambda: fake)
    cfg, run = write_cfg(tmp_path / "c.yaml", sweep_cfg(GRID)), tmp_path / "run"
    argv = ["sweep", str(cfg), "-o", str(run), "--launcher", "slurm", "--no-wait", "--partition", "gpu", "--time", "30",
            "--gpus", "1", "--cpus", "8", "--mem", "32", "--array-parallelism", "3", "--shards", "3",
            "--set", "sweep.slurm.upstream_time_min=240", "--set", "sweep.slurm.account=lab",
            "--set", "sweep.slurm.setup=[module load cuda]", "--set", "sweep.slurm.additional={exclude: n1}"]
    assert main(argv) == 0, capsys.readouterr().err
    up, arr = FakeExecutor.made
    assert up.cluster == arr.cluster == "slurm" and up.folder == str(run / "sweep" / "slurm" / "%j")
    common = {"gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 32.0, "slurm_partition": "gpu",
              "slurm_array_parallelism": 3, "slurm_account": "lab", "slurm_setup": ["module load cuda"]}
    assert up.params == [{**common, "name": "synthmed-sweep-upstream", "timeout_min": 240,
                          "slurm_additional_parameters": {"exclude": "n1"}}]
    assert arr.params == [{**common, "name": "synthmed-sweep", "timeout_min": 30, "slurm_dependency": "afterok:100",
                           "slurm_additional_parameters": {"exclude": "n1", "kill_on_invalid_dep": "yes"}}]
    (fn_up, args_up), = up.calls
    (fn_arr, tasks), = arr.calls
    assert fn_up.fn is slurm.upstream_job and args_up[1] == str(run)
    again = fn_arr.checkpoint(*tasks[1])  # preempted / timed out: submitit requeues the same call
    assert again.function is fn_arr and again.args == tasks[1]
    assert fn_arr.fn is slurm.shard_job and [(t[2], t[3], t[4]) for t in tasks] == [(0, 3, 1), (1, 3, 1), (2, 3, 1)]
    assert Config.model_validate(tasks[0][0]).sweep.grid == GRID, "the job gets the whole resolved config"
    rec = json.loads((run / "sweep" / "slurm" / "submission.json").read_text())
    assert [j["job_id"] for j in rec["jobs"]] == ["100", "101_0", "101_1", "101_2"]
    assert stages(calls(fake_log)) == [], "the launcher itself runs no stage"
    # the recorded jobs are still running: a second submission is refused (exit 2), --merge --no-wait merges nothing new
    assert main(argv) == 2 and "still active" in capsys.readouterr().err
    assert main(["sweep", str(cfg), "-o", str(run), "--merge", "--no-wait"]) == 0
    assert "4 job(s) still active" in capsys.readouterr().err


def test_sbatch_scripts_with_fake_slurm_commands(tmp_path: Path, fake_log: Path,  # noqa: F811
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {"srun": "exit 0\n",
               "sbatch": f'n=$(cat {tmp_path}/n 2>/dev/null || echo 41); n=$((n+1)); echo $n > {tmp_path}/n\n'
                         f'cp "$1" {tmp_path}/sbatch-$n.sh; echo "Submitted batch job $n"\n'}
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cfg = with_overrides(sweep_cfg(GRID), {"sweep.slurm": {"partition": "gpu", "time_min": 90, "gpus_per_job": 2,
                                                            "cpus_per_task": 6, "mem_gb": 1.5, "array_parallelism": 2,
                                                            "setup": ["module load cuda/12"]}})
    assert slurm.launch_sweep(cfg, tmp_path / "run", wait=False) is None
    upstream, array = (tmp_path / "sbatch-42.sh").read_text(), (tmp_path / "sbatch-43.sh").read_text()
    for text in (upstream, array):
        for line in ["#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2", "#SBATCH --cpus-per-task=6",
                     "#SBATCH --mem=1536MB", "module load cuda/12"]:
            assert line in text
    assert "#SBATCH --time=90" in array and "#SBATCH --array=0-3%2" in array
    assert "#SBATCH --dependency=afterok:42" in array and "#SBATCH --kill-on-invalid-dep=yes" in array
    assert "--dependency" not in upstream and "--array" not in upstream
    assert f"{tmp_path}/run/sweep/slurm/%A_%a/%A_%a_0_log.err" in array, "logs live under the sweep dir"
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: nope' >&2\nexit 1\n")
    with pytest.raises(UserError, match="the cluster refused the job: sbatch: error: invalid partition specified"):
        slurm.launch_sweep(with_overrides(cfg, {"sweep.slurm.partition": "nope"}), tmp_path / "run2", wait=False)


def test_slurm_job_states_and_failure_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = str(tmp_path / "%j")
    job = FakeJob(folder, "7_1", "CANCELLED by 1234")
    assert slurm.job_state(job, "slurm") == ("CANCELLED", "ended as CANCELLED without a result")
    job.state = "PENDING"
    assert slurm.job_state(job, "slurm")[0] in slurm.ACTIVE
    job.state, seen = "COMPLETED", {}
    assert slurm.job_state(job, "slurm", seen) == ("COMPLETING", ""), "a result file may lag on a shared filesystem"
    seen[job.job_id] -= slurm.RESULT_GRACE_S + 1
    assert slurm.job_state(job, "slurm", seen)[0] == "LOST", "COMPLETED without a result is not a success"
    timeout = FakeJob(folder, "7_2", "TIMEOUT")
    tracked = [slurm.Tracked("shard 1/4", FakeJob(folder, "7_1", "RUNNING"), 1), slurm.Tracked("shard 2/4", timeout, 2)]
    states = {t.label: slurm.job_state(t.job, "slurm") for t in tracked}
    lines = slurm.report_failures(tracked, states)
    assert lines == [f"failed: shard 2/4 (job 7_2) TIMEOUT: ended as TIMEOUT without a result; "
                     f"log: {tmp_path / '7_2' / '7_2_0_log.err'}"]
    assert capsys.readouterr().err.splitlines() == lines


def test_jobs_get_the_same_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The job validates the config back from JSON: a preset's defaults must not turn into explicit settings (the DDPM
    XS preset has 1 layer per block; a full dump would mark the field's default, 2, as set and build another model)."""
    from synthmed.config import load_config
    from synthmed.generators.ddpm.model import resolve_arch

    cfg = load_config(TESTS.parent / "configs" / "smoke.yaml", ["sweep.launcher=slurm"])
    back = Config.model_validate(slurm.portable(cfg))
    assert back.model_dump(mode="json") == cfg.model_dump(mode="json")
    assert resolve_arch(back.generator.ddpm) == resolve_arch(cfg.generator.ddpm)
    assert resolve_arch(back.generator.ddpm)["layers_per_block"] == 1
    FakeExecutor.made = []  # and through the command line, with SLURM flags
    monkeypatch.setattr(slurm, "load_submitit", lambda: SimpleNamespace(AutoExecutor=FakeExecutor))
    assert main(["sweep", str(TESTS.parent / "configs" / "smoke.yaml"), "-o", str(tmp_path / "run"), "--launcher",
                 "slurm", "--no-wait", "--partition", "on", "--shards", "1"]) == 0, capsys.readouterr().err
    up, arr = FakeExecutor.made
    job_cfg = Config.model_validate(up.calls[0][1][0])
    assert resolve_arch(job_cfg.generator.ddpm)["layers_per_block"] == 1
    assert job_cfg.sweep.slurm.partition == "on" and arr.params[0]["slurm_partition"] == "on"


# ------------------------------------------------------------------------------------------------ local executor


def flaky_train(cfg: Any, run_dir: Path, policies: list[str] | None = None, seeds: list[int] | None = None,
                data: Any = None) -> list[dict]:
    """The fake train stage, failing for the seed named by $FLAKY_SEED (it reaches the jobs by reference)."""
    if seeds and os.environ.get("FLAKY_SEED") == str(seeds[0]):
        raise RuntimeError(f"flaky seed {seeds[0]}")
    return fakes.train(cfg, run_dir, policies, seeds, data)


@pytest.mark.slow  # three waves of job processes, each importing the stage modules (torch, sklearn)
def test_local_executor_sweep(tmp_path: Path, fake_log: Path, local_jobs: None,  # noqa: F811
                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Upstream job, then a 2-task array where one task fails (reported, partial merge, exit 1); --no-wait resubmits
    only that shard, --merge collects it: results.csv equals a local sweep's."""
    pytest.importorskip("submitit")
    run_sweep(sweep_cfg(GRID), tmp_path / "local", live=False)
    calls(fake_log)
    monkeypatch.setattr(STAGES, "train", flaky_train)
    monkeypatch.setenv("FLAKY_SEED", "1")  # classifier i goes to shard i % 2: shard 1 holds the seed-1 classifiers
    run, cfg = tmp_path / "run", write_cfg(tmp_path / "c.yaml", local_cfg(GRID))
    assert main(["sweep", str(cfg), "-o", str(run)]) == 1  # sweep.launcher: slurm comes from the config
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1 and failed[0].startswith("failed: shard 1/2 (job ") and "RuntimeError: flaky seed 1" in failed[0]
    log = Path(failed[0].rsplit("; log: ", 1)[1])
    assert log.is_file() and (run / "sweep" / "slurm") in log.parents and "flaky seed 1" in log.read_text()
    assert "jobs: " in err and "merged 2 of 4" in err and "error: 1 of 2 job(s) failed" in err
    got = stages(calls(fake_log))
    assert sorted(s for s in got if s != "report") == ["data", "finetune", "generate", "quality", "train", "train"]
    monkeypatch.delenv("FLAKY_SEED")
    assert main(["sweep", str(cfg), "-o", str(run), "--no-wait"]) == 0
    assert "--merge" in capsys.readouterr().err
    assert [j["label"] for j in json.loads((run / "sweep" / "slurm" / "submission.json").read_text())["jobs"]] == [
        "shard 1/2"], "only the failed shard is resubmitted"
    assert main(["sweep", str(cfg), "-o", str(run), "--merge"]) == 0
    assert "merged 4 of 4" in capsys.readouterr().err
    assert sorted(s for s in stages(calls(fake_log)) if s != "report") == ["train", "train"]
    assert table(run / "results.csv").equals(table(tmp_path / "local" / "results.csv"))
    assert (run / "results.shard-0-of-2.csv").is_file() and (run / "report.html").is_file()
    assert not list(run.glob(".synthmed.lock*.json")), "every lock was released"
    assert main(["sweep", str(cfg), "-o", str(run)]) == 0
    assert "nothing to submit" in capsys.readouterr().err and stages(calls(fake_log)) == []


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_input_is_one_line_exit_2(tmp_path: Path, fake_log: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                      capsys: pytest.CaptureFixture[str]) -> None:
    cfg, run = write_cfg(tmp_path / "c.yaml", sweep_cfg(GRID)), tmp_path / "run"
    base = ["sweep", str(cfg), "-o", str(run)]
    cases = [
        (["--launcher", "slurm", "--shard", "0/2"], "drop --shard"),
        (["--merge", "--shard", "0/2"], "drop --shard"),
        (["--partition", "gpu"], "--partition: SLURM settings, add --launcher slurm"),
        (["--no-wait"], "--no-wait needs --launcher slurm"),
        (["--launcher", "pbs"], "sweep.launcher"),
        (["--launcher", "slurm", "--time", "0"], "sweep.slurm.time_min"),
        (["--launcher", "slurm", "--set", "sweep.slurm.gpu=1"], "sweep.slurm.gpu"),
    ]
    monkeypatch.setitem(sys.modules, "submitit", None)  # not installed
    cases.append((["--launcher", "slurm"], "needs submitit, which is not installed: pip install 'synthmed[slurm]'"))
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, (extra, err)
    assert not run.exists(), "a refused sweep writes nothing"
    with pytest.raises(UserError, match="shared stages .* have not finished"):
        run_sweep(sweep_cfg(GRID), run, shard=(0, 2), phase="train", live=False)


def test_no_srun_is_exit_2(tmp_path: Path, fake_log: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                           capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    cfg = write_cfg(tmp_path / "c.yaml", sweep_cfg(GRID))
    assert main(["sweep", str(cfg), "-o", str(tmp_path / "run"), "--launcher", "slurm"]) == 2
    assert "srun" in capsys.readouterr().err
