"""``synthmed sweep --launcher slurm``: a sweep on a SLURM cluster, as a job array submitted through submitit.

1. The launcher (this process, on a login node) plans the grid and merges the results that already exist; nothing is
   submitted when every classifier of the grid has a row.
2. When a shared stage (data, finetune, generate, quality) has not finished, one job runs them first (``run_sweep``
   phase ``upstream``, holding the run directory's lock).
3. Classifier ``i`` of the grid belongs to shard ``i % N`` (``N`` = ``sweep.slurm.shards``, default one shard per
   classifier); the shards with work left go out as one job array. Each task trains its shard (phase ``train``),
   holding its shard lock and writing only ``results.shard-I-of-N.csv``.
4. Waiting (the default), the launcher prints the job states as they change and one line per failed job (its
   shard, state, error and log), then merges the shard files into ``results.csv`` and rebuilds the report.
   ``--no-wait`` returns once submitted (on SLURM the array waits for the upstream job: ``--dependency=afterok``);
   ``synthmed sweep --merge`` collects the results later, and rerunning the launcher resubmits only what is missing.

Jobs (pickled calls, results, ``*_log.out`` / ``*_log.err``) live in ``RunLayout.sweep_jobs`` = ``RUN_DIR/sweep/slurm/
<job id>/``; the last submission is recorded in ``RunLayout.sweep_submission``. The stage functions of this process
travel with each job (as with ``--workers``), so substituted stages reach the jobs too.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from synthmed.config import Config, SlurmConfig, save_resolved
from synthmed.errors import ConfigError, UserError
from synthmed.io import atomic_write_json
from synthmed.layout import RunLayout
from synthmed.lock import run_lock
from synthmed.pipeline.stages import STAGES, Stages
from synthmed.pipeline.sweep import merge_sweep, missing_upstream, plan_sweep, run_sweep, upstream_groups

INSTALL_HINT = "pip install 'synthmed[slurm]'"
#: job states that are not final (``UNKNOWN``: not yet, or no longer, in sacct's answer)
ACTIVE = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
                    "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "UNKNOWN"})
RESULT_GRACE_S = 60.0  # a job SLURM calls COMPLETED whose result file a slow shared filesystem has not shown yet


class ShardsFailedError(UserError):
    """Jobs of the sweep failed (each one reported on its own line before this one); exit code 1."""

    exit_code = 1


def _say(message: str) -> None:
    print(f"[synthmed sweep] {message}", file=sys.stderr, flush=True)


def _fmt(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else (f"{m}m{s:02d}s" if m else f"{s}s")


def portable(cfg: Config) -> dict[str, Any]:
    """``cfg`` as the JSON a job validates back into the same config: only the keys that were set, so that settings
    read with ``model_fields_set`` (a DDPM preset's defaults, explicit flips) mean in the job what they mean here."""
    return cfg.model_dump(mode="json", by_alias=True, exclude_unset=True)


def load_submitit() -> Any:
    """The submitit module, or a one-line ConfigError (exit 2) naming the install command."""
    try:
        import submitit
    except ImportError:
        raise ConfigError(f"sweep.launcher slurm needs submitit, which is not installed: {INSTALL_HINT}") from None
    return submitit


def executor_parameters(scfg: SlurmConfig, name: str, upstream: bool = False,
                        dependency: str | None = None) -> dict[str, Any]:
    """The arguments of ``executor.update_parameters`` for one submission (unset settings left out)."""
    extra = dict(scfg.additional)
    if dependency:  # a failed upstream job then cancels the array instead of leaving it pending for ever
        extra.setdefault("kill_on_invalid_dep", "yes")
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": (scfg.upstream_time_min or scfg.time_min) if upstream else scfg.time_min,
        "gpus_per_node": scfg.gpus_per_job or None,
        "cpus_per_task": scfg.cpus_per_task,
        "mem_gb": scfg.mem_gb,
        "slurm_partition": scfg.partition,
        "slurm_array_parallelism": scfg.array_parallelism,
        "slurm_account": scfg.account,
        "slurm_qos": scfg.qos,
        "slurm_constraint": scfg.constraint,
        "slurm_setup": list(scfg.setup) or None,
        "slurm_dependency": dependency,
        "slurm_additional_parameters": extra or None,
    }
    return {k: v for k, v in params.items() if v is not None}


