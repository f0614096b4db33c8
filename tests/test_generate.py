"""The finetune / generate stages with the ddpm generator, and the shared generation plan."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthmed.cli import main
from synthmed.config import load_config, save_resolved
from synthmed.errors import MissingStageError
from synthmed.generators.plan import counts_to_generate, plan_generation, shard
from synthmed.generators.stage import finetune, generate
from synthmed.synthetic.dataset import SyntheticSet, image_id, image_seed

OVERRIDES = [
    "data.source=phantom:blood", "data.phantom.n_classes=2", "data.phantom.n_per_class=14", "data.phantom.size=28",
    "data.size=28", "device=cpu", "generator.kind=ddpm", "generator.ddpm.preset=custom",
    "generator.ddpm.block_out_channels=[8, 16]", "generator.ddpm.layers_per_block=1", "generator.ddpm.steps=3",
    "generator.ddpm.batch_size=4", "generator.ddpm.checkpoint_every=2", "generator.ddpm.num_train_timesteps=50",
    "generator.ddpm.mixed_precision=no", "generation.n_per_class=3", "generation.sampler=dpmpp",
    "generation.steps=3", "generation.batch_size=4",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory with a tiny trained generator on 28 px phantom data."""
    cfg = load_config(None, OVERRIDES)
    run_dir = tmp_path_factory.mktemp("run")
    save_resolved(cfg, run_dir)
    finetune(cfg, run_dir)
    return cfg, run_dir


def _bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_finetune_writes_generator_layout(run):
    cfg, run_dir = run
    gen = run_dir / "generator"
    assert (gen / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (gen / "unet" / "config.json").is_file() and (gen / "scheduler" / "scheduler_config.json").is_file()
    import json

    meta = json.loads((gen / "synthmed.json").read_text())
    assert meta["kind"] == "ddpm" and meta["image_policy"]["resolution"] == 32
    assert meta["image_policy"]["padding"] == [2, 2, 2, 2] and meta["image_policy"]["height"] == 28
    assert meta["training"]["steps"] == 3 and len(meta["model_sha256"]) == 64
    with open(gen / "training_images.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and set(rows[0]) == {"id", "label", "pixel_hash"}
    ckpts = sorted(p.name for p in (run_dir / "generator_work" / "checkpoints").iterdir())
    assert ckpts == ["step-0000002", "step-0000003"]
    # a second finetune with the same config is a no-op (same fingerprint, same weights file)
    before = (gen / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    finetune(cfg, run_dir)
    assert (gen / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == before


def test_generate_writes_manifest_and_resumes(run):
    cfg, run_dir = run
    root = generate(cfg, run_dir)
    synth = SyntheticSet(run_dir)
    rows = synth.read_manifest()
    assert len(rows) == 6 and {r["class_name"] for r in rows} == set(cfg_classes(run_dir))
    for col in ("path", "label", "class_name", "seed", "generator", "sampler", "steps", "guidance", "model_sha256"):
        assert all(str(r[col]) != "" for r in rows), col
    assert all(r["kept"] and r["filter_reason"] == "" for r in rows)
    assert rows[0]["seed"] == str(image_seed(cfg.seed, 0, 0))
    with Image.open(root / rows[0]["path"]) as im:
        assert im.size == (28, 28) and im.mode == "RGB"  # cropped back to the real size
    first = _bytes(root)
    victim = root / rows[3]["path"]
    victim.unlink()
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}
    generate(cfg, run_dir)
    assert _bytes(root) == first  # regenerated with identical bytes
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())  # the others were skipped
    assert len(synth.read_manifest()) == 6


def test_generate_regenerates_when_settings_change(run, tmp_path):
    cfg, run_dir = run
    generate(cfg, run_dir)
    from synthmed.config import with_overrides

    cfg2 = with_overrides(cfg, {"generation.guidance": 1.0})
    generate(cfg2, run_dir)
    rows = SyntheticSet(run_dir).read_manifest()
    assert {float(r["guidance"]) for r in rows} == {1.0}
    generate(cfg, run_dir)  # back to the default for the other tests


def cfg_classes(run_dir: Path) -> list[str]:
    import json

    return json.loads((run_dir / "generator" / "synthmed.json").read_text())["classes"]


def test_generate_without_generator_exits_2(tmp_path, capsys):
    cfg = load_config(None, OVERRIDES)
    with pytest.raises(MissingStageError):
        generate(cfg, tmp_path / "empty")
    cfg_path = tmp_path / "c.yaml"
    cfg.save(cfg_path)
    code = main(["generate", str(cfg_path), "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "synthmed finetune" in err and len(err.strip().splitlines()) == 1


def test_plan_balance_to_and_shards():
    cfg = load_config(None, ["generation.balance_to=5", "seed=3"])
    items = plan_generation(cfg, ["a", "b", "c"], [2, 5, 7])
    assert counts_to_generate(cfg.generation, [2, 5, 7]) == [3, 0, 0]
    assert [(i.class_name, i.index) for i in items] == [("a", 0), ("a", 1), ("a", 2)]
    assert items[1].seed == image_seed(3, 0, 1) and items[1].id == image_id(0, 1)
    assert items[1].relpath == f"a/{image_id(0, 1)}.png"
    cfg = load_config(None, ["generation.n_per_class=4", "generation.seed=9"])
    items = plan_generation(cfg, ["a", "b"], [1, 1])
    assert len(items) == 8 and items[0].seed == image_seed(9, 0, 0)
    parts = [shard(items, r, 3) for r in range(3)]
    assert sorted(i.id for p in parts for i in p) == sorted(i.id for i in items)
    assert not set(i.id for i in parts[0]) & set(i.id for i in parts[1])
    with pytest.raises(ValueError):
        shard(items, 3, 3)
    np.testing.assert_equal(len(plan_generation(cfg, [], [])), 0)
