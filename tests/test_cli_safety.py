"""CLI exit codes and safe weight loading."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from synthmed import __version__
from synthmed.cli import main
from synthmed.errors import UserError
from synthmed.io import atomic_write_text, remove_stale_temps
from synthmed.safety import load_state_dict


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_unknown_command_is_exit_2() -> None:
    assert main(["no-such-verb"]) == 2


def test_bad_config_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("classifier:\n  epoch: 3\n")
    assert main(["train", str(cfg), "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "classifier.epoch" in err and "classifier.epochs" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists(), "a bad config must not leave a half-made run directory"


def test_missing_config_file_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", str(tmp_path / "missing.yaml"), "-o", str(tmp_path / "r")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_safetensors_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.arange(4.0)}, str(path))
    assert torch.equal(load_state_dict(path)["a"], torch.arange(4.0))


def test_pickle_refused_unless_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "w.pt"
    torch.save({"a": torch.ones(2)}, path)
    monkeypatch.delenv("SYNTHMED_TRUST_PICKLE", raising=False)
    with pytest.raises(UserError, match="trust-pickle"):
        load_state_dict(path)
    monkeypatch.setenv("SYNTHMED_TRUST_PICKLE", "1")
    assert torch.equal(load_state_dict(path)["a"], torch.ones(2))


def test_pickle_with_code_refused_even_when_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Evil:
        def __reduce__(self):  # pragma: no cover - never executed by a weights_only load
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"a": Evil()}, path)
    monkeypatch.setenv("SYNTHMED_TRUST_PICKLE", "1")
    with pytest.raises(UserError, match="weights_only"):
        load_state_dict(path)


def test_atomic_write_leaves_no_temp_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    from synthmed.io import atomic_open

    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as fh:
            fh.write("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    (tmp_path / ".tmp-out.txt.abc").write_text("stale")
    assert remove_stale_temps(tmp_path) == 1


def test_offline_flag_holds_for_one_command_only(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    assert main(["--offline", "data", "info", "phantom:blood"]) == 0
    assert "HF_HUB_OFFLINE" not in os.environ and "TRANSFORMERS_OFFLINE" not in os.environ
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # a user's own setting survives a --offline call
    assert main(["--offline", "data", "info", "phantom:blood"]) == 0
    assert os.environ["HF_HUB_OFFLINE"] == "0"


def test_usage_errors_are_one_line_exit_2(capsys) -> None:
    from synthmed.cli import main

    for argv, culprit in ((["run", "--bogus"], "--bogus"), (["train"], "config")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and culprit in err[0], err
