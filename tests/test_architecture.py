"""The import contract (pyproject's [tool.importlinter]) holds, and it can fail."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "synthmed"
LINT = Path(sys.executable).with_name("lint-imports")
#: the pydantic section models: leaves that import only pydantic, the standard library and other leaves
CONFIG_LEAVES = sorted(p for p in SRC.rglob("*.py") if p.name in ("config.py", "sd_config.py") and p.parent != SRC)
ALLOWED_ROOTS = {"__future__", "typing", "pydantic", "collections", "pathlib", "enum", "dataclasses", "re", "math"}

pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (pip install -e '.[dev]')")


def _lint(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_import_contract_holds() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "broken" not in result.stdout.lower().split("contracts:")[-1].replace("0 broken", "")


def test_import_contract_fails_on_a_forbidden_import(tmp_path: Path) -> None:
    """A copy of the package where `data` imports the orchestrator: lint-imports must refuse it."""
    shutil.copytree(SRC, tmp_path / "src" / "synthmed", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    victim = tmp_path / "src" / "synthmed" / "data" / "dataset.py"
    victim.write_text(victim.read_text(encoding="utf-8") + "\nimport synthmed.pipeline.run  # forbidden\n",
                      encoding="utf-8")
    result = _lint(tmp_path, pythonpath=tmp_path / "src")
    assert result.returncode != 0
    assert "synthmed.data.dataset -> synthmed.pipeline.run" in result.stdout


@pytest.mark.parametrize("path", CONFIG_LEAVES, ids=lambda p: str(p.relative_to(SRC)))
def test_config_sections_are_leaves(path: Path) -> None:
    """Section models import only pydantic, the standard library and other section models."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            if name.startswith("synthmed."):
                assert name.endswith(("config", "sd_config")) or name == "synthmed.errors", f"{path}: imports {name}"
            else:
                assert name.split(".")[0] in ALLOWED_ROOTS, f"{path}: imports {name}"
