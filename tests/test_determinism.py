"""Determinism: two independent runs of the same config and seed on CPU give byte-identical outputs.

Compared: the generator weights, every synthetic PNG and the manifest, every classifier's weights, metrics.json,
confusion.csv and predictions.csv, the evaluation table and the quality figures. Only ``pipeline/state.json``
(timestamps, durations) may differ.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from helpers_faults import cli, diff, digests, pngs, quality_json, reference_run, stage_args


def test_two_runs_same_seed_are_byte_identical(tmp_path: Path) -> None:
    ref = reference_run()
    run = tmp_path / "again"
    p = cli(stage_args("run", run))
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = digests(ref), digests(run)
    assert len([k for k in a if k.endswith(".png")]) == 16
    assert any(k.endswith("metrics.json") for k in a)
    assert not diff(a, b), diff(a, b)
    assert quality_json(ref) == quality_json(run)


def test_image_depends_only_on_its_seed_not_on_batch_size(tmp_path: Path) -> None:
    """Regenerating with another generation.batch_size into a copy of the generator gives the same PNG bytes."""
    import shutil

    ref = reference_run()
    run = tmp_path / "bs"
    run.mkdir()
    shutil.copytree(ref / "generator", run / "generator")
    shutil.copytree(ref / "data", run / "data")
    p = cli(stage_args("generate", run, overrides=["generation.batch_size=3"]))
    assert p.returncode == 0, p.stderr[-3000:]
    mine = {q.relative_to(run).as_posix(): hashlib.sha256(q.read_bytes()).hexdigest() for q in pngs(run)}
    theirs = {q.relative_to(ref).as_posix(): hashlib.sha256(q.read_bytes()).hexdigest() for q in pngs(ref)}
    assert len(mine) == 16 and mine == theirs
