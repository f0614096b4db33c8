"""The bad-input catalogue of docs/errors.md: every case exits 2 with one ``error:`` line naming the culprit and
leaves nothing half-written (no temp file; no run directory at all when the configuration itself is bad).

Data-layer cases already tested in ``tests/test_data_bad_input.py`` (corrupt / truncated PNG, zero-byte file,
non-image under --strict, empty class, single class, unknown label, label out of range, length mismatch, NaN/inf,
16-bit / palette / alpha / CMYK conversions, decompression bomb, path traversal, duplicate paths) are referenced by
docs/errors.md and not repeated here; this file adds the rest.
"""

from __future__ import annotations

import errno
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers_faults import SMOKE, TINY, leftover_temps, set_args
from synthmed.cli import main

S = str(SMOKE)


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """No progress bars on stderr (only ``warning:`` and ``error:`` lines are expected there)."""
    monkeypatch.setenv("TQDM_DISABLE", "1")


PROGRESS_LINE = re.compile(r"^[\w /.-]+:\s+\d+%\|")  # a progress bar cleared by '\r' before the error


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, [ln for ln in err.splitlines() if ln.startswith("error: ")], err


def assert_exit_2(result: tuple[int, list[str], str], *needles: str) -> str:
    code, errors, err = result
    assert code == 2, err
    assert len(errors) == 1, err
    assert "Traceback" not in err and "internal error" not in err, err
    other = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("error: ", "warning: "))
             and not PROGRESS_LINE.match(ln)]
    assert not other, f"unexpected stderr lines: {other}"
    for n in needles:
        assert n in errors[0], f"{n!r} not in {errors[0]!r}"
    return errors[0]


# ------------------------------------------------------------------------------------------------ configuration

CONFIG_CASES = [
    # (id, extra argv after `train smoke.yaml -o OUT`, needles in the error line)
    ("unknown-key", ["--set", "generator.ddpm.stepz=3"],
     ["unknown config key 'generator.ddpm.stepz'", "did you mean 'generator.ddpm.steps'"]),
    ("wrong-type", ["--set", "classifier.epochs=many"], ["invalid config value classifier.epochs='many'", "integer"]),
    ("negative-count", ["--set", "generation.n_per_class=-5"],
     ["generation.n_per_class=-5", "greater than or equal to 0"]),
    ("ratio-above-1", ["--set", "mix.ratio=1.5"], ["mix.ratio=1.5", "less than or equal to 1"]),
    ("confidence-below-0", ["--set", "filter.min_confidence=-0.1"], ["filter.min_confidence=-0.1", "greater than"]),
    ("fraction-zero", ["--set", "data.fraction=0"], ["data.fraction=0", "greater than 0"]),
    ("override-without-equals", ["--set", "classifier.epochs"], ["'classifier.epochs' must look like key=value"]),
    ("unknown-sampler", ["--set", "generation.sampler=plms"], ["generation.sampler='plms'"]),
    ("average-more-checkpoints-than-written", ["--set", "generator.ddpm.average_checkpoints=99"],
     ["generator.ddpm.average_checkpoints=99, but steps=", "lower checkpoint_every or average_checkpoints"]),
    ("importance-without-loss-weights", ["--set", "generator.ddpm.timestep_importance=0.5", "--set",
                                         "generator.ddpm.snr_gamma=null"],
     ["generator.ddpm.timestep_importance samples noise levels by the min-SNR loss weight", "set generator.ddpm.snr_gamma"]),
]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_value(tmp_path: Path, capsys, case) -> None:
    _, extra, needles = case
    out = tmp_path / "run"
    assert_exit_2(run(capsys, "train", S, "-o", str(out), *extra), *needles)
    assert not out.exists(), "a bad config must not create the run directory"


