"""The ``synthmed`` command line: one typer app; every verb is a thin call into a stage.

Exit codes: 0 success; 2 bad input or configuration (one line on stderr naming the culprit; ``--debug`` shows the
traceback); 1 internal error.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

try:  # recent typer vendors click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import ClickException

from synthmed import __version__
from synthmed.errors import UserError

app = typer.Typer(
    name="synthmed",
    help="Do synthetic diffusion images improve my medical-image classifier? Generate, vet, mix, train, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Inspect a real dataset.", no_args_is_help=True)
app.add_typer(data_app, name="data")

_STATE: dict = {"debug": False, "argv": []}

SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override a config key: --set a.b=c (repeatable)")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="turn data warnings into errors")]
OutOpt = Annotated[Path, typer.Option("-o", "--out", help="run directory")]
ConfigArg = Annotated[Path, typer.Argument(help="YAML config file")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"synthmed {__version__}")
        raise typer.Exit()


# Environment variables a command sets for itself and its subprocesses (restored when main() returns).
SCOPED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "SYNTHMED_TRUST_PICKLE")


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
    offline: Annotated[bool, typer.Option("--offline", help="never touch the network")] = False,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="allow loading pickled (non-safetensors) checkpoints")] = False,
) -> None:
    """synthmed command line."""
    _STATE["debug"] = debug
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    if trust_pickle:
        os.environ["SYNTHMED_TRUST_PICKLE"] = "1"


def _config(path: Path | None, overrides: list[str] | None, strict: bool, label_safe: bool = True):
    """The resolved config; for the verbs that train (``label_safe``), flips / rotations that would change a label
    are refused (explicit) or turned off with a warning (default), see ``data/orientation.py``."""
    from synthmed.config import load_config

    cfg = load_config(path, overrides, strict=strict or None)
    if cfg.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    if label_safe:
        from synthmed.api import label_safe_config

        cfg = label_safe_config(cfg)
    return cfg


@contextmanager
def _writer(cfg, out: Path, command: str, shard: int | None = None) -> Iterator[Path]:
    """Create the run directory, hold its writer lock (``synthmed.lock``) and save the resolved config.

    Every verb that writes into a run directory runs inside this; a second writer exits 2 naming the first."""
    from synthmed.config import save_resolved
    from synthmed.lock import run_lock

    with run_lock(out, command, shard=shard, argv=["synthmed", *_STATE["argv"]]):
        save_resolved(cfg, out)
        yield out


def _echo_main(message: str) -> None:
    """Print ``message`` once: on rank 0 of a command launched over several processes (torchrun / accelerate)."""
    from synthmed.lock import _launched_rank

    if _launched_rank() == 0:
        typer.echo(message)


# ------------------------------------------------------------------------------------------------ data


def _data_config(spec: str, config: Path | None, overrides: list[str] | None, strict: bool,
                 shots: int | None, long_tail: float | None, max_per_class: int | None, fraction: float | None):
    extra = [f"data.source={spec}"]
    if shots is not None:
        extra.append(f"data.shots={shots}")
    if long_tail is not None:
        extra.append(f"data.long_tail.ratio={long_tail}")
        if max_per_class is not None:
            extra.append(f"data.long_tail.max_per_class={max_per_class}")
    if fraction is not None:
        extra.append(f"data.fraction={fraction}")
    return _config(config, list(overrides or []) + extra, strict, label_safe=False)


@data_app.command("info")
def data_info(
    spec: Annotated[str, typer.Argument(help="npz:PATH | medmnist:NAME[:SIZE] | folder:PATH | csv:PATH | phantom:blood")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    config: Annotated[Optional[Path], typer.Option("-c", "--config", help="YAML config for the other data settings")] = None,
    shots: Annotated[Optional[int], typer.Option(help="K training images per class")] = None,
    long_tail: Annotated[Optional[float], typer.Option("--long-tail", help="long-tail ratio (head / tail)")] = None,
    max_per_class: Annotated[Optional[int], typer.Option(help="head-class size for --long-tail")] = None,
    fraction: Annotated[Optional[float], typer.Option(help="keep this fraction of train")] = None,
    set_: SetOpt = None,
    strict: StrictOpt = False,
) -> None:
    """Class names and counts per split and class."""
    cfg = _data_config(spec, config, set_, strict, shots, long_tail, max_per_class, fraction)
    from synthmed.data.info import describe_source, format_info

    summary = describe_source(cfg.data)
    for warning in summary.get("warnings", []):
        typer.echo(f"warning: {warning}", err=True)
    near = summary.get("near_duplicates")
    text = json.dumps(summary, indent=2) if as_json else format_info(summary)
    if not as_json and near and near.get("removed"):
        per = ", ".join(f"{v} of {k}" for k, v in near["per_split"].items() if v)
        text += (f"\nnear-duplicates of val/test removed from training: {near['removed']} ({per}; "
                 f"pHash distance <= {near['distance']})")
    typer.echo(text)


@data_app.command("show")
def data_show(
    spec: Annotated[str, typer.Argument(help="data source spec")],
    out: Annotated[Path, typer.Option("-o", "--out", help="PNG file to write")],
    per_class: Annotated[int, typer.Option(help="images per row")] = 8,
    config: Annotated[Optional[Path], typer.Option("-c", "--config")] = None,
    set_: SetOpt = None,
    strict: StrictOpt = False,
) -> None:
    """A sample grid, one row per class."""
    cfg = _data_config(spec, config, set_, strict, None, None, None, None)
    from synthmed.data.load import load_data
    from synthmed.data.show import save_grid

    path = save_grid(load_data(cfg.data), out, per_class=per_class)
    typer.echo(f"wrote {path}")


# ------------------------------------------------------------------------------------------------ stages


@app.command()
def finetune(config: ConfigArg, out: OutOpt, set_: SetOpt = None, strict: StrictOpt = False) -> None:
    """Train (ddpm) or fine-tune (stable_diffusion) the generator; resumes from the latest checkpoint."""
    cfg = _config(config, set_, strict)
    from synthmed.generators.stage import finetune as run_finetune
    with _writer(cfg, out, "finetune") as run_dir:
        path = run_finetune(cfg, run_dir)
    _echo_main(f"generator saved to {path}")


@app.command()
def generate(config: ConfigArg, out: OutOpt, set_: SetOpt = None, strict: StrictOpt = False) -> None:
    """Sample synthetic images per class into RUN_DIR/synthetic (resumable)."""
    cfg = _config(config, set_, strict)
    from synthmed.generators.stage import generate as run_generate
    with _writer(cfg, out, "generate") as run_dir:
        path = run_generate(cfg, run_dir)
    _echo_main(f"synthetic set in {path}")


@app.command()
def quality(config: ConfigArg, out: OutOpt, set_: SetOpt = None, strict: StrictOpt = False) -> None:
    """Fidelity, diversity, CAS and memorization audit of the synthetic set; applies the filter."""
    cfg = _config(config, set_, strict)
    from synthmed.quality.stage import run_quality
    with _writer(cfg, out, "quality") as run_dir:
        path = run_quality(cfg, run_dir)
    typer.echo(f"quality report in {path}")


@app.command()
def train(
    config: ConfigArg,
    out: OutOpt,
    policy: Annotated[Optional[list[str]], typer.Option("--policy", help="policy name from run.policies (repeatable); default: every policy in run.policies")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="comma-separated seeds (default: run.seeds)")] = None,
    force: Annotated[bool, typer.Option("--force", help="retrain runs that already have metrics.json")] = False,
    set_: SetOpt = None,
    strict: StrictOpt = False,
) -> None:
    """Train classifiers on real (+ synthetic) images; select on real val; test on real test."""
    cfg = _config(config, set_, strict)
    from synthmed.classifiers.stage import train as run_train
    seed_list = _parse_seeds(seeds)
    with _writer(cfg, out, "train") as run_dir:
        rows = run_train(cfg, run_dir, policies=policy, seeds=seed_list, force=force)
    _echo_main(f"trained {len(rows)} classifier(s) in {out / 'classifiers'}")


def _parse_seeds(seeds: str | None) -> list[int] | None:
    if seeds is None:
        return None
    try:
        return [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got '{seeds}'") from None


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="run directory")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Print the metrics table (mean, std, 95% CI over seeds; paired differences)."""
    from synthmed.metrics.evaluate import evaluate_run

    typer.echo(evaluate_run(run_dir, as_json=as_json))


