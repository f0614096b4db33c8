"""The HTML report: sections, tolerance of missing inputs, escaping, and a headless-Chromium rendering check."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from synthmed.config import with_overrides
from synthmed.io import atomic_write_json
import test_pipeline_fakes
from synthmed.pipeline.stages import STAGES
from synthmed.pipeline.run import run_pipeline
from synthmed.pipeline.sweep import run_sweep
from synthmed.report.html import build_report
from test_pipeline import make_cfg

SECTIONS = ["headline", "data", "results", "sweep", "curves", "per-class", "confusion", "samples", "quality", "filtering",
            "galleries", "config", "versions"]

QUALITY = {
    "classes": ["a", "b", "c"], "backbone": "classifier", "vetted": True,
    "fidelity": {"backbone": "classifier", "real_reference": {"overall": {"n_real": 21, "n_fake": 12, "fid": 3.5,
                                                                        "kid": {"mean": 0.01, "std": 0.002},
                                                                        "precision": 0.8, "recall": 0.7,
                                                                        "density": 1.0, "coverage": 0.9,
                                                                        "warnings": ["FID with n < 2048 is biased"]}},
                 "synthetic_all": {"overall": {"n_real": 21, "n_fake": 9, "fid": 30.0, "kid": 0.05, "precision": 0.4,
                                               "recall": 0.3, "density": 0.5, "coverage": 0.4, "warnings": []},
                                   "per_class": {"a": {"n_real": 7, "n_fake": 3, "fid": 41.5, "precision": 0.5,
                                                       "recall": 0.25}}}},
    "cas": {"synthetic_only": {"accuracy": 0.4, "balanced_accuracy": 0.35, "macro_f1": 0.3,
                               "per_class_recall": [0.125, 0.5, 0.75]},
            "real_only": {"accuracy": 0.7, "balanced_accuracy": 0.6, "macro_f1": 0.55}},
    "memorization": {"flagged": 1, "flagged_fraction": 0.11, "copy_space": "pixel", "n_synthetic": 9,
                     "n_generator_train": 21, "per_label": {"0": {"n": 3, "flagged": 7, "real_val_n": 40, "real_val_flagged": 2}},
                     "copy_rule": "quantile",
                     "near_copies": {"flagged": 3, "real_val_flagged": 0,
                                     "per_label": {"0": {"flagged": 2, "real_val_flagged": 1}}},
                     "copying_test": {"pixel": {"c_t": -4.25, "classes_copying": ["2"],
                                                "per_label": {"0": {"z": -0.8765}, "2": {"z": -4.5}}}}},
    "filter": {"vetted": True, "min_confidence": 0.5,
               "overall": {"generated": 9, "kept": 5, "kept_fraction": 0.56, "dropped": {"low_confidence": 4}},
               "per_class": {"a": {"generated": 3, "kept": 2, "kept_fraction": 0.67, "dropped": {"low_confidence": 1}}}},
    "gate": {"passed": False, "reasons": ["FID is 8.57x the real-vs-real reference (max 4) <b>"],
             "figures": {"fid_ratio": 8.57}, "thresholds": {"gate_max_fid_ratio": 4}},
    "galleries": {"a": {"good": "a_good.png", "poor": "a_poor.png"}},
}


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory written by the pipeline (fake stages, real report) plus a ratio sweep (built once)."""
    tmp = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        for stage, attr in [("data", "load_data"), ("finetune", "finetune"), ("generate", "generate"),
                            ("quality", "run_quality"), ("train", "train"), ("evaluate", "evaluate_run")]:
            mp.setattr(STAGES, stage, getattr(test_pipeline_fakes, attr))
        mp.delenv("FAKE_STAGE_LOG", raising=False)
        mp.delenv("FAKE_FAIL", raising=False)
        run = tmp / "run"
        cfg = with_overrides(make_cfg(), {"sweep.grid": {"mix.ratio": [0.0, 0.5, 1.0]}, "sweep.policies": ["ratio"]})
        run_pipeline(cfg, run, live=False)
        run_sweep(cfg, run, live=False)
    atomic_write_json(run / "quality" / "quality.json", QUALITY)
    for name in ("a_good.png", "a_poor.png"):
        (run / "quality" / "galleries").mkdir(parents=True, exist_ok=True)
        (run / "quality" / "galleries" / name).write_bytes(_png())
    build_report(run)
    return run


