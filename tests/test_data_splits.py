"""Real-only splits, training subsets, split.csv reuse and the leakage guard."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from synthmed.cli import main
from synthmed.data.config import DataConfig
from synthmed.data.load import load_data
from synthmed.data.splits import long_tail_counts, make_splits, subset_indices
from synthmed.errors import ConfigError, DataError


def phantom(**kw) -> DataConfig:
    base = {"source": "phantom:blood", "phantom": {"n_classes": 5, "n_per_class": 40, "size": 28}}
    base.update(kw)
    return DataConfig(**base)


def test_stratified_split_proportions_and_seed() -> None:
    labels = np.repeat(np.arange(4), [100, 60, 30, 10])
    cfg = DataConfig(val_fraction=0.2, test_fraction=0.1)
    split = make_splits(labels, None, None, cfg)
    for c, n in enumerate([100, 60, 30, 10]):
        part = split[labels == c]
        assert (part == "val").sum() == round(0.2 * n) and (part == "test").sum() == round(0.1 * n)
    again = make_splits(labels, None, None, cfg)
    other = make_splits(labels, None, None, DataConfig(val_fraction=0.2, test_fraction=0.1, split_seed=1))
    assert (split == again).all() and not (split == other).all()


def test_tiny_class_keeps_one_per_split() -> None:
    labels = np.array([0] * 20 + [1] * 3)
    split = make_splits(labels, None, None, DataConfig())
    assert sorted(split[labels == 1].tolist()) == ["test", "train", "val"]


def test_group_aware_split_keeps_groups_together() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat([f"patient{i}" for i in range(60)], rng.integers(1, 6, 60))
    labels = rng.integers(0, 3, len(groups))
    split = make_splits(labels, None, groups.tolist(), DataConfig())
    for g in set(groups.tolist()):
        assert len(set(split[groups == g].tolist())) == 1, g
    frac = {s: (split == s).mean() for s in ("train", "val", "test")}
    assert 0.08 < frac["val"] < 0.25 and 0.08 < frac["test"] < 0.25
    for c in range(3):  # roughly stratified
        assert (split[labels == c] == "test").sum() > 0


def test_fixed_csv_split_with_group_in_two_splits_is_refused() -> None:
    labels = np.array([0, 1, 0, 1, 0, 1])
    given = ["train", "train", "val", "val", "test", "test"]
    groups = ["g1", "g2", "g1", "g3", "g4", "g5"]
    with pytest.raises(DataError, match="group 'g1'"):
        make_splits(labels, given, groups, DataConfig())


def test_source_val_test_kept_and_missing_val_carved(tmp_path: Path) -> None:
    labels = np.repeat([0, 1], 50)
    given = ["train"] * 40 + ["test"] * 10 + ["train"] * 40 + ["test"] * 10
    split = make_splits(labels, given, None, DataConfig(val_fraction=0.1))
    assert ((split == "test") == (np.array(given) == "test")).all()
    assert (split == "val").sum() == 10  # 10% of the whole, taken from train


def test_shots_nested_and_from_train_only() -> None:
    d3 = load_data(phantom(shots=3), echo_warnings=False)
    d6 = load_data(phantom(shots=6), echo_warnings=False)
    assert d3.train.counts(5) == [3] * 5 and d6.train.counts(5) == [6] * 5
    assert set(d3.train.ids) <= set(d6.train.ids) <= set(d6.train_pool.ids)
    assert d3.val.ids == d6.val.ids and d3.test.ids == d6.test.ids  # val/test frozen before subsets
    other = load_data(phantom(shots=3, subset_seed=5), echo_warnings=False)
    assert other.train.ids != d3.train.ids and other.test.ids == d3.test.ids


def test_shots_more_than_available_names_class(capsys) -> None:
    code = main(["data", "info", "phantom:blood", "--shots", "500", "--set", "data.phantom.n_classes=3"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "basophil" in err and "data.shots=500" in err


def test_long_tail_profile_counts() -> None:
    assert long_tail_counts(5, 100.0, 1000) == [1000, 316, 100, 32, 10]
    assert long_tail_counts(3, 10.0, 5) == [5, 2, 1]
    cfg = phantom(long_tail={"ratio": 10.0, "max_per_class": 20, "order": ["lymphocyte", "basophil", "eosinophil", "erythroblast", "immature granulocytes"]})
    d = load_data(cfg, echo_warnings=False)
    want = long_tail_counts(5, 10.0, 20)  # [20, 11, 6, 4, 2]
    by_name = dict(zip(d.classes, d.train.counts(5)))
    assert [by_name[c] for c in cfg.long_tail.order] == want


def test_long_tail_seeded_order_and_capping() -> None:
    cfg = phantom(long_tail={"ratio": 4.0, "max_per_class": 100})
    warn: list[str] = []
    labels = np.repeat(np.arange(5), 28)
    keep = subset_indices(labels, [f"c{i}" for i in range(5)], cfg, warn)
    counts = sorted(np.bincount(labels[keep], minlength=5).tolist(), reverse=True)
    assert counts[:2] == [28, 28] and any("wants 100" in w for w in warn)
    with pytest.raises(DataError, match="unknown class 'zebra'"):
        subset_indices(labels, [f"c{i}" for i in range(5)], phantom(long_tail={"order": ["zebra"]}), [])


def test_fraction_and_exclusive_subsets() -> None:
    d = load_data(phantom(fraction=0.5), echo_warnings=False)
    assert d.train.counts(5) == [round(0.5 * n) for n in d.train_pool.counts(5)]
    with pytest.raises(ConfigError, match="cannot be combined"):
        load_data(phantom(fraction=0.5, shots=2), echo_warnings=False)


def test_split_csv_written_and_reused(tmp_path: Path) -> None:
    cfg = phantom(shots=4)
    d = load_data(cfg, run_dir=tmp_path, echo_warnings=False)
    path = tmp_path / "data" / "split.csv"
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["id", "split", "label", "class_name", "in_train_subset"]
    assert len(rows) == 200 and sum(r["in_train_subset"] == "1" for r in rows) == 20
    assert {r["id"] for r in rows if r["split"] == "test"} == set(d.test.ids)
    before = path.read_bytes()
    again = load_data(cfg, run_dir=tmp_path, echo_warnings=False)
    assert again.train.ids == d.train.ids and path.read_bytes() == before
    with pytest.raises(DataError, match="new run dir"):
        load_data(phantom(shots=5), run_dir=tmp_path, echo_warnings=False)
    with pytest.raises(DataError, match="split was 'test', now|split was '(train|val)', now"):
        load_data(phantom(shots=4, split_seed=3), run_dir=tmp_path, echo_warnings=False)


def test_leakage_guard_warns_and_strict_refuses(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    imgs = {s: rng.integers(0, 256, (k, 8, 8, 3), dtype=np.uint8) for s, k in (("train", 10), ("val", 4), ("test", 4))}
    imgs["test"][2] = imgs["train"][7]
    arrays = {f"{s}_images": v for s, v in imgs.items()}
    arrays.update({f"{s}_labels": np.arange(len(v)) % 2 for s, v in imgs.items()})
    np.savez(tmp_path / "dup.npz", **arrays)
    d = load_data(DataConfig(source=f"npz:{tmp_path / 'dup.npz'}"), echo_warnings=False)
    assert len(d.warnings) == 1 and "train/00007" in d.warnings[0] and "test/00002" in d.warnings[0]
    with pytest.raises(DataError, match="train/00007"):
        load_data(DataConfig(source=f"npz:{tmp_path / 'dup.npz'}", strict=True), echo_warnings=False)