@pytest.mark.parametrize("text, needles", [
    ("clasifier:\n  epochs: 1\n", ["unknown config key 'clasifier'", "did you mean 'classifier'"]),
    ("generation: [1, 2]\n", ["invalid config value generation=[1, 2]", "valid dictionary"]),
    ("a: [1,\n", ["c.yaml line 2: not valid YAML"]),
    ("- a\n- b\n", ["c.yaml: the top level must be a mapping"]),
    (b"\xff\xfe\x00bad", ["c.yaml: not a UTF-8 text file"]),
], ids=["yaml-unknown-section", "yaml-wrong-type", "yaml-syntax", "yaml-not-mapping", "yaml-not-utf8"])
def test_bad_yaml_file(tmp_path: Path, capsys, text, needles) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / "run"
    assert_exit_2(run(capsys, "train", str(cfg), "-o", str(out)), *needles)
    assert not out.exists()


def test_missing_required_value_sd_base(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert_exit_2(run(capsys, "finetune", S, "-o", str(out), *set_args(TINY),
                      "--set", "generator.kind=stable_diffusion"), "generator.stable_diffusion.base is not set")
    assert leftover_temps(out) == [] and not (out / "generator").exists()


def test_missing_base_model_path_sd(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    missing = tmp_path / "no-such-sd"
    assert_exit_2(run(capsys, "finetune", S, "-o", str(out), *set_args(TINY), "--set",
                      "generator.kind=stable_diffusion", "--set", f"generator.stable_diffusion.base={missing}"),
                  f"base model not found: {missing}")
    assert leftover_temps(out) == [] and not (out / "generator").exists()


# ------------------------------------------------------------------------------------------------ command line


@pytest.mark.parametrize("argv, needles", [
    (["train", S, "-o", "{t}/run", "--policy", "nope"], ["unknown policy 'nope'"]),
    (["train", S, "-o", "{t}/run", "--seeds", "1,x"], ["--seeds must be comma-separated integers, got '1,x'"]),
    (["run", S, "-o", "{t}/run", "--force", "genrate"], ["--force genrate: unknown stage"]),
    (["train", S, "-o", "{t}/afile"], ["run directory {t}/afile exists and is not a folder"]),
    (["generate", S, "-o", "{t}/run", "--set", "device=cpu"], ["generator ({t}/run/generator) not found",
                                                              "run `synthmed finetune` first"]),
    (["quality", S, "-o", "{t}/run", "--set", "device=cpu"], ["run `synthmed generate` first"]),
    (["evaluate", "{t}/run"], ["run `synthmed train` first"]),
    (["train", "{t}/missing.yaml", "-o", "{t}/run"], ["config file not found: {t}/missing.yaml"]),
], ids=["unknown-policy", "bad-seeds", "force-typo", "run-dir-is-file", "generate-before-finetune",
        "quality-before-generate", "evaluate-before-train", "missing-config-file"])
def test_bad_command_line(tmp_path: Path, capsys, argv, needles) -> None:
    (tmp_path / "afile").write_text("x")
    t = str(tmp_path)
    assert_exit_2(run(capsys, *[a.replace("{t}", t) for a in argv]), *[n.replace("{t}", t) for n in needles])
    assert leftover_temps(tmp_path) == []


# ------------------------------------------------------------------------------------------------ images (JPEG)


def _folder(root: Path) -> Path:
    for ci, c in enumerate(("a", "b")):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), (ci * 60 + i * 9, 30, 60)).save(root / c / f"{i}.jpg", quality=95)
    return root