def test_report_sections_and_images(full_run: Path) -> None:
    html = (full_run / "report.html").read_text()
    for sid in SECTIONS:
        assert f'id="{sid}"' in html, sid
    assert 'id="gate-failed"' in html and "FAILED the quality gate" in html
    assert "&lt;b&gt;" in html and "(max 4) <b>" not in html, "text from files must be escaped"
    assert 'id="metric_vs_ratio"' in html
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(imgs) >= 8
    assert all(base64.b64decode(i)[:4] == b"\x89PNG" for i in imgs)
    assert "src=\"http" not in html and "<script" not in html, "self-contained, no external resources"
    for png in ("class_counts.png", "per_class_recall.png", "samples.png", "metric_vs_ratio_mix_ratio.png"):
        assert (full_run / "report" / png).is_file(), png
    per_class = html[html.index("id=per-class-quality"):]
    assert "<td>41.5</td>" in per_class and "<td>0.125</td>" in per_class, "per-class FID and CAS recall"
    assert "<td>7</td>" in per_class, "per-class memorization flags"
    assert "<td>2/40</td>" in per_class, "the copy rule's rate on real val images of the class (the reference)"
    assert "<td>-0.88</td>" in per_class, "per-class data-copying Z"
    assert "<td>2 (1)</td>" in per_class, "per-class near-copies (relative rule) beside real val's"
    mem = html[html.index("Memorization audit"):]
    assert "<td>-4.25</td>" in mem and "<td>c</td>" in mem, "C_T and the copying classes by name"
    assert "<td>3 (0)</td>" in mem and "<td>quantile (pixel)</td>" in mem, "near-copies and the flag rule"
    assert "Paired difference ratio" in html and "best classical" in html


def test_report_of_empty_run_says_what_is_missing(tmp_path: Path) -> None:
    path = build_report(tmp_path)
    html = path.read_text()
    for sid in SECTIONS:
        assert f'id="{sid}"' in html
    assert html.count("Not available") >= 8


def test_report_tolerates_odd_files(tmp_path: Path) -> None:
    (tmp_path / "quality").mkdir()
    (tmp_path / "quality" / "quality.json").write_text("[1, 2")
    seed = tmp_path / "classifiers" / "<script>alert(1)" / "seed0"
    seed.mkdir(parents=True)
    (seed / "metrics.json").write_text(json.dumps({"balanced_accuracy": "n/a", "per_class_recall": {"x": 1}}))
    (tmp_path / "results.csv").write_text("policy,seed\n")
    html = build_report(tmp_path).read_text()
    assert "<script>alert" not in html and "&lt;script&gt;" in html


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (apt-get install chromium; "
                                                ".ci/run installs it when it can)")
def test_report_renders_in_headless_chromium(full_run: Path, tmp_path: Path) -> None:
    exe = _chromium()
    url = (full_run / "report.html").resolve().as_uri()
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for sid in SECTIONS:
        assert f'id="{sid}"' in dom.stdout, sid
    assert dom.stdout.count("<img") >= 8
    shot = tmp_path / "shot.png"
    res = subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,2400", url],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        arr = np.asarray(im.convert("L"), dtype=float)
    assert arr.shape == (2400, 1200)
    assert arr.std() > 10, "the screenshot is blank"
    assert (arr < 128).mean() > 0.005, "almost nothing dark rendered (no text or figures)"


def _metrics(policy: str, seed: int, bal: float, **extra: object) -> dict:
    return {"policy": policy, "seed": seed, "balanced_accuracy": bal, "classes": ["a", "b", "c"], **extra}


def _shortage_run(tmp_path: Path) -> Path:
    """Three policies: real_only, one short of synthetic images in two classes, one that got none."""
    run = tmp_path / "run"
    rows = {
        "real_only": dict(policy_kind="real_only", configured_kind="real_only", n_train_synthetic=0),
        "short": dict(policy_kind="synthetic", configured_kind="synthetic", n_train_synthetic=40,
                      synthetic_requested_per_class=[20, 30, 40], synthetic_shortfall_per_class=[0, 10, 40]),
        "starved": dict(policy_kind="real_only", configured_kind="synthetic", n_train_synthetic=0,
                        synthetic_requested_per_class=[5, 5, 5], synthetic_shortfall_per_class=[5, 5, 5]),
    }
    for policy, extra in rows.items():
        for seed in (0, 1):
            atomic_write_json(run / "classifiers" / policy / f"seed{seed}" / "metrics.json",
                              _metrics(policy, seed, 0.5 + 0.1 * seed + 0.05 * (policy == "short"), **extra))
    return run


def test_report_says_when_a_policy_got_fewer_or_no_synthetic_images(tmp_path: Path) -> None:
    """A shortfall is named per class in the headline and the table; a policy that used none is not 'synthetic'."""
    run = _shortage_run(tmp_path)
    html = build_report(run).read_text()
    head = html[html.index('id="headline"'):html.index('id="data"')]
    assert "short trained on 40 synthetic images of the 90 it asked for; short per class: b −10, c −40." in head
    assert "starved was configured to add synthetic images but trained on none" in head
    table = html[html.index('id="results"'):html.index('id="sweep"')]
    assert re.search(r"<td[^>]*>starved</td><td[^>]*>real_only</td>", table)
    assert "b −10, c −40" in table and "40 of 90" in table


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (apt-get install chromium; "
                                                ".ci/run installs it when it can)")
def test_shortage_warning_renders_in_headless_chromium(tmp_path: Path) -> None:
    """What a reader sees: the per-class shortfall and the 'trained on none' sentence survive rendering."""
    exe = _chromium()
    run = _shortage_run(tmp_path)
    build_report(run)
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", (run / "report.html").resolve().as_uri()], capture_output=True,
                         text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="synthetic-shortage"' in dom.stdout and "short per class: b −10, c −40" in dom.stdout
    assert "starved was configured to add synthetic images but trained on none" in dom.stdout
