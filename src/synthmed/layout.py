"""``RunLayout``: every path of a run directory, spelled once.

A run directory holds the outputs of every stage; no other module spells a path inside it. Stages take a
``RunLayout`` (or build one from the run directory) and ask it for paths::

    layout = RunLayout(run_dir)
    layout.generator            # RUN_DIR/generator/  (the generator contract: see generators/contract.py)
    layout.manifest             # RUN_DIR/synthetic/manifest.csv
    layout.classifier(p, seed)  # RUN_DIR/classifiers/<policy>/seed<k>/
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory (nothing is created by building one)."""

    root: Path

    def __init__(self, root: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "root", Path(root))

    # ------------------------------------------------------------------ top level
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def report_assets(self) -> Path:
        return self.root / "report"

    @property
    def results(self) -> Path:
        return self.root / "results.csv"

    def results_shard(self, index: int, count: int) -> Path:
        return self.root / f"results.shard-{index}-of-{count}.csv"

    @property
    def lock(self) -> Path:
        return self.root / ".synthmed.lock"

    @property
    def stale(self) -> Path:
        return self.root / ".stale"

    # ------------------------------------------------------------------ data
    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def split(self) -> Path:
        return self.data / "split.csv"

    @property
    def near_duplicates(self) -> Path:
        """The near-duplicate (pHash) report of the data split: counts per held-out split and examples."""
        return self.data / "near_duplicates.json"

    # ------------------------------------------------------------------ generator
    @property
    def generator(self) -> Path:
        return self.root / "generator"

    @property
    def generator_work(self) -> Path:
        return self.root / "generator_work"

    @property
    def generator_training_images(self) -> Path:
        """The real images the generator saw (``generators/contract.py``), read by the leakage guard and the audit."""
        return self.generator / "training_images.csv"

    @property
    def generator_training_log(self) -> Path:
        """The generator's loss per training step (``generators/contract.py``), plotted by the report."""
        return self.generator / "training_log.csv"

    # ------------------------------------------------------------------ synthetic set
    @property
    def synthetic(self) -> Path:
        return self.root / "synthetic"

    @property
    def manifest(self) -> Path:
        return self.synthetic / "manifest.csv"

    # ------------------------------------------------------------------ quality
    @property
    def quality(self) -> Path:
        return self.root / "quality"

    @property
    def quality_json(self) -> Path:
        return self.quality / "quality.json"

    @property
    def galleries(self) -> Path:
        return self.quality / "galleries"

    # ------------------------------------------------------------------ classifiers
    @property
    def classifiers(self) -> Path:
        return self.root / "classifiers"

    def classifier(self, policy: str, seed: int) -> Path:
        return self.classifiers / policy / f"seed{int(seed)}"

    def classifier_metrics(self, policy: str, seed: int) -> Path:
        return self.classifier(policy, seed) / "metrics.json"

    # ------------------------------------------------------------------ pipeline bookkeeping
    @property
    def pipeline(self) -> Path:
        return self.root / "pipeline"

    @property
    def state(self) -> Path:
        return self.pipeline / "state.json"

    @property
    def data_summary(self) -> Path:
        return self.pipeline / "data_summary.json"

    @property
    def real_samples(self) -> Path:
        return self.pipeline / "real_samples.npz"

    @property
    def evaluation_json(self) -> Path:
        return self.pipeline / "evaluation.json"

    @property
    def evaluation_txt(self) -> Path:
        return self.pipeline / "evaluation.txt"

    # ------------------------------------------------------------------ sweeps
    @property
    def sweep(self) -> Path:
        return self.root / "sweep"

    def sweep_point(self, pid: str) -> Path:
        return self.sweep / pid

    def sweep_upstream(self, key: str) -> Path:
        return self.sweep / f"upstream-{key}"

    @property
    def sweep_jobs(self) -> Path:
        """``--launcher slurm``: submitit's folder, one ``<job id>/`` per job with its logs (``*_log.out/err``)."""
        return self.sweep / "slurm"

    @property
    def sweep_submission(self) -> Path:
        """``--launcher slurm``: the jobs of the last submission (ids, shards), read by ``synthmed sweep --merge``."""
        return self.sweep_jobs / "submission.json"

    @property
    def state_lock(self) -> Path:
        """Held while ``pipeline/state.json`` is read-modified-written by concurrent sweep shards."""
        return self.pipeline / "state.lock"

    def rel(self, path: Path) -> str:
        """``path`` relative to the run directory, with forward slashes (for state records)."""
        return Path(path).relative_to(self.root).as_posix()