@app.command()
def run(
    config: ConfigArg,
    out: OutOpt,
    force: Annotated[Optional[list[str]], typer.Option("--force", help="rerun this stage (repeatable)")] = None,
    workers: Annotated[int, typer.Option(help="parallel processes for the classifier runs")] = 1,
    set_: SetOpt = None,
    strict: StrictOpt = False,
) -> None:
    """The whole chain: data, finetune, generate, quality/filter, train, evaluate, report (cached, resumable)."""
    cfg = _config(config, set_, strict)
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    from synthmed.pipeline.run import run_pipeline
    with _writer(cfg, out, "run") as run_dir:
        report = run_pipeline(cfg, run_dir, force=list(force or []), workers=workers)
    typer.echo(f"report: {report}")


SLURM_FLAGS = {"partition": "--partition", "time_min": "--time", "gpus_per_job": "--gpus", "cpus_per_task": "--cpus",
               "mem_gb": "--mem", "array_parallelism": "--array-parallelism", "shards": "--shards"}


@app.command()
def sweep(
    config: ConfigArg,
    out: OutOpt,
    workers: Annotated[int, typer.Option(help="parallel processes (per array task with --launcher slurm)")] = 1,
    shard: Annotated[Optional[str], typer.Option(help="i/n: run only shard i of n (0-based)")] = None,
    launcher: Annotated[Optional[str], typer.Option(help="local | slurm: a SLURM job array through submitit (default: sweep.launcher)")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="slurm: wait for the jobs and merge their results (--no-wait: submit and return)")] = True,
    merge: Annotated[bool, typer.Option("--merge", help="collect the finished shards' results into results.csv (trains nothing)")] = False,
    partition: Annotated[Optional[str], typer.Option(help="slurm: partition (sweep.slurm.partition)")] = None,
    time_min: Annotated[Optional[int], typer.Option("--time", help="slurm: time limit per job in minutes")] = None,
    gpus: Annotated[Optional[int], typer.Option(help="slurm: GPUs per job")] = None,
    cpus: Annotated[Optional[int], typer.Option(help="slurm: CPUs per task")] = None,
    mem: Annotated[Optional[float], typer.Option(help="slurm: memory per job in GB")] = None,
    array_parallelism: Annotated[Optional[int], typer.Option(help="slurm: at most this many array tasks at once")] = None,
    shards: Annotated[Optional[int], typer.Option(help="slurm: array tasks over the grid (default: one per classifier)")] = None,
    set_: SetOpt = None,
    strict: StrictOpt = False,
) -> None:
    """A grid over config keys sharing one generator and synthetic set; appends to RUN_DIR/results.csv."""
    flags = dict(zip(SLURM_FLAGS, (partition, time_min, gpus, cpus, mem, array_parallelism, shards)))
    given = {f"sweep.slurm.{k}": v for k, v in flags.items() if v is not None}
    if launcher is not None:
        given["sweep.launcher"] = launcher
    # applied as overrides (JSON is YAML: a partition named "on" stays a string), not with_overrides(), which would
    # mark every default as set and so change what a preset's defaults mean (e.g. the DDPM XS preset's layers)
    cfg = _config(config, list(set_ or []) + [f"{k}={json.dumps(v)}" for k, v in given.items()], strict)
    from synthmed.pipeline.sweep import parse_shard, run_sweep
    shard_spec = parse_shard(shard)
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    slurm = cfg.sweep.launcher == "slurm"
    if shard_spec and (merge or slurm):
        raise UserError("--shard runs one shard here; " + ("--merge collects every shard" if merge else
                        "--launcher slurm splits the grid itself (--shards N)") + ": drop --shard")
    if not slurm and not merge:
        if not wait:
            raise UserError("--no-wait needs --launcher slurm (a local sweep runs in this process)")
        if used := [SLURM_FLAGS[k] for k, v in flags.items() if v is not None]:
            raise UserError(f"{', '.join(used)}: SLURM settings, add --launcher slurm")
    if merge or slurm:
        from synthmed.pipeline.slurm import launch_sweep, merge_jobs  # each takes the run directory's lock itself
        path = merge_jobs(cfg, out, wait=wait) if merge else launch_sweep(cfg, out, workers=workers, wait=wait)
        if path is not None:
            typer.echo(f"results: {path}")
        return
    with _writer(cfg, out, "sweep", shard=shard_spec[0] if shard_spec else None) as run_dir:
        path = run_sweep(cfg, run_dir, workers=workers, shard=shard_spec)
    typer.echo(f"results: {path}")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="run directory")]) -> None:
    """Write RUN_DIR/report.html (self-contained). Takes no lock: it reads files written atomically and writes
    report.html atomically; while a writer is active it says so (the report is then a snapshot)."""
    from synthmed.lock import active_holder, describe
    from synthmed.report.html import build_report

    holder = active_holder(run_dir) if run_dir.is_dir() else None
    if holder is not None:
        typer.echo(f"warning: {run_dir} is being written by {describe(holder)}; this report is a snapshot", err=True)

    typer.echo(f"report: {build_report(run_dir)}")


