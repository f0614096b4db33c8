"""Crash safety: SIGKILL a stage at several points, rerun it, and get bit-identical results with no temp file left.

Kill points (see ``helpers_faults``): an external SIGKILL as soon as the first DDPM checkpoint appears, and
deterministic self-kills by a test-side fault injector just before the atomic rename of a checkpoint file, of the
generator folder's metadata, of the N-th synthetic PNG and of a classifier's files (the temp file is cut to half
its size first, like a write interrupted half-way). The reference is one uninterrupted ``synthmed run`` of the same
tiny config on CPU.

Also: a diverging generator (NaN loss) stops with exit 2, a one-line message naming the last good checkpoint, and
keeps that checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers_faults import (
    cli, cli_killed_at, cli_killed_when, diff, digests, evaluation_json, leftover_temps, pngs, quality_json, reference_run,
    stage_args, was_killed,
)

CKPT_FILE = r"/generator_work/checkpoints/\.tmp-step-\d+/ema\.safetensors$"
GEN_META = r"/\.tmp-generator/synthmed\.json$"
PNG = r"/synthetic/[^/]+/c\d\d_\d+\.png$"


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error: ")]


def test_stages_killed_then_resumed_match_uninterrupted(tmp_path: Path) -> None:
    """finetune / generate / train, each SIGKILLed mid-write then rerun: identical to the uninterrupted run."""
    ref = reference_run()
    run = tmp_path / "run"

    # finetune: killed while writing the second checkpoint (the first one is complete), then while writing the
    # finished generator folder, then rerun to the end
    p = cli_killed_at(stage_args("finetune", run), CKPT_FILE, at=2)
    assert was_killed(p), p.stderr[-2000:]
    ckpts = run / "generator_work" / "checkpoints"
    assert (ckpts / "step-0000002" / "meta.json").is_file()
    assert not (ckpts / "step-0000004").exists() and (ckpts / ".tmp-step-0000004").is_dir()
    assert not (run / "generator").exists()

    p = cli_killed_at(stage_args("finetune", run), GEN_META)
    assert was_killed(p), p.stderr[-2000:]
    assert not (run / "generator").exists() and (run / ".tmp-generator").is_dir()

    p = cli(stage_args("finetune", run))
    assert p.returncode == 0, p.stderr[-3000:]
    got, want = digests(run, ("generator",)), digests(ref, ("generator",))
    assert got and not diff(got, want), diff(got, want)
    assert leftover_temps(run) == []

    # generate: killed just before the 6th PNG lands (a half-written temp PNG stays behind), then rerun
    p = cli_killed_at(stage_args("generate", run), PNG, at=6)
    assert was_killed(p), p.stderr[-2000:]
    assert len(pngs(run)) == 5
    assert any(".tmp-" in t for t in leftover_temps(run / "synthetic")), "the injector should leave a partial PNG"
    p = cli(stage_args("generate", run))
    assert p.returncode == 0, p.stderr[-3000:]
    got = {k: v for k, v in digests(run, ("synthetic",)).items() if k.endswith(".png")}
    want = {k: v for k, v in digests(ref, ("synthetic",)).items() if k.endswith(".png")}
    assert len(got) == 16 and not diff(got, want), diff(got, want)
    ids = [r.split(",")[0] for r in (run / "synthetic" / "manifest.csv").read_text().splitlines()]
    assert ids == [r.split(",")[0] for r in (ref / "synthetic" / "manifest.csv").read_text().splitlines()]
    assert leftover_temps(run) == []

    # train: killed while writing metrics.json (the "done" marker), then rerun
    seed_dir = "classifiers/real_only/seed0"
    p = cli_killed_at(stage_args("train", run, "--policy", "real_only"), rf"/{seed_dir}/metrics\.json$")
    assert was_killed(p), p.stderr[-2000:]
    assert not (run / seed_dir / "metrics.json").exists()
    p = cli(stage_args("train", run, "--policy", "real_only"))
    assert p.returncode == 0, p.stderr[-3000:]
    got, want = digests(run, (seed_dir,)), digests(ref, (seed_dir,))
    assert len(got) >= 4 and not diff(got, want), diff(got, want)
    # temps inside classifier folders: see test_train_rerun_removes_temps_left_by_a_kill
    assert [t for t in leftover_temps(run) if not t.startswith("classifiers/")] == []


def test_run_killed_three_times_then_resumed_matches_uninterrupted(tmp_path: Path) -> None:
    """``synthmed run`` killed early (external SIGKILL), mid-PNG and mid-classifier-write, then completed."""
    ref = reference_run()
    run = tmp_path / "run"
    args = stage_args("run", run)

    code = cli_killed_when(args, lambda: (run / "generator_work" / "checkpoints" / "step-0000002").is_dir())
    assert was_killed(code), code
    p = cli_killed_at(args, PNG, at=3)
    assert was_killed(p), p.stderr[-2000:]
    p = cli_killed_at(args, r"/classifiers/add/seed0/model\.safetensors$")
    assert was_killed(p), p.stderr[-2000:]
    assert any("model.safetensors" in t for t in leftover_temps(run)), "the injector should leave a partial file"

    p = cli(args)
    assert p.returncode == 0, p.stderr[-3000:]
    got, want = digests(run), digests(ref)
    assert not diff(got, want), diff(got, want)
    assert quality_json(run) == quality_json(ref)
    assert evaluation_json(run) == evaluation_json(ref)
    assert (run / "report.html").is_file()
    # temps inside classifier folders: see test_train_rerun_removes_temps_left_by_a_kill
    assert [t for t in leftover_temps(run) if not t.startswith("classifiers/")] == []
    state = json.loads((run / "pipeline" / "state.json").read_text())
    assert all(r["status"] == "done" for r in state["records"].values())


def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    """lr=1e30 without warm-up: step 1 is finite (and checkpointed), step 2 overflows to NaN."""
    run = tmp_path / "run"
    p = cli(stage_args("finetune", run, overrides=[
        "generator.ddpm.lr=1e30", "generator.ddpm.warmup_steps=0", "generator.ddpm.checkpoint_every=1"]))
    assert p.returncode == 2, p.stderr[-3000:]
    errs = error_lines(p.stderr)
    assert len(errs) == 1 and "Traceback" not in p.stderr, p.stderr
    good = run / "generator_work" / "checkpoints" / "step-0000001"
    assert "loss became nan" in errs[0] or "loss became inf" in errs[0], errs[0]
    assert f"last good checkpoint: {good}" in errs[0] and "generator.ddpm.lr" in errs[0], errs[0]
    assert sorted(p.name for p in good.iterdir()) == [
        "ema.safetensors", "meta.json", "model.safetensors", "rng-rank0.json", "rng-rank0.safetensors",
        "train.json", "train.safetensors"]
    assert json.loads((good / "meta.json").read_text())["step"] == 1
    assert not (run / "generator").exists()
    assert leftover_temps(run) == []


def test_kill_while_writing_config_yaml_leaves_no_temp_after_rerun(tmp_path: Path) -> None:
    """Killed while ``RUN_DIR/config.yaml`` is being written; the rerun must not leave the temp file behind."""
    run = tmp_path / "run"
    args = stage_args("train", run, "--policy", "real_only")
    p = cli_killed_at(args, r"/run/config\.yaml$")
    assert was_killed(p), p.stderr[-2000:]
    assert not (run / "config.yaml").exists() and leftover_temps(run)
    p = cli(args)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (run / "classifiers" / "real_only" / "seed0" / "metrics.json").is_file()
    assert leftover_temps(run) == []


def test_train_rerun_removes_temps_left_by_a_kill(tmp_path: Path) -> None:
    """A kill during a classifier write leaves ``.tmp-*`` in ``classifiers/<policy>/seed<k>/``; the rerun that
    completes that folder must delete it (as generate does for ``synthetic/`` and finetune for checkpoints)."""
    run = tmp_path / "run"
    args = stage_args("train", run, "--policy", "real_only")
    p = cli_killed_at(args, r"/classifiers/real_only/seed0/model\.safetensors$")
    assert was_killed(p), p.stderr[-2000:]
    assert leftover_temps(run)
    p = cli(args)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (run / "classifiers" / "real_only" / "seed0" / "metrics.json").is_file()
    assert leftover_temps(run) == []
