"""Train classifiers in parallel worker processes (``synthmed run --workers K``, ``synthmed sweep --workers K``).

Each worker is a fresh (spawned) process that trains one classifier with ``cpu_count // K`` threads; results come
back to the parent, which alone writes the pipeline state and result rows. A UserError inside a worker comes back as
text and is raised in the parent (one-line error, exit 2); the pending jobs are cancelled.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthmed.errors import UserError


@dataclass
class TrainJob:
    """One classifier to train: where, with which config, and a caller's tag handed back with the result."""

    label: str
    cfg_json: dict[str, Any]
    run_dir: Path
    policy: str
    seed: int
    tag: Any = None


def train_unit(train: Callable[..., Any], cfg_json: dict[str, Any], run_dir: str, policy: str, seed: int,
               threads: int) -> tuple[str, Any]:
    """Worker body (also used in-process): ``train`` (the stage function, pickled by reference) trains one
    classifier; UserErrors come back as ("user_error", text)."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    from synthmed.config import Config

    try:
        rows = train(Config.model_validate(cfg_json), Path(run_dir), policies=[policy], seeds=[seed])
        return "ok", rows
    except UserError as err:
        return "user_error", str(err)


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def train_in_pool(train: Callable[..., Any], jobs: list[TrainJob], workers: int,
                  on_result: Callable[[TrainJob, tuple[str, Any]], None]) -> None:
    """Run ``jobs`` on ``workers`` spawned processes; ``on_result`` is called in this process as each one ends.

    On an error (from a job or from ``on_result``) the queued jobs are cancelled and the running workers are
    terminated, so the error is reported at once; their classifiers resume on the next run.
    """
    if not jobs:
        return
    n = min(workers, len(jobs))
    threads = threads_per_worker(n)
    pool = ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures: dict[Future[Any], TrainJob] = {
            pool.submit(train_unit, train, j.cfg_json, str(j.run_dir), j.policy, j.seed, threads): j for j in jobs
        }
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                on_result(futures[fut], fut.result())
    except BaseException:
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            if proc.is_alive():
                proc.terminate()
        raise
    pool.shutdown(wait=True)
