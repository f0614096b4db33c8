"""Label-safe augmentation wired into the faces: the API and every training verb of the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import synthmed
from synthmed.cli import main


def side_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("kidney-left", "kidney-right"):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_default_flips_are_turned_off_with_a_warning(tmp_path: Path, capsys) -> None:
    src = side_folder(tmp_path / "imgs")
    cfg = synthmed.load_config(None, [f"data.source=folder:{src}"])
    assert not cfg.classifier.augment.hflip
    assert "classifier.augment.hflip turned off" in capsys.readouterr().err
    plain = synthmed.load_config(None, [f"data.source=folder:{src}"], label_safe=False)
    assert plain.classifier.augment.hflip, "the default is on: the check, not the default, turned it off"


def test_explicit_flip_is_refused_by_the_cli_with_one_line(tmp_path: Path, capsys) -> None:
    src = side_folder(tmp_path / "imgs")
    (tmp_path / "c.yaml").write_text("seed: 0\n", encoding="utf-8")
    code = main(["train", str(tmp_path / "c.yaml"), "--set", f"data.source=folder:{src}", "--set", "classifier.augment.hflip=true",
                 "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "classifier.augment.hflip" in err[0], err
    assert not (tmp_path / "run" / "classifiers").exists()


def test_orientation_matters_false_lets_the_user_insist(tmp_path: Path) -> None:
    src = side_folder(tmp_path / "imgs")
    cfg = synthmed.load_config(None, [f"data.source=folder:{src}", "data.orientation_matters=false",
                                      "classifier.augment.hflip=true"])
    assert cfg.classifier.augment.hflip