def test_corrupt_jpeg(tmp_path: Path, capsys) -> None:
    root = _folder(tmp_path / "d")
    (root / "a" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00 garbage garbage")
    assert_exit_2(run(capsys, "data", "info", f"folder:{root}"), "bad.jpg")


def test_truncated_jpeg(tmp_path: Path, capsys) -> None:
    root = _folder(tmp_path / "d")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (root / "b" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert_exit_2(run(capsys, "data", "info", f"folder:{root}", "--set", "data.size=16"), "cut.jpg")


def test_image_with_wrong_extension_under_strict(tmp_path: Path, capsys) -> None:
    root = _folder(tmp_path / "d")
    (root / "a" / "scan.dcm").write_bytes(b"DICM" + b"\0" * 200)
    assert_exit_2(run(capsys, "data", "info", f"folder:{root}", "--strict"), "scan.dcm")


# ------------------------------------------------------------------------------------------------ with a generator


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with a 1-step DDPM generator (in-process finetune, a few seconds)."""
    out = tmp_path_factory.mktemp("gen") / "run"
    code = main(["finetune", S, "-o", str(out), *set_args(TINY + ["generator.ddpm.steps=1",
                                                                    "generator.ddpm.checkpoint_every=1"])])
    assert code == 0
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("extra, drop_split, needles", [
    (["generation.guide=head_to_tail"], False, ["generation.guide=head_to_tail needs generation.strength"]),
    (["data.phantom.n_classes=3"], False, ["data/split.csv was written for a different data config",
                                           "use a new run dir (-o)"]),
    (["data.phantom.n_classes=3"], True, ["the generator was trained on classes", "rerun `synthmed finetune`"]),
    (["data.size=32", "data.phantom.size=32"], False, ["the generator makes 28x28x3 images, the data is 32x32x3"]),
], ids=["guide-without-strength", "split-from-other-data", "generator-for-other-classes", "generator-for-other-size"])
def test_generate_mismatch(tiny_generator: Path, tmp_path: Path, capsys, extra, drop_split, needles) -> None:
    run_dir = _copy(tiny_generator, tmp_path / "run")
    if drop_split:
        shutil.rmtree(run_dir / "data")
    assert_exit_2(run(capsys, "generate", S, "-o", str(run_dir), *set_args(TINY + ["generator.ddpm.steps=1",
                                                                                     *extra])), *needles)
    assert not (run_dir / "synthetic").exists() or not list((run_dir / "synthetic").rglob("*.png"))
    assert leftover_temps(run_dir) == []


def test_disk_full_during_generation(tiny_generator: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """ENOSPC on the 3rd PNG (half of it written): exit 2 'disk full ...', the two finished PNGs intact, no temp."""
    import synthmed.io as sio

    run_dir = _copy(tiny_generator, tmp_path / "run")
    real_open = sio.atomic_open
    calls = {"png": 0}

    def full_disk(path, data: bytes) -> None:
        if str(path).endswith(".png"):
            calls["png"] += 1
            if calls["png"] >= 3:
                with real_open(path, "wb") as fh:
                    fh.write(data[: len(data) // 2])
                    raise OSError(errno.ENOSPC, "No space left on device")
        with real_open(path, "wb") as fh:
            fh.write(data)

    monkeypatch.setattr(sio, "atomic_write_bytes", full_disk)
    line = assert_exit_2(run(capsys, "generate", S, "-o", str(run_dir),
                             *set_args(TINY + ["generator.ddpm.steps=1"])))
    assert "disk full" in line.lower(), line
    written = sorted((run_dir / "synthetic").rglob("*.png"))
    assert len(written) == 2
    for p in written:
        with Image.open(p) as im:
            im.load()
    assert leftover_temps(run_dir) == []


def test_run_dir_from_incompatible_version(tmp_path: Path, capsys, monkeypatch) -> None:
    """A run directory whose pipeline state has a future format version is refused before any work."""
    import synthmed.pipeline.run as prun

    run_dir = tmp_path / "run"
    (run_dir / "pipeline").mkdir(parents=True)
    (run_dir / "pipeline" / "state.json").write_text('{"version": 999, "records": {"data": {"key": "x"}}}')

    def must_not_run(*a, **k):
        raise RuntimeError("the pipeline started on a run directory of an incompatible version")

    monkeypatch.setattr(prun, "run_upstream", must_not_run)
    assert_exit_2(run(capsys, "run", S, "-o", str(run_dir), *set_args(TINY)), "version", str(run_dir))
