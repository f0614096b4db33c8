"""The pipeline's live display: the current stage, units done / total, elapsed time and an ETA.

On a terminal it is a rich progress bar (stage output scrolls above it); elsewhere (CI, pipes) it prints one plain
line per stage event on stderr, so logs stay readable. The ETA comes from the classifier units only: the wall time
since the first classifier began, divided by the classifiers finished, times the units left (parallel workers are
counted by that wall time; cached units take no time). The upstream stages (finetune, generate, ...) differ too much
in length to predict one from another: until a classifier has finished the ETA is "?", and those stages show their
own progress bars with their own ETA.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any



def _fmt(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Display:
    """Progress over a known number of units (stages and classifier runs)."""

    def __init__(self, total: int, title: str = "synthmed", live: bool | None = None) -> None:
        self.total = max(1, total)
        self.title = title
        self.done = 0
        self.ran = 0
        self.t_first: float | None = None
        self.t0 = time.monotonic()
        self.t_last = self.t0  # when the last unit ended
        self.classifiers_ran = 0
        self.t_classifiers: float | None = None  # when the first classifier began
        self.live = sys.stderr.isatty() if live is None else live
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> Display:
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[eta]}"), console=Console(stderr=True), transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.title, total=self.total, eta="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # ------------------------------------------------------------------ helpers
    def eta(self) -> str:
        left = self.total - self.done
        if left <= 0:
            return ""
        if not self.classifiers_ran or self.t_classifiers is None:
            return "ETA ?"
        spent = time.monotonic() - self.t_classifiers
        return f"ETA {_fmt(spent / self.classifiers_ran * left)}"

    def log(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)
        else:
            print(f"[{self.title}] {message}", file=sys.stderr, flush=True)

    def _update(self, description: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done, description=description, eta=self.eta())

    # ------------------------------------------------------------------ events
    def skip(self, name: str, reason: str) -> None:
        self.done += 1
        self.t_last = time.monotonic()
        self._update(f"{name}: {reason}")
        self.log(f"{self.done}/{self.total} {name}: {reason}")

    @contextmanager
    def unit(self, name: str, note: str = "", classifier: bool = False) -> Iterator[None]:
        """Time one unit of work; a failure is reported and re-raised. The ETA is drawn from ``classifier`` units
        only (one classifier per policy and seed): a long upstream stage says nothing about the rest."""
        self._update(f"{name} ...")
        self.log(f"{self.done + 1}/{self.total} {name}: {note or 'running'} ({self.eta()})")
        t = time.monotonic()
        self.t_first = self.t_first or t
        if classifier and self.t_classifiers is None:
            self.t_classifiers = t
        try:
            yield
        except BaseException:
            self.log(f"{name}: FAILED after {_fmt(time.monotonic() - t)}")
            raise
        self.t_last = time.monotonic()
        dt = self.t_last - t
        self.done += 1
        self.ran += 1
        self.classifiers_ran += classifier
        self._update(f"{name} done")
        self.log(f"{self.done}/{self.total} {name}: done in {_fmt(dt)} ({self.eta() or 'all done'})")

    def completed(self, name: str) -> None:
        """A unit timed elsewhere (a parallel worker) has finished."""
        self.t_first = self.t_first or self.t0
        if self.t_classifiers is None:  # the parallel classifiers began when the last unit before them ended
            self.t_classifiers = self.t_last
        self.done += 1
        self.ran += 1
        self.classifiers_ran += 1
        self.t_last = time.monotonic()
        self._update(f"{name} done")
        self.log(f"{self.done}/{self.total} {name}: done ({self.eta() or 'all done'})")

    def finish(self) -> None:
        self.log(f"finished in {_fmt(time.monotonic() - self.t0)}")
