"""Safe loading: no pickle is ever loaded without ``--trust-pickle`` (and then only ``weights_only=True``), no shell,
and every weight file our stages write is safetensors.

No exception: every checkpoint (DDPM, EDM and Stable Diffusion fine-tuning: weights, optimizer, LR scheduler and RNG
state) is written as safetensors + JSON (``generators/checkpoints.py``); nothing in ``src`` calls ``torch.save``.
"""

from __future__ import annotations

import ast
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers_faults import SMOKE, TINY, reference_run, set_args
from synthmed.cli import main

SRC = Path(__file__).resolve().parents[1] / "src" / "synthmed"
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib"}
#: (relative source file, suffix) pairs allowed to write a pickle-format file (see the module docstring)
DOCUMENTED_PICKLES: set[tuple[str, str]] = set()  # none: every checkpoint is safetensors + JSON


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _name(func: ast.expr) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _kw(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else kw.value
    return None


def _sources():
    for path in sorted(SRC.rglob("*.py")):
        yield path.relative_to(SRC).as_posix(), path.read_text(encoding="utf-8")


def test_every_torch_load_is_weights_only() -> None:
    found, bad = 0, []
    for rel, text in _sources():
        for call in _calls(ast.parse(text)):
            if _name(call.func) in ("torch.load", "load") and _name(call.func).startswith("torch"):
                found += 1
                if _kw(call, "weights_only") is not True:
                    bad.append(f"{rel}:{call.lineno}")
        # a plain-text check too, in case torch.load is reached through an alias
        for i, line in enumerate(text.splitlines(), 1):
            if "torch.load(" in line and "weights_only=True" not in line and not line.lstrip().startswith("#"):
                if not any(b == f"{rel}:{i}" for b in bad) and "weights_only=True" not in text.splitlines()[i]:
                    bad.append(f"{rel}:{i} (text)")
    assert found >= 1 and not bad, bad


@pytest.mark.parametrize("what, check", [
    ("shell=True", lambda c: _kw(c, "shell") is True),
    ("os.system / os.popen", lambda c: _name(c.func) in ("os.system", "os.popen")),
    ("pickle.load(s)", lambda c: _name(c.func) in ("pickle.load", "pickle.loads", "cloudpickle.load", "dill.load")),
    ("yaml.load / unsafe_load", lambda c: _name(c.func) in ("yaml.load", "yaml.unsafe_load", "yaml.full_load")),
    ("np.load(allow_pickle=True)", lambda c: _name(c.func).endswith("load") and _kw(c, "allow_pickle") is True),
    ("trust_remote_code=True", lambda c: _kw(c, "trust_remote_code") is True),
    ("eval / exec", lambda c: isinstance(c.func, ast.Name) and c.func.id in ("eval", "exec")),
])
def test_no_unsafe_calls(what: str, check) -> None:
    bad = [f"{rel}:{c.lineno}" for rel, text in _sources() for c in _calls(ast.parse(text)) if check(c)]
    assert not bad, f"{what} in {bad}"


def test_only_documented_pickle_writers() -> None:
    writers = []
    for rel, text in _sources():
        for call in _calls(ast.parse(text)):
            if _name(call.func) in ("torch.save", "pickle.dump", "pickle.dumps"):
                writers.append(rel)
    assert set(writers) <= {r for r, _ in DOCUMENTED_PICKLES}, writers


def _is_pickle(path: Path) -> bool:
    head = path.read_bytes()[:2]
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle PROTO opcode
        return True
    if zipfile.is_zipfile(path):  # torch.save's zip format holds a data.pkl
        with zipfile.ZipFile(path) as z:
            return any(n.endswith(".pkl") for n in z.namelist())
    return False


def test_run_dir_holds_safetensors_only() -> None:
    from safetensors import safe_open

    run = reference_run()
    files = [p for p in run.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in PICKLE_SUFFIXES]
    assert not [p for p in files if _is_pickle(p)]
    weights = [p for p in files if p.suffix == ".safetensors"]
    names = {p.relative_to(run).as_posix() for p in weights}
    assert "generator/unet/diffusion_pytorch_model.safetensors" in names
    assert "classifiers/real_only/seed0/model.safetensors" in names
    assert any(n.startswith("generator_work/checkpoints/step-") and n.endswith("/train.safetensors") for n in names)
    for p in weights:
        with safe_open(str(p), "pt") as f:
            assert list(f.keys()) is not None
    for p in files:
        if p.suffix in (".npz", ".npy"):
            np.load(p, allow_pickle=False)


# ------------------------------------------------------------------------------------------------ --trust-pickle


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _train(tmp_path: Path, weights: Path, trust: bool = False) -> list[str]:
    argv = ["--trust-pickle"] if trust else []
    return argv + ["train", str(SMOKE), "-o", str(tmp_path / "run"), "--policy", "real_only",
                   *set_args(TINY + [f"classifier.pretrained={weights}"])]


@pytest.fixture(autouse=True)
def _untrusted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYNTHMED_TRUST_PICKLE", raising=False)  # --trust-pickle sets it; undone after each test
    monkeypatch.setenv("TQDM_DISABLE", "1")


def _error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_pickled_weights_refused_without_trust_pickle(tmp_path: Path, capsys) -> None:
    w = tmp_path / "backbone.pt"
    torch.save({"features.0.weight": torch.zeros(3)}, w)
    assert main(_train(tmp_path, w)) == 2
    line = _error(capsys)
    assert str(w) in line and "pickled checkpoint" in line and "--trust-pickle" in line
    assert not (tmp_path / "run" / "classifiers").exists()


def test_trusted_pickle_is_read_weights_only(tmp_path: Path, capsys) -> None:
    w = tmp_path / "backbone.pt"
    torch.save({"unrelated.weight": torch.zeros(3)}, w)
    assert main(_train(tmp_path, w, trust=True)) == 2
    line = _error(capsys)  # it was read (the tensors do not fit: a config error, not the pickle refusal)
    assert "pickled checkpoint" not in line and "no tensor matches" in line, line


def test_malicious_pickle_never_runs_even_when_trusted(tmp_path: Path, capsys, monkeypatch) -> None:
    marker = tmp_path / "pwned"
    w = tmp_path / "evil.pt"
    torch.save({"w": _Evil(marker)}, w)
    assert main(_train(tmp_path, w, trust=True)) == 2
    line = _error(capsys)
    assert str(w) in line and "weights_only=True" in line
    assert not marker.exists()
    assert "SYNTHMED_TRUST_PICKLE" not in os.environ, "--trust-pickle must hold for its own command only"
    assert main(_train(tmp_path, w)) == 2 and "--trust-pickle" in _error(capsys)
    assert not marker.exists()


def test_pickle_disguised_as_safetensors_refused(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"
    w = tmp_path / "evil.safetensors"
    torch.save({"w": _Evil(marker)}, w)
    assert main(_train(tmp_path, w, trust=True)) == 2
    assert "not a valid safetensors file" in _error(capsys)
    assert not marker.exists()
