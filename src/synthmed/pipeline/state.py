"""``RUN_DIR/pipeline/state.json``: which stage ran with which key, and safe clearing of stale outputs.

A record is ``{key, status: running|done, inputs: [record names], outputs: [relative paths], seconds}``. A stage
whose record says ``done`` with the current key is skipped; ``running`` with the current key is resumed (the stage
functions resume from their own checkpoints); anything else starts fresh: its old outputs are renamed into
``RUN_DIR/.stale/`` (an atomic rename, so a crash never leaves a half-deleted folder where a stage looks) and the
records of everything that depends on it are dropped.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from synthmed.errors import UserError
from synthmed.io import atomic_write_json

STATE_FILE = "pipeline/state.json"
STATE_VERSION = 1
STALE_DIR = ".stale"


class State:
    """The persistent stage records of one run directory."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STATE_FILE
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self.records = dict(data.get("records", {}))
            except (OSError, ValueError, AttributeError):
                data, self.records = {}, {}  # an unreadable state only costs a rerun
            version = data.get("version", STATE_VERSION) if isinstance(data, dict) else STATE_VERSION
            if not isinstance(version, int) or version > STATE_VERSION:
                raise UserError(f"{self.run_dir} was made by an incompatible synthmed version (pipeline state format "
                                f"{version}, this version reads {STATE_VERSION}): use a new run directory")

    def save(self) -> None:
        atomic_write_json(self.path, {"version": STATE_VERSION, "records": self.records})

    # ------------------------------------------------------------------ queries
    def status(self, name: str, key: str) -> str:
        """``done`` / ``running`` (same key), or ``new`` (no record, other key)."""
        rec = self.records.get(name)
        if rec is None or rec.get("key") != key:
            return "new"
        return "done" if rec.get("status") == "done" else "running"

    def dependents(self, name: str) -> set[str]:
        """Names of all records that (transitively) take ``name`` as an input."""
        out: set[str] = set()
        frontier = {name}
        while frontier:
            nxt = {n for n, r in self.records.items() if set(r.get("inputs", ())) & frontier and n not in out}
            out |= nxt
            frontier = nxt
        return out

    # ------------------------------------------------------------------ updates
    def start(self, name: str, key: str, inputs: list[str], outputs: list[str]) -> None:
        """Record a fresh start: drop dependents' records, move old outputs aside, then save."""
        for dep in self.dependents(name):
            self.records.pop(dep, None)
        self.records[name] = {"key": key, "status": "running", "inputs": inputs, "outputs": outputs,
                              "started": time.time()}
        self.save()
        for rel in outputs:
            self.move_aside(rel, name)

    def finish(self, name: str, **extra: Any) -> None:
        rec = self.records[name]
        rec.update(status="done", seconds=round(time.time() - rec.get("started", time.time()), 3), **extra)
        self.save()

    def drop(self, name: str) -> None:
        if self.records.pop(name, None) is not None:
            self.save()

    def move_aside(self, rel: str, tag: str) -> Path | None:
        """Rename ``RUN_DIR/rel`` into ``RUN_DIR/.stale/<time>-<tag>/rel``; returns the new path (None if absent)."""
        src = self.run_dir / rel
        if not src.exists() and not src.is_symlink():
            return None
        safe_tag = tag.replace("/", "_")
        dest = self.run_dir / STALE_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{safe_tag}" / rel
        n = 0
        while dest.exists():
            n += 1
            dest = dest.with_name(f"{Path(rel).name}.{n}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        src.rename(dest)
        return dest

    def purge_stale(self) -> None:
        """Delete ``RUN_DIR/.stale`` (an interrupted delete there is harmless)."""
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.run_dir / STALE_DIR)
