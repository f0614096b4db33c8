"""The notebook API: the CLI's verbs as functions on a ``Config`` and a run directory.

    import synthmed
    cfg = synthmed.load_config("configs/demo.yaml", overrides=["run.seeds=[0,1]"])
    run = synthmed.run(cfg, "runs/x")      # the whole chain, cached and resumable, like `synthmed run`
    run.results()                          # pandas DataFrame: one row per trained classifier (= results.csv)

The stages are callable one by one the same way (``synthmed.finetune(cfg, "runs/x")``, ``generate``, ``quality``,
``train``, ``evaluate``, ``report``). Each calls the stage function the CLI and the pipeline call
(``pipeline.stages.STAGES``; ``pipeline.run.run_pipeline`` for ``run``), after saving the resolved config into the
run directory as the CLI does. Errors are the same ``synthmed.errors.UserError`` subclasses the CLI turns into
one-line messages.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthmed.errors import UserError
from synthmed.layout import RunLayout
from synthmed.results import RESULT_COLUMNS, collect_results

if TYPE_CHECKING:
    import pandas as pd

    from synthmed.config import Config
    from synthmed.data.dataset import RealData

PathLike = str | os.PathLike[str]


def load_config(path: PathLike | None = None, overrides: list[str] | None = None, strict: bool | None = None,
                label_safe: bool = True) -> Config:
    """A YAML config (or the defaults when ``path`` is None) with ``--set``-style overrides (``"a.b=c"``).

    With ``label_safe`` (the default) flips and rotations are checked against the classes: where a side carries the
    label they are refused when set explicitly and turned off with a warning when on by default."""
    from synthmed.config import load_config as _load

    cfg = _load(path, list(overrides or []), strict=strict)
    return label_safe_config(cfg) if label_safe else cfg


def label_safe_config(cfg: Config, echo: bool = True) -> Config:
    """``data.orientation.safe_augmentations`` on ``cfg`` with the source's class names (read without pixels).

    Call it on a config as loaded (before ``with_overrides`` or a save and reload, which mark every field as set)."""
    import sys

    from synthmed.data.orientation import safe_augmentations
    from synthmed.data.sources import read_source

    plan = safe_augmentations(cfg, read_source(cfg.data, facts_only=True).classes)
    if echo:
        for note in plan.notes:
            print(f"warning: {note}", file=sys.stderr)
    return plan.config


def _config(cfg: Config | PathLike) -> Config:
    if isinstance(cfg, (str, os.PathLike)):
        return load_config(cfg)
    return cfg


@contextmanager
def _writing(cfg: Config, run_dir: PathLike, command: str) -> Iterator[Path]:
    """Hold the run directory's writer lock (``synthmed.lock``, as the CLI does) and save the resolved config in it;
    a second writer on the same directory gets ``RunDirLockedError`` naming this one."""
    from synthmed.config import save_resolved
    from synthmed.lock import run_lock

    out = Path(run_dir)
    with run_lock(out, command, argv=["synthmed.api", command]):
        save_resolved(cfg, out)
        yield out


def _with_data(data: RealData | None) -> dict[str, Any]:
    return {} if data is None else {"data": data}


@dataclass(frozen=True)
class Run:
    """A run directory and what can be read from it."""

    run_dir: Path

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_dir)

    @property
    def report_path(self) -> Path:
        return self.layout.report

    def results(self) -> pd.DataFrame:
        """One row per trained classifier (policy, seed), columns ``synthmed.results.RESULT_COLUMNS``."""
        import pandas as pd

        return pd.DataFrame(collect_results(self.run_dir), columns=RESULT_COLUMNS)

    def evaluation(self, as_json: bool = False) -> str | dict[str, Any]:
        """The ``synthmed evaluate`` table (mean, std, 95% CI over seeds; paired differences), or its JSON."""
        return evaluate(self.run_dir, as_json=as_json)

    def config(self) -> Config:
        """The resolved config saved in the run directory."""
        if not self.layout.config.is_file():
            raise UserError(f"{self.layout.config} not found: not a synthmed run directory")
        return load_config(self.layout.config)

    def __repr__(self) -> str:
        return f"Run('{self.run_dir}')"


def open_run(run_dir: PathLike) -> Run:
    """A finished (or partly finished) run directory."""
    path = Path(run_dir)
    if not path.is_dir():
        raise UserError(f"run directory not found: {path}")
    return Run(path)


def run(cfg: Config | PathLike, run_dir: PathLike, force: list[str] | None = None, workers: int = 1,
        live: bool | None = False) -> Run:
    """``synthmed run``: every stage not cached, then ``report.html``; returns the ``Run``."""
    from synthmed.pipeline.run import run_pipeline

    cfg = _config(cfg)
    with _writing(cfg, run_dir, "run") as out:
        run_pipeline(cfg, out, force=list(force or []), live=live, workers=workers)
    return Run(out)


def finetune(cfg: Config | PathLike, run_dir: PathLike, data: RealData | None = None) -> Path:
    """``synthmed finetune``: train or fine-tune the generator; returns ``RUN_DIR/generator``."""
    from synthmed.pipeline.stages import STAGES

    cfg = _config(cfg)
    with _writing(cfg, run_dir, "finetune") as out:
        return Path(STAGES.finetune(cfg, out, **_with_data(data)))


def generate(cfg: Config | PathLike, run_dir: PathLike, data: RealData | None = None) -> Path:
    """``synthmed generate``: sample the synthetic set; returns ``RUN_DIR/synthetic``."""
    from synthmed.pipeline.stages import STAGES

    cfg = _config(cfg)
    with _writing(cfg, run_dir, "generate") as out:
        return Path(STAGES.generate(cfg, out, **_with_data(data)))


def quality(cfg: Config | PathLike, run_dir: PathLike, data: RealData | None = None) -> Path:
    """``synthmed quality``: fidelity, CAS, memorization audit and the filter; returns the quality folder/file."""
    from synthmed.pipeline.stages import STAGES

    cfg = _config(cfg)
    with _writing(cfg, run_dir, "quality") as out:
        return Path(STAGES.quality(cfg, out, **_with_data(data)))


def train(cfg: Config | PathLike, run_dir: PathLike, policies: list[str] | None = None,
          seeds: list[int] | None = None, data: RealData | None = None) -> Run:
    """``synthmed train``: every policy x seed (existing ones kept); returns the ``Run`` (``.results()``)."""
    from synthmed.pipeline.stages import STAGES

    cfg = _config(cfg)
    with _writing(cfg, run_dir, "train") as out:
        STAGES.train(cfg, out, policies=policies, seeds=seeds, **_with_data(data))
    return Run(out)


def evaluate(run_dir: PathLike, as_json: bool = False) -> str | dict[str, Any]:
    """``synthmed evaluate``: the table as text, or the parsed JSON with ``as_json``."""
    from synthmed.pipeline.stages import STAGES

    text = STAGES.evaluate(Path(run_dir), as_json=as_json)
    return json.loads(text) if as_json else str(text)


def report(run_dir: PathLike) -> Path:
    """``synthmed report``: write ``RUN_DIR/report.html``; returns its path."""
    from synthmed.pipeline.stages import STAGES

    return Path(STAGES.report(Path(run_dir)))


def load_data(cfg: Config | PathLike, run_dir: PathLike | None = None) -> RealData:
    """The real data after the image policy, the real-only split and the training subset."""
    from synthmed.data.load import load_data as _load

    return _load(_config(cfg).data, None if run_dir is None else Path(run_dir), echo_warnings=False)


def describe_data(cfg: Config | PathLike | str) -> dict[str, Any]:
    """``synthmed data info --json`` for a config, or for a source spec such as ``"folder:path/to/images"``."""
    from synthmed.data.info import describe_source

    if isinstance(cfg, str) and ":" in cfg and not Path(cfg).is_file():
        cfg = load_config(None, [f"data.source={cfg}"])
    return describe_source(_config(cfg).data)


__all__ = ["Run", "describe_data", "label_safe_config", "evaluate", "finetune", "generate", "load_config", "load_data", "open_run",
           "quality", "report", "run", "train"]