def make_executor(submitit: Any, scfg: SlurmConfig, run_dir: Path, params: dict[str, Any]) -> Any:
    """A submitit executor writing under ``RUN_DIR/sweep/slurm/<job id>/``, with ``params`` applied."""
    folder = RunLayout(run_dir).sweep_jobs
    folder.mkdir(parents=True, exist_ok=True)
    try:
        executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=scfg.cluster)
    except RuntimeError as err:  # no srun on PATH: not a SLURM machine
        raise UserError(f"sweep.launcher slurm: {err} (submit from a login node of the cluster, or set "
                        f"sweep.slurm.cluster: local to run the jobs on this machine)") from None
    executor.update_parameters(**params)
    return executor


def _submitted(submit: Callable[[], Any]) -> Any:
    """Run ``submit``; sbatch refusing the job (a bad partition, account ...) is a one-line UserError."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    try:
        return submit()
    except (FailedJobError, FailedSubmissionError, OSError) as err:
        raise UserError(f"the cluster refused the job: {_last_line(str(err))} (check sweep.slurm)") from None


# ---------------------------------------------------------------------------------------------- job bodies


def _install(stages: Stages | None) -> None:
    if stages is not None:
        for f in fields(Stages):
            setattr(STAGES, f.name, getattr(stages, f.name))


def upstream_job(cfg_json: dict[str, Any], run_dir: str, stages: Stages | None = None) -> dict[str, Any]:
    """Job body: the shared stages the classifiers still to train need, holding the run directory's lock."""
    _install(stages)
    cfg = Config.model_validate(cfg_json)
    with run_lock(run_dir, "sweep", argv=["synthmed", "sweep", "(SLURM job: shared stages)"]):
        run_sweep(cfg, run_dir, phase="upstream", live=False)
    return {"phase": "upstream"}


def shard_job(cfg_json: dict[str, Any], run_dir: str, index: int, count: int, workers: int = 1,
              stages: Stages | None = None) -> dict[str, Any]:
    """Job body (one array task): train shard ``index`` of ``count``, holding that shard's lock."""
    _install(stages)
    cfg = Config.model_validate(cfg_json)
    argv = ["synthmed", "sweep", f"(SLURM array task: shard {index}/{count})"]
    # shards starting together each probe the run directory's main lock for an instant: the probe waits for the
    # others' (lock.PROBE_TIMEOUT_S), so a refusal here means a real whole-directory writer or a duplicate shard
    with run_lock(run_dir, "sweep", shard=index, argv=argv):
        path = run_sweep(cfg, run_dir, workers=workers, shard=(index, count), phase="train", live=False)
    return {"shard": index, "of": count, "results": str(path)}


@dataclass
class Resumable:
    """A job body that SLURM requeues when it is preempted or reaches its time limit (submitit calls ``checkpoint``
    on the signal sent 90 s before; at most 3 timeouts): the requeued job resumes, as a rerun does (classifiers with a
    row are skipped, the stages resume from their own checkpoints)."""

    fn: Callable[..., Any]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


# ---------------------------------------------------------------------------------------------- job states


@dataclass
class Tracked:
    """One submitted job: ``label`` (``upstream`` or ``shard I/N``), the submitit job, its shard index."""

    label: str
    job: Any
    shard: int | None = None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else "no error text"


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except OSError:
        return True
    return True


def job_state(job: Any, cluster: str, seen: dict[str, float] | None = None) -> tuple[str, str]:
    """``(STATE, detail)``: COMPLETED, FAILED (with the error's last line), a SLURM state, or RUNNING / LOST."""
    from submitit.core.utils import pickle_load

    path = job.paths.result_pickle
    if path.exists():
        try:
            outcome, payload = pickle_load(path)
        except Exception:  # noqa: BLE001 - still being written
            return "COMPLETING", ""
        return ("COMPLETED", "") if outcome == "success" else ("FAILED", _last_line(payload))
    raw = str(job.state or "UNKNOWN")
    if cluster == "local":
        if raw == "RUNNING" or (raw.startswith("NO PROCESS") and _pid_alive(job.job_id)):
            return "RUNNING", ""
        if path.exists():  # finished between the two checks
            return job_state(job, cluster, seen)
        return ("CANCELLED", "interrupted") if raw == "INTERRUPTED" else ("LOST", "ended without a result")
    state = (raw.split() or ["UNKNOWN"])[0].upper()
    if state == "COMPLETED":
        first = seen.setdefault(job.job_id, time.monotonic()) if seen is not None else None
        if first is not None and time.monotonic() - first < RESULT_GRACE_S:
            return "COMPLETING", ""
        return "LOST", "SLURM says COMPLETED but its result file never appeared"
    return state, "" if state in ACTIVE else f"ended as {state} without a result"


