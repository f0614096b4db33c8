"""One writer per run directory (synthmed.lock): a second writer exits 2 at once naming the first; readers pass."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from synthmed.cli import main
from synthmed.layout import RunLayout
from synthmed.lock import RunDirLockedError, active_holder, lock_path, read_holder, run_lock, sidecar_path

HOLDER = textwrap.dedent("""
    import sys, time
    from synthmed.lock import run_lock
    with run_lock(sys.argv[1], "run", argv=["synthmed", "run", "holder.yaml"]):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def _start_holder(run_dir: Path, seconds: float = 60.0) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), str(seconds)], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_process_exits_2_naming_the_first(tmp_path: Path) -> None:
    """Two processes: the first holds the lock, the second (`synthmed train`, a real CLI process) exits 2 at once."""
    run = tmp_path / "run"
    holder = _start_holder(run)
    try:
        cfg = tmp_path / "c.yaml"
        cfg.write_text("seed: 0\n")
        start = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "synthmed", "train", str(cfg), "-o", str(run)],
                                capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                                timeout=120)
        took = time.monotonic() - start
        assert second.returncode == 2, second.stderr
        lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), second.stderr
        assert f"PID {holder.pid}" in lines[0] and "synthmed run" in lines[0] and socket.gethostname() in lines[0]
        assert "Traceback" not in second.stderr
        assert not RunLayout(run).config.exists(), "the refused writer must not write into the run directory"
        print(f"second writer refused after {took:.2f} s (process start included)")
    finally:
        holder.kill()
        holder.wait()


def test_in_process_second_writer_refused_and_released_after(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with run_lock(run, "generate") as lock:
        rec = read_holder(lock)
        assert rec is not None and rec["pid"] == os.getpid() and rec["command"] == "generate"
        with pytest.raises(RunDirLockedError, match=r"in use by `synthmed generate` \(PID \d+"):
            with run_lock(run, "train"):
                pass
    assert not sidecar_path(lock_path(run)).exists(), "the holder record goes with the lock"
    with run_lock(run, "train"):  # free again
        pass


def test_cli_writer_refused_while_locked_and_report_evaluate_do_not_lock(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 0\n")
    with run_lock(run, "run"):
        for verb in ("finetune", "generate", "quality", "train", "run", "sweep"):
            assert main([verb, str(cfg), "-o", str(run)]) == 2, verb
            err = capsys.readouterr().err
            assert err.count("error: ") == 1 and "in use by `synthmed run`" in err, (verb, err)
        # readers: they fail for their own reasons (nothing to read yet), never because of the lock
        main(["evaluate", str(run)])
        main(["report", str(run)])
        err = capsys.readouterr().err
        assert "in use by" not in err


def test_lock_left_by_dead_process_is_taken_over_with_warning(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = lock_path(run)
    lock.write_text("")
    sidecar_path(lock).write_text(json.dumps({"command": "run", "pid": dead.pid, "host": socket.gethostname(),
                                              "started": "2026-01-01T00:00:00Z"}))
    assert active_holder(run) is None  # a dead holder is not active
    with run_lock(run, "train"):
        assert read_holder(lock)["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert err.startswith("warning: took over the lock") and f"PID {dead.pid}" in err


def test_sweep_shards_lock_separately_and_exclude_whole_dir_writers(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with run_lock(run, "sweep", shard=0):
        with run_lock(run, "sweep", shard=1):  # another shard runs alongside
            pass
        with pytest.raises(RunDirLockedError, match="shard|sweep"):
            with run_lock(run, "run"):  # a whole-directory writer waits for the shards
                pass
        with pytest.raises(RunDirLockedError):
            with run_lock(run, "sweep", shard=0):  # the same shard twice
                pass
    with run_lock(run, "run"):
        with pytest.raises(RunDirLockedError, match="`synthmed run`"):
            with run_lock(run, "sweep", shard=2):
                pass


def test_ranks_of_one_launched_command_share_rank_zeros_lock(tmp_path, monkeypatch) -> None:
    """Under torchrun / accelerate launch only rank 0 takes the lock; the other ranks of the command do not."""
    from synthmed.lock import run_lock

    run = tmp_path / "run"
    with run_lock(run, "generate"):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "1")
        with run_lock(run, "generate"):
            pass
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(Exception, match="in use by"):
            with run_lock(run, "generate"):
                pass


def test_shard_probe_waits_for_a_brief_hold_and_refuses_a_long_one(tmp_path: Path) -> None:
    """A shard probes the main lock with a short wait (SLURM array tasks starting together probe it at once): a
    hold shorter than the wait is waited out, a whole-directory writer is still refused, after <= ~2 s."""
    from synthmed.lock import PROBE_TIMEOUT_S

    assert 0 < PROBE_TIMEOUT_S <= 2.0
    run = tmp_path / "run"
    brief = _start_holder(run, 0.5)
    try:
        start = time.monotonic()
        with run_lock(run, "sweep", shard=0):
            waited = time.monotonic() - start
    finally:
        brief.kill()
        brief.wait()
    assert waited < PROBE_TIMEOUT_S + 0.5
    long = _start_holder(run, 60.0)
    try:
        start = time.monotonic()
        with pytest.raises(RunDirLockedError, match=f"PID {long.pid}"):
            with run_lock(run, "sweep", shard=1):
                pass
        took = time.monotonic() - start
    finally:
        long.kill()
        long.wait()
    assert PROBE_TIMEOUT_S - 0.1 <= took <= PROBE_TIMEOUT_S + 1.5
    assert not sidecar_path(lock_path(run, 1)).exists(), "the refused shard released its own lock"


def test_stage_verbs_print_their_last_line_on_rank_zero_only(monkeypatch, capsys) -> None:
    """``accelerate launch`` / torchrun start the command once per process: one line, not one per rank."""
    from synthmed.cli import _echo_main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    _echo_main("generator saved to x")
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    _echo_main("generator saved to x")
    assert capsys.readouterr().out == "generator saved to x\n"
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    _echo_main("trained 1 classifier(s)")
    assert capsys.readouterr().out == "trained 1 classifier(s)\n"
