"""Fake stage functions for the pipeline and sweep tests (no test functions here).

Each fake writes the documented outputs of its stage and appends one line to ``$FAKE_STAGE_LOG`` so tests can count
what ran (also from spawned sweep workers). ``$FAKE_FAIL`` = ``stage`` makes that stage raise once-per-call.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.classifiers.policies import policy_kind, resolve_policy
from synthmed.data.dataset import ImageSet, RealData
from synthmed.io import atomic_save_png, atomic_write_json, atomic_write_text
from synthmed.synthetic.dataset import SyntheticSet, image_id

CLASSES = ["a", "b", "c"]


def _log(stage: str, run_dir: Path, extra: str = "") -> None:
    path = os.environ.get("FAKE_STAGE_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{stage} {Path(run_dir).name} {extra}".rstrip() + "\n")
    if os.environ.get("FAKE_FAIL") == stage:
        raise RuntimeError(f"fake {stage} crashed")


def _set(n_per_class: list[int], seed: int, split: str) -> ImageSet:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(n_per_class)), n_per_class)
    images = rng.integers(0, 255, size=(len(labels), 8, 8, 3), dtype=np.uint8)
    return ImageSet(images, labels, [f"{split}/{i}" for i in range(len(labels))])


def load_data(data_cfg: Any, run_dir: Path | None = None) -> RealData:
    train = _set([12, 6, 3], 0, "train")
    real = RealData(CLASSES, train, _set([4, 4, 4], 1, "val"), _set([5, 5, 5], 2, "test"), train, "fake:data")
    if run_dir is not None:
        _log("data", run_dir)
        atomic_write_text(Path(run_dir) / "data" / "split.csv", "id,split,label\n")
    return real


def finetune(cfg: Any, run_dir: Path, data: RealData | None = None) -> Path:
    _log("finetune", run_dir)
    atomic_write_text(Path(run_dir) / "generator" / "model.txt", "fake")
    return Path(run_dir) / "generator"


def generate(cfg: Any, run_dir: Path, data: RealData | None = None) -> Path:
    _log("generate", run_dir)
    sset = SyntheticSet(run_dir)
    rows = []
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        for i in range(int(cfg.generation.n_per_class or 2)):
            rel = sset.relpath(name, image_id(c, i))
            atomic_save_png(sset.abspath(rel), rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8))
            rows.append({"id": image_id(c, i), "path": rel, "label": c, "class_name": name, "kept": True})
    sset.write_manifest(rows)
    return sset.root


def run_quality(cfg: Any, run_dir: Path, data: RealData | None = None) -> Path:
    _log("quality", run_dir)
    path = Path(run_dir) / "quality" / "quality.json"
    atomic_write_json(path, {"fid": 12.5, "n_synthetic": 6, "gate": {"passed": True}})
    return path


def train(cfg: Any, run_dir: Path, policies: list[str] | None = None, seeds: list[int] | None = None,
          data: RealData | None = None) -> list[dict]:
    rows = []
    for policy in policies or list(cfg.run.policies):
        for seed in seeds or cfg.run.seeds:
            _log("train", run_dir, f"{policy} {seed} ratio={cfg.mix.ratio} model={cfg.classifier.model}")
            out = Path(run_dir) / "classifiers" / policy / f"seed{seed}"
            bal = 0.5 + 0.01 * seed + 0.1 * float(cfg.mix.ratio) * (policy != "real_only")
            kind = policy_kind(resolve_policy(cfg, policy)) if policy in cfg.run.policies else "real_only"
            metrics = {"policy": policy, "policy_kind": kind, "seed": seed, "balanced_accuracy": bal,
                       "macro_f1": bal - 0.05, "n_train_synthetic": 6 if kind == "synthetic" else 0,
                       "per_class_recall": {c: bal for c in CLASSES}}
            atomic_write_json(out / "metrics.json", metrics)
            atomic_write_text(out / "confusion.csv", "true,a,b,c\na,5,0,0\nb,1,4,0\nc,0,2,3\n")
            rows.append(metrics)
    return rows


def evaluate_run(run_dir: Path, as_json: bool = False) -> str:
    _log("evaluate", run_dir, "json" if as_json else "")
    return json.dumps({"policies": {}}) if as_json else "policy  balanced_accuracy\n"


def build_report(run_dir: Path) -> Path:
    _log("report", run_dir)
    path = Path(run_dir) / "report.html"
    atomic_write_text(path, "<html>fake</html>")
    return path