def wait_for(tracked: list[Tracked], cluster: str, poll_s: float) -> dict[str, tuple[str, str]]:
    """Poll until no job is active, printing the job states whenever they change; returns the final states."""
    t0, last, seen = time.monotonic(), "", {}
    while True:
        states = {t.label: job_state(t.job, cluster, seen) for t in tracked}
        counts = Counter(s for s, _ in states.values())
        line = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        if line != last:
            _say(f"jobs: {line} ({_fmt(time.monotonic() - t0)})")
            last = line
        if not any(s in ACTIVE for s, _ in states.values()):
            return states
        time.sleep(poll_s)


def report_failures(tracked: list[Tracked], states: dict[str, tuple[str, str]]) -> list[str]:
    """One line per finished job that did not complete: its shard, job id, state, error and log file."""
    lines = []
    for t in tracked:
        state, detail = states[t.label]
        if state != "COMPLETED" and state not in ACTIVE:
            lines.append(f"failed: {t.label} (job {t.job.job_id}) {state}: {detail}; log: {t.job.paths.stderr}")
    for line in lines:
        print(line, file=sys.stderr, flush=True)
    return lines


def _record(run_dir: Path, cluster: str, count: int, tracked: list[Tracked]) -> None:
    atomic_write_json(RunLayout(run_dir).sweep_submission, {
        "cluster": cluster, "shards": count, "submitted": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "jobs": [{"label": t.label, "job_id": t.job.job_id, "shard": t.shard} for t in tracked]})


def reattach(submitit: Any, run_dir: Path) -> tuple[str, list[Tracked]]:
    """The jobs of the last submission recorded in ``run_dir`` (none when there is no record)."""
    path = RunLayout(run_dir).sweep_submission
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
        cluster, jobs = str(rec["cluster"]), list(rec["jobs"])
    except (OSError, ValueError, KeyError, TypeError):
        return "", []
    cls = submitit.SlurmJob if cluster == "slurm" else submitit.LocalJob
    folder = str(RunLayout(run_dir).sweep_jobs / "%j")
    return cluster, [Tracked(str(j["label"]), cls(folder=folder, job_id=str(j["job_id"])), j.get("shard"))
                     for j in jobs]


# ---------------------------------------------------------------------------------------------- commands


def _merge(cfg: Config, run_dir: Path, failed: list[str], total: int) -> Path:
    with run_lock(run_dir, "sweep", argv=["synthmed", "sweep", "--merge"]):
        path, missing = merge_sweep(cfg, run_dir)
    n = len(plan_sweep(cfg, run_dir))
    _say(f"merged {n - len(missing)} of {n} classifier result(s) into {path}")
    if failed:
        raise ShardsFailedError(f"{len(failed)} of {total} job(s) failed (listed above), {len(missing)} classifier(s) "
                                f"have no result: rerun `synthmed sweep --launcher slurm` to resubmit only those")
    return path


