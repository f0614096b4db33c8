"""``classifiers.stage.train_one`` under several processes: only rank 0 writes the run folder's files, every rank
returns the metrics, and one process writes exactly what it always wrote."""

from __future__ import annotations

import json
from pathlib import Path

import accelerate
import pytest

from synthmed.classifiers.stage import train_one
from synthmed.config import load_config
from synthmed.data.load import load_data

FILES = ["classifier.json", "confusion.csv", "metrics.json", "model.safetensors", "predictions.csv"]


class FakeState:
    """What train_one reads of accelerate's PartialState, for a given rank."""

    def __init__(self, rank: int, waits: list[int]) -> None:
        self.process_index, self.waits = rank, waits

    def wait_for_everyone(self) -> None:
        self.waits.append(self.process_index)


def _setup():
    cfg = load_config(None, ["device=cpu", "data.source=phantom:blood", "data.phantom.n_classes=2",
                             "data.phantom.n_per_class=12", "data.phantom.size=28",
                             "classifier.model=cnn", "classifier.epochs=1", "classifier.batch_size=16"])
    return cfg, load_data(cfg.data, echo_warnings=False)


def test_only_rank_zero_writes_the_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, data = _setup()
    one = train_one(cfg, data, "real_only", 0, tmp_path / "one", None, {}, progress=False)
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == FILES
    assert json.loads((tmp_path / "one" / "metrics.json").read_text()) == json.loads(json.dumps(one))
    waits: list[int] = []
    for rank in (1, 0):  # the two ranks of one launched command, one after the other
        monkeypatch.setattr(accelerate, "PartialState", lambda rank=rank: FakeState(rank, waits))
        out = tmp_path / f"rank{rank}"
        got = train_one(cfg, data, "real_only", 0, out, None, {}, progress=False)
        assert got["balanced_accuracy"] == one["balanced_accuracy"]  # every rank returns the metrics
        names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        if rank == 1:  # fit_plan's own Accelerator (1 process here) wrote the model; the stage's files are rank 0's
            assert not {"confusion.csv", "predictions.csv", "metrics.json"} & set(names)
        else:
            assert names == FILES
            for name in ("confusion.csv", "predictions.csv", "metrics.json"):  # byte for byte as one process
                assert (out / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    assert waits == [1, 0], "every rank waits for the others after the writes"
