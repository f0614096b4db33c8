"""The whole chain for real on configs/smoke.yaml: `synthmed run`, a cache-hit rerun, and `synthmed sweep`."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from synthmed.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


@pytest.mark.slow
def test_smoke_run_cache_and_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["run", str(SMOKE), "-o", str(run), "--set", "device=cpu"]) == 0
    out, err = capsys.readouterr()
    assert f"report: {run / 'report.html'}" in out
    html = (run / "report.html").read_text()
    for sid in ("headline", "data", "quality", "filtering", "samples", "confusion"):
        assert f'id="{sid}"' in html
    quality = json.loads((run / "quality" / "quality.json").read_text())
    assert "gate" in quality and "fidelity" in quality
    metrics = sorted(run.glob("classifiers/*/seed0/metrics.json"))
    assert [p.parent.parent.name for p in metrics] == ["add_per_class", "logit_adjusted", "real_only"]
    assert (run / "synthetic" / "manifest.csv").is_file() and (run / "generator").is_dir()
    state = json.loads((run / "pipeline" / "state.json").read_text())["records"]
    assert all(r["status"] == "done" for r in state.values()) and len(state) == 9

    # a second run is a pure cache hit: nothing reruns, nothing is rewritten
    stamps = {p: p.stat().st_mtime_ns for p in [*metrics, run / "report.html", run / "quality" / "quality.json"]}
    assert main(["run", str(SMOKE), "-o", str(run), "--set", "device=cpu"]) == 0
    err = capsys.readouterr().err
    assert "running" not in err and err.count("cached") == 9, err
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # the sweep reuses the shared generator and the run's classifier with the same settings
    assert main(["sweep", str(SMOKE), "-o", str(run), "--set", "device=cpu"]) == 0
    err = capsys.readouterr().err
    assert "finetune: running" not in err and "generate: running" not in err
    df = pd.read_csv(run / "results.csv")
    assert sorted(df["mix.add_per_class"].tolist()) == [4, 12] and df["balanced_accuracy"].notna().all()
    assert 'id="metric_vs_n"' in (run / "report.html").read_text()
