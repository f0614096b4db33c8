"""Experiment tracking through accelerate's trackers: scalars and images reach TensorBoard; bad settings exit 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from synthmed.errors import UserError
from synthmed.tracking import Tracker, tracker_for


def test_none_logs_nothing(tmp_path: Path) -> None:
    t = tracker_for("none", tmp_path, "generator")
    t.log({"loss": 1.0}, 1)
    t.close()
    assert not t.enabled and not (tmp_path / "tracking").exists()


def test_unknown_kind_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="tracking=comet"):
        Tracker("comet", tmp_path, "x")


def test_tensorboard_receives_scalars_and_images(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is a dev dependency (pip install tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tracker_for("tensorboard", tmp_path, "classifier/real_only/seed0", {"lr": 0.1, "model": {"name": "cnn"}}) as t:
        for step in range(3):
            t.log({"loss": 1.0 / (step + 1), "val_balanced_accuracy": 0.5 + 0.1 * step, "skip": float("nan")}, step)
        t.log_images({"samples": np.zeros((2, 8, 8, 3), np.uint8)}, 2)
    runs = list((tmp_path / "tracking" / "classifier_real_only_seed0").glob("events.out.tfevents.*"))
    assert runs, "no TensorBoard event file written"
    acc = EventAccumulator(str(runs[0].parent), size_guidance={"images": 0})
    acc.Reload()
    assert [round(e.value, 3) for e in acc.Scalars("loss")] == [1.0, 0.5, 0.333]
    assert "skip" not in acc.Tags()["scalars"]
    assert acc.Tags()["images"], "the image grid was not logged"


def test_ddpm_training_logs_through_the_tracker(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is a dev dependency")
    from synthmed.config import load_config
    from synthmed.data.load import load_data
    from synthmed.generators.registry import generator_class

    cfg = load_config(None, ["data.source=phantom:blood", "data.size=32", "data.phantom.n_classes=2",
                             "data.phantom.n_per_class=8", "data.phantom.size=32", "generator.ddpm.preset=XS",
                             "generator.ddpm.steps=2", "generator.ddpm.batch_size=2", "tracking=tensorboard"])
    data = load_data(cfg.data)
    generator_class("ddpm").from_config(cfg, data).fit(data.train, tmp_path / "generator_work", progress=False)
    assert list((tmp_path / "tracking" / "generator").glob("events.out.tfevents.*"))


def test_classifier_training_curve_reaches_the_tracker(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is a dev dependency")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from synthmed.classifiers.stage import _track
    from synthmed.config import load_config

    cfg = load_config(None, ["tracking=tensorboard"])
    out = tmp_path / "classifiers" / "real_only" / "seed0"
    _track(cfg, out, "real_only", 0, [{"epoch": 1, "loss": 2.0, "val_balanced_accuracy": 0.3},
                                     {"epoch": 2, "loss": 1.5, "val_balanced_accuracy": 0.4}])
    acc = EventAccumulator(str(tmp_path / "tracking" / "classifier_real_only_seed0"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("classifier/val_balanced_accuracy")] == pytest.approx([0.3, 0.4])
