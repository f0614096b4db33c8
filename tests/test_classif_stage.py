"""The train stage on the phantom, the leakage guard, and the train/evaluate CLI verbs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from synthmed.cli import main
from synthmed.config import load_config
from synthmed.data.load import load_data
from synthmed.io import atomic_save_png
from synthmed.synthetic.dataset import SyntheticSet, image_id

CONFIG = """
seed: 0
device: cpu
data: {source: "phantom:blood", size: 32, phantom: {n_classes: 3, n_per_class: 40, size: 32}}
classifier: {model: cnn, epochs: 3, batch_size: 32, lr: 0.003}
run:
  seeds: [0]
  policies:
    real_only: {mix.policy: real_only}
    add4: {mix.policy: add_per_class, mix.add_per_class: 4}
"""


def write_config(tmp_path: Path) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(CONFIG)
    return p


def fake_synthetic(run_dir: Path, cfg, extra: np.ndarray | None = None) -> None:
    """A 'synthetic' set made of noisy train images (kept), plus one optional extra image in class 0."""
    data = load_data(cfg.data, None, echo_warnings=False)
    rng = np.random.default_rng(0)
    syn = SyntheticSet(run_dir)
    rows = []
    for c, name in enumerate(data.classes):
        imgs = data.train.images[data.train.labels == c][:5]
        if c == 0 and extra is not None:
            imgs = np.concatenate([imgs, extra[None]])
        for i, img in enumerate(imgs):
            if extra is None or c != 0 or i < len(imgs) - 1:
                img = np.clip(img.astype(int) + rng.integers(-3, 4, img.shape), 0, 255).astype(np.uint8)
            id_ = image_id(c, i)
            rel = syn.relpath(name, id_)
            atomic_save_png(syn.abspath(rel), img)
            rows.append({"id": id_, "path": rel, "label": c, "class_name": name, "kept": "true"})
    rows.append({**rows[0], "id": "dropped", "kept": "false"})
    syn.write_manifest(rows)


def test_train_evaluate_cli_and_guards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = write_config(tmp_path)
    run = tmp_path / "run"
    # a policy that needs synthetic images but none were generated: exit 2 naming `synthmed generate`
    assert main(["train", str(cfg_path), "-o", str(run), "--policy", "add4"]) == 2
    assert "synthmed generate" in capsys.readouterr().err
    assert main(["evaluate", str(run)]) == 2
    assert "synthmed train" in capsys.readouterr().err

    cfg = load_config(cfg_path)
    fake_synthetic(run, cfg)
    assert main(["train", str(cfg_path), "-o", str(run)]) == 0
    for policy, n_syn in (("real_only", 0), ("add4", 12)):
        out = run / "classifiers" / policy / "seed0"
        m = json.loads((out / "metrics.json").read_text())
        assert m["n_train_synthetic"] == n_syn and m["pretrained"] is False
        assert m["n_train_real"] == m["train_real_per_class"][0] * 3 and m["epochs_run"] == 3
        assert (out / "model.safetensors").is_file() and (out / "confusion.csv").is_file()
        preds = (out / "predictions.csv").read_text().splitlines()
        assert preds[0].startswith("id,label,pred,p_") and len(preds) == m["n_test"] + 1
    real = json.loads((run / "classifiers" / "real_only" / "seed0" / "metrics.json").read_text())
    assert real["balanced_accuracy"] > 0.6  # 3 classes: chance is 1/3
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert set(ev["policies"]) == {"real_only", "add4"} and ev["policies"]["add4"]["kind"] == "synthetic"
    assert ev["comparisons"][0]["policy"] == "add4" and ev["comparisons"][0]["note"] == "CI undefined (n=1)"
    assert main(["evaluate", str(run)]) == 0
    assert "paired differences" in capsys.readouterr().out
    # resumable: existing runs are skipped (the model file is not rewritten)
    mtime = (run / "classifiers" / "real_only" / "seed0" / "model.safetensors").stat().st_mtime_ns
    assert main(["train", str(cfg_path), "-o", str(run), "--policy", "real_only"]) == 0
    assert (run / "classifiers" / "real_only" / "seed0" / "model.safetensors").stat().st_mtime_ns == mtime


def test_planted_val_image_in_synthetic_set_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = write_config(tmp_path)
    cfg = load_config(cfg_path)
    data = load_data(cfg.data, None, echo_warnings=False)
    run = tmp_path / "run"
    fake_synthetic(run, cfg, extra=data.val.images[3])
    assert main(["train", str(cfg_path), "-o", str(run), "--policy", "add4"]) == 2
    err = capsys.readouterr().err
    assert "same pixels as val image" in err and data.val.ids[3] in err
    assert not (run / "classifiers").exists()


def test_generator_training_image_in_test_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from synthmed.io import atomic_write_csv, pixel_hash

    cfg_path = write_config(tmp_path)
    data = load_data(load_config(cfg_path).data, None, echo_warnings=False)
    run = tmp_path / "run"
    atomic_write_csv(run / "generator" / "training_images.csv",
                     [{"id": "elsewhere/1.png", "label": 0, "pixel_hash": pixel_hash(data.test.images[0])}],
                     ["id", "label", "pixel_hash"])
    assert main(["train", str(cfg_path), "-o", str(run), "--policy", "real_only"]) == 2
    assert "generator-training image" in capsys.readouterr().err
    atomic_write_csv(run / "generator" / "training_images.csv",
                     [{"id": data.val.ids[0], "label": 0, "pixel_hash": ""}], ["id", "label", "pixel_hash"])
    assert main(["train", str(cfg_path), "-o", str(run), "--policy", "real_only"]) == 2
    assert "was used to train the generator" in capsys.readouterr().err


def test_stage_records_composition_facts_and_augment_sources(tmp_path: Path) -> None:
    """augment reads the manifest `source` column; a synthetic policy composed with an imbalance method records
    what it did (real prior, post-hoc tau, cRT) and is labelled by its policy name."""
    from synthmed.classifiers.stage import train

    cfg = load_config(write_config(tmp_path), [
        "classifier.epochs=2", "imbalance.crt_epochs=2",
        "run.policies={aug: {mix.policy: augment, mix.augment_p: 0.5, imbalance.method: posthoc_la}, "
        "bal_crt: {mix.policy: balance_to, mix.balance_to: 30, mix.shortage: take_all, imbalance.method: crt}}"])
    data = load_data(cfg.data, None, echo_warnings=False)
    run = tmp_path / "run"
    fake_synthetic(run, cfg)
    syn = SyntheticSet(run)
    rows = syn.read_manifest()
    for r in rows:  # image k of class c was made from the k-th training image of class c
        k = int(r["id"].split("_")[1]) if r["id"] != "dropped" else 0
        r["source"] = data.train.ids[int(np.flatnonzero(data.train.labels == r["label"])[k])]
    syn.write_manifest(rows)
    out = {m["policy"]: m for m in train(cfg, run, progress=False, data=data)}
    aug, crt = out["aug"], out["bal_crt"]
    assert aug["policy_kind"] == "synthetic" and aug["n_train_synthetic"] == 15
    assert not any("same-class" in w for w in aug["warnings"])  # the sources were found
    assert 0 < aug["imbalance_info"]["augment_replaced_share"] < 0.5  # 5 of 27 real images per class have variants
    assert aug["imbalance_info"]["posthoc_tau"] in cfg.imbalance.posthoc_taus
    n_real = aug["train_real_per_class"]
    assert aug["imbalance_info"]["prior_counts"] == n_real == crt["imbalance_info"]["prior_counts"]
    assert crt["imbalance_info"]["crt"]["n_real"] == sum(n_real) and crt["n_train_synthetic"] > 0
    saved = json.loads((run / "classifiers" / "aug" / "seed0" / "classifier.json").read_text())
    assert saved["label"] == "aug" and len(saved["logit_offset"]) == 3


def test_augment_without_sources_falls_back_with_a_warning(tmp_path: Path) -> None:
    from synthmed.classifiers.stage import train

    cfg = load_config(write_config(tmp_path), ["classifier.epochs=1", "run.policies={aug: {mix.policy: augment}}"])
    run = tmp_path / "run"
    fake_synthetic(run, cfg)
    (m,) = train(cfg, run, progress=False)
    assert any("same-class synthetic" in w for w in m["warnings"]) and m["n_train_synthetic"] == 15
