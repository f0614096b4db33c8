"""The stage functions the orchestrator calls, found by explicit imports (not by strings).

``STAGES`` is one object so that tests can substitute fakes (``monkeypatch.setattr(STAGES, "train", fake)``); worker
processes receive the function object itself (pickled by reference), so a substituted function reaches them too.
Every stage takes one resolved config and the run directory; the upstream stages also take the already-loaded real
data (``data=``) so the split is read once per process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from synthmed.classifiers.stage import train
from synthmed.data.load import load_data
from synthmed.generators.stage import finetune, generate
from synthmed.metrics.evaluate import evaluate_run
from synthmed.quality.stage import run_quality
from synthmed.report.html import build_report


@dataclass
class Stages:
    """``data(cfg.data, run_dir) -> RealData``; ``finetune/generate/quality/train(cfg, run_dir, data=...)``;
    ``evaluate(run_dir, as_json=False) -> str``; ``report(run_dir) -> Path``."""

    data: Callable[..., Any] = load_data
    finetune: Callable[..., Any] = finetune
    generate: Callable[..., Any] = generate
    quality: Callable[..., Any] = run_quality
    train: Callable[..., Any] = train
    evaluate: Callable[..., Any] = evaluate_run
    report: Callable[..., Any] = build_report


STAGES = Stages()
