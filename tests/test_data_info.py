"""``data info`` describes any source (mixed sizes, duplicates, modes) without needing data.size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthmed.cli import main
from synthmed.data.config import DataConfig
from synthmed.data.info import describe_source, format_info
from synthmed.data.load import load_data
from synthmed.errors import DataError


def make_folder(root: Path, sizes: dict[str, list[tuple[int, int]]], mode: str = "RGB") -> Path:
    for c, dims in sizes.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i, (w, h) in enumerate(dims):
            rng = np.random.default_rng([sum(map(ord, c)), i])
            arr = rng.integers(0, 256, size=(h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


def test_mixed_sizes_described_without_data_size(tmp_path: Path) -> None:
    root = make_folder(tmp_path, {"eos": [(20, 20)] * 6 + [(24, 22)] * 2, "ig": [(20, 20)] * 7 + [(30, 31)]})
    cfg = DataConfig(source=f"folder:{root}")
    info = describe_source(cfg)
    assert info["images"]["native_sizes"] == {"20x20": 13, "22x24": 2, "31x30": 1}
    assert info["images"]["channels"] == {"3": 16} and info["images"]["modes"] == {"RGB": 16}
    assert info["image_policy"]["size"] is None and not info["images"]["uniform_size"]
    assert sum(info["splits"][s]["total"] for s in ("train", "val", "test")) == 16
    text = format_info(info)
    assert "mixed native sizes" in text and "data.size" in text and "20x20 x13" in text
    assert "ig -> immature granulocyte" in text
    with pytest.raises(DataError, match="data.size"):  # a stage still needs one size
        load_data(cfg, echo_warnings=False)
    sized = describe_source(DataConfig(source=f"folder:{root}", size=16))
    assert sized["image_policy"]["size"] == [16, 16] and sized["images"]["uniform_size"]


@pytest.mark.parametrize("mixed", [False, True])
def test_counts_match_load_data_with_subset_and_duplicates(tmp_path: Path, mixed: bool) -> None:
    root = make_folder(tmp_path, {"a": [(12, 12)] * 12, "b": [(12, 12)] * 11 + [(14, 12) if mixed else (12, 12)]})
    for i in range(3):  # three copies of one image in class a: some land in val/test
        (root / "a" / f"copy{i}.png").write_bytes((root / "a" / "0.png").read_bytes())
    cfg = DataConfig(source=f"folder:{root}", shots=4, val_fraction=0.25, test_fraction=0.25)
    info = describe_source(cfg)  # mixed: counted from the file facts; else load_data's own counts
    assert info["images"]["uniform_size"] is not mixed
    loaded = load_data(cfg.model_copy(update={"size": 12}), echo_warnings=False).summary()
    assert info["splits"] == loaded["splits"] and info["train_pool"] == loaded["train_pool"]
    assert info.get("excluded_from_training", {}).get("ids") == loaded.get("excluded_from_training", {}).get("ids")
    dup = info["images"]["duplicates"]
    assert dup["groups"] == 1 and dup["extra_copies"] == 3
    assert sum(dup["within_split"].values()) + dup["across_splits"] >= 1


def test_grayscale_and_16bit_modes_counted(tmp_path: Path) -> None:
    root = make_folder(tmp_path, {"x": [(10, 10)] * 4, "y": [(10, 10)] * 3}, mode="L")
    deep = (np.arange(100, dtype=np.uint16).reshape(10, 10) * 600).astype(np.uint16)
    Image.fromarray(deep).save(root / "y" / "deep.png")
    info = describe_source(DataConfig(source=f"folder:{root}"))
    assert info["images"]["modes"] == {"L": 7, "I;16": 1}
    assert info["images"]["channels"] == {"1": 8} and info["image_policy"]["size"] == [10, 10]


def test_pbc_native_described(shared_dir: Path) -> None:
    info = describe_source(DataConfig(source=f"folder:{shared_dir / 'data' / 'pbc-native'}"))
    assert info["images"]["count"] == 320 and len(info["images"]["native_sizes"]) > 1
    assert info["images"]["native_sizes"].get("363x360", 0) > 250
    assert info["display_names"]["ig"] == "immature granulocyte"


def test_cli_data_info_on_mixed_sizes(tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path, {"a": [(20, 20)] * 5 + [(25, 20)], "b": [(20, 20)] * 6})
    assert main(["data", "info", f"folder:{root}", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"]["native_sizes"] == {"20x20": 11, "20x25": 1}
