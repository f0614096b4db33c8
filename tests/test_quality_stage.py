"""The quality stage end to end on phantom data with a tiny classifier and a hand-made synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from synthmed.cli import main
from synthmed.config import Config, load_config
from synthmed.data.load import load_data
from synthmed.io import atomic_save_png
from synthmed.synthetic.dataset import MANIFEST_COLUMNS, SyntheticSet, image_id

CONFIG = """
seed: 0
data:
  source: phantom:blood
  phantom: {n_classes: 3, n_per_class: 40, size: 28}
quality: {backbone: classifier, kid_subsets: 10, pr_k: 3}
classifier: {model: cnn, epochs: 2, batch_size: 32}
"""


def make_synthetic(run_dir: Path, cfg: Config, n_per_class: int = 10) -> list[str]:
    """Real training images with noise (+ one exact copy, one duplicate pair, one pure-noise image)."""
    real = load_data(cfg.data)
    rng = np.random.default_rng(0)
    syn = SyntheticSet(run_dir)
    rows, ids = [], []
    for c, name in enumerate(real.classes):
        pool = real.train.images[real.train.labels == c]
        for i in range(n_per_class):
            img = np.clip(pool[i % len(pool)].astype(int)[::-1] + rng.integers(-40, 41, pool.shape[1:]), 0, 255)
            img = img.astype(np.uint8)
            if c == 0 and i == 0:
                img = pool[0]  # an exact copy of a training image
            if c == 1 and i == 1:
                img = _read_png(syn.abspath(rows[-1]["path"]))  # an exact duplicate of c01_000000
            if c == 2 and i == 2:
                img = rng.integers(0, 256, pool.shape[1:], dtype=np.uint8)  # noise
            id_ = image_id(c, i)
            rel = syn.relpath(name, id_)
            atomic_save_png(syn.abspath(rel), img)
            rows.append({"id": id_, "path": rel, "label": c, "class_name": name, "seed": 0, "generator": "test",
                         "kept": "true", "filter_reason": "", "confidence": ""})
            ids.append(id_)
    syn.write_manifest(rows)
    lines = ["id,label,pixel_hash"] + [f"{i},{y},x" for i, y in zip(real.train.ids, real.train.labels.tolist())]
    (run_dir / "generator").mkdir(parents=True, exist_ok=True)
    (run_dir / "generator" / "training_images.csv").write_text("\n".join(lines) + "\n")
    return ids


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("q")
    cfg_path = root / "c.yaml"
    cfg_path.write_text(CONFIG)
    run_dir = root / "run"
    make_synthetic(run_dir, load_config(cfg_path))
    assert main(["quality", str(cfg_path), "-o", str(run_dir)]) == 0
    return cfg_path, run_dir


def test_missing_synthetic_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG)
    assert main(["quality", str(cfg), "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "synthmed generate" in err and len(err.splitlines()) == 1


def test_quality_json_and_manifest(run: tuple[Path, Path]) -> None:
    _, run_dir = run
    q = json.loads((run_dir / "quality" / "quality.json").read_text())
    assert q["n_synthetic"] == 30 and q["vetted"] is True and q["backbone"] == "classifier"
    fid = q["fidelity"]
    assert fid["synthetic_all"]["overall"]["n_fake"] == 30 and fid["synthetic_all"]["overall"]["fid"] >= 0
    assert set(fid["synthetic_all"]["per_class"]) == set(q["classes"]) and fid["real_reference"]["overall"]["n_fake"] > 0
    assert any("2048" in w for w in fid["synthetic_all"]["overall"]["warnings"])
    mem = q["memorization"]
    assert mem["flagged"] >= 1 and mem["thresholds"]["pixel"] is not None and mem["notes"] == []
    assert mem["n_generator_train"] == q["fidelity"]["real_reference"]["overall"]["n_real"]
    assert q["cas"]["synthetic_only"]["n"] == q["cas"]["real_only"]["n"] > 0
    assert isinstance(q["gate"]["passed"], bool) and isinstance(q["gate"]["reasons"], list)
    assert q["filter"]["overall"]["generated"] == 30
    rows = SyntheticSet(run_dir).read_manifest()
    by_id = {r["id"]: r for r in rows}
    assert by_id["c00_000000"]["filter_reason"] == "memorized_copy" and not by_id["c00_000000"]["kept"]
    assert by_id["c01_000001"]["filter_reason"] in ("near_duplicate", "low_confidence")
    assert all(r["confidence"] != "" for r in rows)
    assert sum(r["kept"] for r in rows) == q["filter"]["overall"]["kept"]
    assert list(rows[0])[: len(MANIFEST_COLUMNS)] == MANIFEST_COLUMNS
    gal = run_dir / "quality" / "galleries"
    for name in q["classes"]:
        assert (gal / f"{name.replace(' ', '_')}_good.png").is_file() and (gal / f"{name.replace(' ', '_')}_poor.png").is_file()
    assert (gal / "closest_pairs.png").is_file() and (run_dir / "quality" / "memorization.csv").is_file()


def test_rerun_reuses_classifiers_and_cache_and_disabled_filter(run: tuple[Path, Path]) -> None:
    cfg_path, run_dir = run
    model = run_dir / "quality" / "real_classifier" / "model.safetensors"
    before = model.stat().st_mtime_ns
    assert main(["quality", str(cfg_path), "-o", str(run_dir), "--set", "filter.enabled=false"]) == 0
    q = json.loads((run_dir / "quality" / "quality.json").read_text())
    assert model.stat().st_mtime_ns == before
    assert q["feature_cache"]["misses"] == 0 and q["feature_cache"]["hits"] >= 4
    assert q["vetted"] is False and q["filter"]["overall"]["kept"] == 30
    rows = SyntheticSet(run_dir).read_manifest()
    assert all(r["kept"] for r in rows) and all(float(r["confidence"]) >= 0 for r in rows)
    assert len(list((run_dir / "synthetic").rglob("*.png"))) == 30  # files are never deleted


def test_per_class_thresholds_from_real_val(run: tuple[Path, Path]) -> None:
    cfg_path, run_dir = run
    args = ["--set", "filter.per_class_confidence=real_val", "--set", "filter.min_confidence=0.99",
            "--set", "filter.real_val_quantile=0.1"]
    assert main(["quality", str(cfg_path), "-o", str(run_dir), *args]) == 0
    q = json.loads((run_dir / "quality" / "quality.json").read_text())
    th = q["filter"]["class_thresholds"]
    assert q["filter"]["per_class_confidence"] == "real_val" and set(th) == set(q["classes"])
    assert all(0.0 <= v <= 0.99 for v in th.values())
    rows = SyntheticSet(run_dir).read_manifest()
    for r in rows:  # every confidence decision follows its own class's threshold, not the global 0.99
        below = float(r["confidence"]) < th[r["class_name"]]
        if r["filter_reason"] == "low_confidence":
            assert below
        elif r["filter_reason"] in ("", "near_duplicate"):
            assert not below
    assert any(r["kept"] for r in rows), "tau = 0.99 alone would keep (almost) nothing"


def test_prototype_filter_with_logit_adjusted_vetting(run: tuple[Path, Path]) -> None:
    cfg_path, run_dir = run
    args = ["--set", "filter.prototype=real_val", "--set", "filter.prototype_quantile=0.5",
            "--set", "filter.vetting_imbalance=logit_adjustment", "--set", "filter.min_confidence=0.0"]
    assert main(["quality", str(cfg_path), "-o", str(run_dir), *args]) == 0
    q = json.loads((run_dir / "quality" / "quality.json").read_text())
    proto = q["filter"]["prototype"]
    assert q["filter"]["vetting_imbalance"] == "logit_adjustment"
    assert set(proto["class_thresholds"]) == set(q["classes"]) and proto["threshold_from"] == "real val"
    rows = SyntheticSet(run_dir).read_manifest()
    far = [r for r in rows if r["filter_reason"] == "far_from_prototype"]
    # noisy reversed copies sit farther from the centroid than half of the real val images of their class
    assert far and q["filter"]["overall"]["dropped"]["far_from_prototype"] == len(far)
    assert not any(r["filter_reason"] == "low_confidence" for r in rows), "tau 0 drops nothing for confidence"
