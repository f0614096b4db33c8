"""One writer per run directory: an exclusive ``filelock`` at ``RunLayout(run_dir).lock``.

Every command that writes into a run directory (``finetune``, ``generate``, ``quality``, ``train``, ``run``,
``sweep``) holds :func:`run_lock` for its whole duration; a second writer fails at once (exit 2) with one line
naming the holder, read from a sidecar JSON next to the lock (command, PID, host, start time). ``evaluate`` and
``report`` read without taking it (``report`` only warns when a writer is active: :func:`active_holder`).

The lock is the kernel's (``flock``, released when the process dies); on a filesystem without ``flock`` filelock
falls back to a marker file and breaks it when its owner is gone (same host, PID dead). Either way a sidecar left by
a dead process is reported with a ``warning:`` and taken over.

Sweep shards (``--shard i/n``) each lock their own shard name (``<lock>.shard-i``) so shards on a shared filesystem
run side by side; a shard refuses to start while a whole-directory writer holds the main lock (it waits up to 2 s
for it, so that shards probing it together do not refuse each other), and a
whole-directory writer refuses to start while any shard holds its lock (each side takes its own lock, then tests
the other's, so two racing starts cannot both pass).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from synthmed.errors import UserError
from synthmed.layout import RunLayout


#: how long a sweep shard waits for the run directory's main lock when it probes it (see :func:`_probe`)
PROBE_TIMEOUT_S = 2.0


class RunDirLockedError(UserError):
    """Another synthmed process is writing into this run directory."""


def lock_path(run_dir: str | os.PathLike[str], shard: int | None = None) -> Path:
    """The lock file of a run directory (or of one sweep shard in it)."""
    base = RunLayout(run_dir).lock
    return base if shard is None else base.with_name(f"{base.name}.shard-{int(shard)}")


def sidecar_path(lock: Path) -> Path:
    """The JSON next to a lock file that names its holder."""
    return lock.with_name(lock.name + ".json")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except OSError:
        return False
    return True


def read_holder(lock: Path) -> dict[str, Any] | None:
    """The holder record of ``lock`` (None when absent or unreadable)."""
    try:
        rec = json.loads(sidecar_path(lock).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def describe(rec: dict[str, Any] | None) -> str:
    """``synthmed run (PID 12, host h, started 2026-01-01T10:00:00Z)`` for a holder record."""
    if not rec:
        return "another synthmed process (no holder record yet)"
    return (f"`synthmed {rec.get('command', '?')}` (PID {rec.get('pid', '?')} on {rec.get('host', '?')}, "
            f"started {rec.get('started', '?')})")


def _is_dead(rec: dict[str, Any] | None) -> bool:
    """True when the record names a process on this host that no longer exists."""
    if not rec or rec.get("host") != socket.gethostname():
        return False
    try:
        return not _pid_alive(int(rec.get("pid", -1)))
    except (TypeError, ValueError):
        return False


def active_holder(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The holder record of a live writer of ``run_dir`` (best effort, without touching the lock), else None."""
    locks = [lock_path(run_dir)] + sorted(RunLayout(run_dir).lock.parent.glob(RunLayout(run_dir).lock.name + ".shard-*[0-9]"))
    for lock in locks:
        rec = read_holder(lock)
        if rec and not _is_dead(rec) and rec.get("pid") != os.getpid():
            return rec
    return None


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def _holder_after_refusal(lock: Path) -> dict[str, Any] | None:
    """The sidecar of a lock we failed to take; the holder may be a moment away from writing it."""
    for _ in range(10):
        rec = read_holder(lock)
        if rec is not None:
            return rec
        time.sleep(0.05)
    return None


def _take(lock: Path, run_dir: Path, command: str, timeout: float = 0.0) -> FileLock:
    """Acquire ``lock`` (waiting at most ``timeout`` seconds), or raise RunDirLockedError naming its holder."""
    fl = FileLock(str(lock), timeout=timeout, thread_local=False)
    try:
        fl.acquire(timeout=timeout)
    except Timeout:
        raise RunDirLockedError(f"run directory {run_dir} is in use by {describe(_holder_after_refusal(lock))}; "
                                f"wait for it to finish or write to another directory (-o)") from None
    return fl


def _probe(lock: Path, run_dir: Path) -> None:
    """Raise if ``lock`` is held by another process (takes it for an instant when free). Waits up to
    ``PROBE_TIMEOUT_S``: shards starting together (a SLURM job array) probe the same lock and must not refuse each
    other's instant hold; a real whole-directory writer holds it far longer and is still refused."""
    _take(lock, run_dir, "probe", timeout=PROBE_TIMEOUT_S).release()


def _launched_rank() -> int:
    """This process's rank under a distributed launcher (0 when not launched so)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return int(os.environ.get("RANK", "0")) if world > 1 else 0
    except ValueError:
        return 0


@contextmanager
def run_lock(run_dir: str | os.PathLike[str], command: str, shard: int | None = None,
             argv: list[str] | None = None) -> Iterator[Path]:
    """Hold the writer lock of ``run_dir`` (created if needed) for the ``with`` block; yields the lock path.

    ``command`` names the verb for the holder record (``run``, ``train`` ...); ``shard`` locks one sweep shard
    instead of the whole directory. Raises :class:`RunDirLockedError` (exit 2) when another process holds it: at once,
    or after at most ``PROBE_TIMEOUT_S`` for a shard whose whole directory is held.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} exists and is not a folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_path(run_dir, shard)
    if _launched_rank() > 0:  # one command over several processes (torchrun / accelerate launch): rank 0 holds it
        yield lock
        return
    stale = read_holder(lock)
    with ExitStack() as stack:
        fl = _take(lock, run_dir, command)
        stack.callback(fl.release)
        if shard is None:  # a whole-directory writer excludes every shard: hold their locks too
            for other in sorted(lock.parent.glob(lock.name + ".shard-*[0-9]")):
                sub = _take(other, run_dir, command)
                stack.callback(sub.release)
        else:  # a shard excludes a whole-directory writer (tested after taking our own lock)
            _probe(lock_path(run_dir), run_dir)
        if stale is not None and _is_dead(stale):
            _warn(f"took over the lock of {run_dir} left by {describe(stale)}, which is no longer running")
        record = {"command": command, "pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                  "argv": list(sys.argv if argv is None else argv), "shard": shard}
        side = sidecar_path(lock)
        tmp = side.with_name(f".tmp-{side.name}.{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, side)
        stack.callback(side.unlink, missing_ok=True)  # runs before the lock is released (LIFO)
        yield lock