def launch_sweep(cfg: Config, run_dir: str | Path, workers: int = 1, wait: bool = True) -> Path | None:
    """Submit the sweep's missing classifiers as a job array (after a job for the shared stages when needed).

    Waiting, returns ``results.csv`` once merged; with ``wait=False`` returns None right after submitting."""
    run_dir, scfg = Path(run_dir), cfg.sweep.slurm
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    submitit = load_submitit()
    units = plan_sweep(cfg, run_dir)  # a bad grid is refused before anything is written or submitted
    cluster, earlier = reattach(submitit, run_dir)
    active = [t for t in earlier if job_state(t.job, cluster)[0] in ACTIVE]
    if active:
        raise UserError(f"{len(active)} job(s) of an earlier submission to {run_dir} are still active (job "
                        f"{active[0].job.job_id}...): wait for them with `synthmed sweep --merge`, or cancel them "
                        f"first")
    with run_lock(run_dir, "sweep", argv=["synthmed", "sweep", "--launcher", "slurm"]):
        save_resolved(cfg, run_dir)
        path, missing = merge_sweep(cfg, run_dir, report=False)
        if not missing:
            _say(f"every classifier of the grid has a result in {path}: nothing to submit")
            return path
        need_up = missing_upstream(upstream_groups(missing), run_dir)
    count = min(scfg.shards or len(units), len(units))
    index = {u.key: i for i, u in enumerate(units)}
    shards = sorted({index[u.key] % count for u in missing})
    cfg_json = portable(cfg)
    stages = Stages(**{f.name: getattr(STAGES, f.name) for f in fields(Stages)})
    dependency = None
    tracked: list[Tracked] = []
    if need_up:
        ex = make_executor(submitit, scfg, run_dir, executor_parameters(scfg, "synthmed-sweep-upstream", upstream=True))
        up = Tracked("upstream", _submitted(lambda: ex.submit(Resumable(upstream_job), cfg_json, str(run_dir), stages)))
        tracked.append(up)
        _record(run_dir, scfg.cluster, count, tracked)
        _say(f"job {up.job.job_id}: the shared stages first ({'; '.join(need_up)})")
        if wait or scfg.cluster != "slurm":  # the local executor has no dependencies: wait here
            states = wait_for([up], scfg.cluster, scfg.poll_s)
            if report_failures([up], states):
                raise ShardsFailedError("the job running the shared stages failed (see above): nothing else was "
                                        "submitted")
            tracked = []
        else:
            dependency = f"afterok:{up.job.job_id}"
    ex = make_executor(submitit, scfg, run_dir, executor_parameters(scfg, "synthmed-sweep", dependency=dependency))
    k = len(shards)
    jobs = _submitted(lambda: ex.map_array(Resumable(shard_job), [cfg_json] * k, [str(run_dir)] * k, shards,
                                           [count] * k, [workers] * k, [stages] * k))
    array = [Tracked(f"shard {i}/{count}", job, i) for i, job in zip(shards, jobs)]
    _record(run_dir, scfg.cluster, count, tracked + array)
    _say(f"job {str(jobs[0].job_id).split('_')[0]}: {k} array task(s) for {len(missing)} classifier(s) "
         f"({count} shard(s) in all); logs in {RunLayout(run_dir).sweep_jobs}")
    if not wait:
        _say(f"not waiting: collect the results with `synthmed sweep CONFIG -o {run_dir} --merge`")
        return None
    try:
        states = wait_for(array, scfg.cluster, scfg.poll_s)
    except KeyboardInterrupt:
        _say(f"stopped waiting; the jobs go on: collect them with `synthmed sweep CONFIG -o {run_dir} --merge`")
        raise
    return _merge(cfg, run_dir, report_failures(array, states), len(array))


def merge_jobs(cfg: Config, run_dir: str | Path, wait: bool = True) -> Path:
    """``synthmed sweep --merge``: wait for the recorded jobs (unless ``wait`` is False), report the failed ones and
    merge every shard's results into ``results.csv`` (also after ``--shard`` runs, with no jobs recorded)."""
    run_dir = Path(run_dir)
    plan_sweep(cfg, run_dir)
    tracked: list[Tracked] = []
    cluster = ""
    if RunLayout(run_dir).sweep_submission.is_file():
        try:
            cluster, tracked = reattach(load_submitit(), run_dir)
        except ConfigError:
            _say(f"submitit is not installed ({INSTALL_HINT}): job states unknown, merging the results files")
    seen: dict[str, float] = {}
    states = {t.label: job_state(t.job, cluster, seen) for t in tracked}
    if wait and any(s in ACTIVE for s, _ in states.values()):
        states = wait_for(tracked, cluster, cfg.sweep.slurm.poll_s)
    elif active := [label for label, (s, _) in states.items() if s in ACTIVE]:
        _say(f"{len(active)} job(s) still active ({', '.join(active[:5])}): merging what has finished")
    return _merge(cfg, run_dir, report_failures(tracked, states), len(tracked))