# ------------------------------------------------------------------------------------------------ entry


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and map exceptions to exit codes (0 ok, 2 bad input, 1 internal error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    _STATE["argv"] = args
    saved_env = {k: os.environ.get(k) for k in SCOPED_ENV}
    try:
        result = app(args=args, prog_name="synthmed", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except typer.Exit as err:
        code = err.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        code = 130
    except ClickException as err:  # usage errors (unknown option, missing argument): one line, like every error
        ctx = getattr(err, "ctx", None)
        where = ctx.command_path if ctx is not None else "synthmed"
        typer.echo(f"error: {err.format_message()} (see `{where} --help`)", err=True)
        code = 2
    except UserError as err:
        if debug:
            traceback.print_exc()
        typer.echo(f"error: {err}", err=True)
        code = err.exit_code
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        code = 130
    except OSError as err:
        if debug:
            traceback.print_exc()
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            where = err.filename or "the output"
            typer.echo(f"error: disk full while writing {where}: free some space and rerun (finished work is kept)", err=True)
            code = 2
        else:
            typer.echo(f"internal error: {err.__class__.__name__}: {err} (rerun with --debug for the traceback)", err=True)
            code = 1
    except Exception as err:  # noqa: BLE001 - the catch-all for internal errors
        if debug:
            traceback.print_exc()
        typer.echo(f"internal error: {err.__class__.__name__}: {err} (rerun with --debug for the traceback)", err=True)
        code = 1
    finally:  # --offline / --trust-pickle hold for this command only, also when main() is called in-process
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
