"""Shared utilities of the crash-safety / determinism / offline / bad-input tests (issue 8).

* ``TINY``: ``--set`` overrides that shrink ``configs/smoke.yaml`` to seconds of CPU work (28 px, 4 DDPM steps).
* ``cli`` / ``cli_killed_at``: run ``python -m synthmed`` in a subprocess; the second one installs a *test-side*
  fault injector (no hook in stage code): when the N-th atomic rename whose destination matches a regex is about to
  happen, the temp file is truncated to half its size (a write cut short) and the process SIGKILLs itself. That
  reproduces "killed during a checkpoint write" / "killed during an image write" deterministically.
* ``digests`` / ``leftover_temps``: compare run directories bit for bit and find temp files a reader could see.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"

#: smoke.yaml made tiny: 4 classes x 20 phantom images at 28 px, 4 DDPM steps, 4 images per class, 1 epoch
TINY = [
    "device=cpu",
    "data.size=28",
    "data.phantom={n_classes: 4, n_per_class: 20, size: 28}",
    "generator.ddpm={preset: XS, steps: 4, batch_size: 8, checkpoint_every: 2, warmup_steps: 1, mixed_precision: 'no'}",
    "generation={n_per_class: 4, sampler: dpmpp, steps: 2, batch_size: 4}",
    "quality={backbone: classifier, cas: false, kid_subsets: 5, max_real: 64, gallery_k: 2}",
    "classifier={model: cnn, epochs: 1, batch_size: 32}",
    "filter.min_confidence=0.0",
    "run.seeds=[0]",
    "run.policies={real_only: {mix.policy: real_only}, "
    "add: {mix.policy: add_per_class, mix.add_per_class: 4, mix.shortage: take_all}}",
]


def set_args(overrides: list[str]) -> list[str]:
    out: list[str] = []
    for o in overrides:
        out += ["--set", o]
    return out


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e.update({"PYTHONHASHSEED": "0", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"})
    e.pop("SYNTHMED_TRUST_PICKLE", None)
    e.update(extra)
    return e


def stage_args(verb: str, run_dir: Path, *extra: str, overrides: list[str] | None = None) -> list[str]:
    return [verb, str(SMOKE), "-o", str(run_dir), *set_args(TINY + list(overrides or [])), *extra]


def cli(args: list[str], timeout: float = 900, **env_extra: str) -> subprocess.CompletedProcess[str]:
    """``python -m synthmed ARGS`` in a subprocess (text output captured)."""
    return subprocess.run([sys.executable, "-m", "synthmed", *args], capture_output=True, text=True,
                          timeout=timeout, env=env(**env_extra), cwd=ROOT)


# The fault injector runs inside the child: it wraps ``os.replace`` as seen by ``synthmed.io`` (every atomic file
# write of the project goes through it) and by ``generators.checkpoints`` / ``generators.stage`` (checkpoint and generator
# folder renames).
_BOOT = r"""
import os, re, signal, sys, types
pattern = re.compile(os.environ["SYNTHMED_TEST_KILL_PATTERN"])
at = int(os.environ.get("SYNTHMED_TEST_KILL_AT", "1"))
seen = [0]
real_replace = os.replace

def replace(src, dst, *a, **k):
    if pattern.search(os.fspath(dst).replace(os.sep, "/")):
        seen[0] += 1
        if seen[0] >= at:
            if os.path.isfile(src):
                os.truncate(src, os.path.getsize(src) // 2)  # the write was cut short
            sys.stderr.write(f"fault injector: SIGKILL before {dst}\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *a, **k)

proxy = types.ModuleType("os_with_fault")
proxy.__dict__.update(os.__dict__)
proxy.replace = replace
import synthmed.io, synthmed.generators.checkpoints, synthmed.generators.stage
for mod in (synthmed.io, synthmed.generators.checkpoints, synthmed.generators.stage):
    mod.os = proxy
from synthmed.cli import main
sys.exit(main(sys.argv[1:]))
"""


def cli_killed_at(args: list[str], pattern: str, at: int = 1, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run the CLI and SIGKILL it just before the ``at``-th atomic rename onto a path matching ``pattern``."""
    proc = subprocess.run([sys.executable, "-c", _BOOT, *args], capture_output=True, text=True, timeout=timeout,
                          env=env(SYNTHMED_TEST_KILL_PATTERN=pattern, SYNTHMED_TEST_KILL_AT=str(at)), cwd=ROOT)
    return proc


def cli_killed_when(args: list[str], ready, timeout: float = 900, poll: float = 0.02) -> int:
    """Start the CLI and SIGKILL it as soon as ``ready()`` is true; returns the exit status (-9 when killed)."""
    proc = subprocess.Popen([sys.executable, "-m", "synthmed", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env(), cwd=ROOT)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(poll)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def was_killed(proc: subprocess.CompletedProcess[str] | int) -> bool:
    code = proc if isinstance(proc, int) else proc.returncode
    return code == -signal.SIGKILL


# ------------------------------------------------------------------------------------------------ comparisons

#: files whose content legitimately differs between runs (timestamps, durations, logs)
VOLATILE = ("pipeline/state.json",)


FULL = ("generator", "synthetic", "classifiers", "pipeline/evaluation.txt", "quality/memorization.csv",
        "quality/real_classifier/model.safetensors")


def digests(run_dir: Path, under: tuple[str, ...] = FULL) -> dict[str, str]:
    """relative path -> sha256 of every file under ``under`` (temp files are left out: see ``leftover_temps``)."""
    from synthmed.io import TMP_PREFIX

    run_dir = Path(run_dir)
    out = {}
    for rel in under:
        p = run_dir / rel
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else []
        for f in files:
            r = f.relative_to(run_dir).as_posix()
            if r not in VOLATILE and not f.name.startswith(TMP_PREFIX):
                out[r] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def leftover_temps(run_dir: Path) -> list[str]:
    """Temp files / folders (``synthmed.io.TMP_PREFIX``) anywhere a reader looks (``.stale/`` is out of sight)."""
    from synthmed.io import TMP_PREFIX

    run_dir = Path(run_dir)
    return sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob(TMP_PREFIX + "*")
                  if ".stale" not in p.relative_to(run_dir).parts)


def pngs(run_dir: Path) -> list[Path]:
    return sorted((Path(run_dir) / "synthetic").rglob("*.png"))


# ------------------------------------------------------------------------------------------------ the reference run

_CACHE: dict[str, Path] = {}


def reference_run() -> Path:
    """One uninterrupted ``synthmed run`` of the TINY config (subprocess), made once per pytest process."""
    if "run" not in _CACHE:
        base = Path(tempfile.mkdtemp(prefix="synthmed-ref-"))
        atexit.register(shutil.rmtree, base, True)
        proc = cli(stage_args("run", base / "run"))
        assert proc.returncode == 0, proc.stderr[-4000:]
        _CACHE["run"] = base / "run"
    return _CACHE["run"]


def quality_json(run_dir: Path) -> dict:
    """quality.json without the feature-cache hit counters (they depend on what an earlier attempt cached)."""
    data = json.loads((Path(run_dir) / "quality" / "quality.json").read_text(encoding="utf-8"))
    data.pop("feature_cache", None)
    return data


def evaluation_json(run_dir: Path) -> dict:
    """pipeline/evaluation.json without ``run_dir`` (the folder's own path)."""
    data = json.loads((Path(run_dir) / "pipeline" / "evaluation.json").read_text(encoding="utf-8"))
    data.pop("run_dir", None)
    return data


def diff(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """Paths that are missing on one side or differ."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
