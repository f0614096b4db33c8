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
from synthmed.generators.stage import finetune, generate
from synthmed.synthetic.dataset import SyntheticSet, image_id, image_seed
from synthmed.synthetic.writer import counts_to_generate, plan_generation, shard

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
    assert rows and list(rows[0]) == ["id", "label", "class_name", "pixel_hash"]
    assert json.loads((gen / "generator_config.json").read_text())["settings"]["steps"] == 3
    assert meta["fingerprint"] == meta["training"]["fingerprint"]
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


def test_guided_generation_records_sources_from_train_only(run, tmp_path):
    """generation.strength (guide same_class): every image starts from a training image of its class; the manifest
    records source, strength and guide; a guide without a strength is a one-line config error."""
    import shutil

    from synthmed.config import with_overrides
    from synthmed.data.load import load_data
    from synthmed.errors import ConfigError

    cfg, run_dir = run
    run2 = tmp_path / "guided"
    shutil.copytree(run_dir / "generator", run2 / "generator")
    data = load_data(cfg.data, run2, echo_warnings=False)
    cfg2 = with_overrides(cfg, {"generation.strength": 0.5})
    generate(cfg2, run2, data=data)
    rows = SyntheticSet(run2).read_manifest()
    label_of = dict(zip(data.train.ids, data.train.labels))
    assert len(rows) == 6 and all(r["strength"] == "0.5" and r["guide"] == "same_class" for r in rows)
    assert all(r["source_image"] in label_of and label_of[r["source_image"]] == r["label"] for r in rows)
    assert not {r["source_image"] for r in rows} & (set(data.val.ids) | set(data.test.ids))
    plain = {r["id"]: r for r in SyntheticSet(run_dir).read_manifest()}
    assert all(plain[r["id"]]["source_image"] == "" and plain[r["id"]]["guide"] == "" for r in rows)
    with pytest.raises(ConfigError, match="needs generation.strength"):
        generate(with_overrides(cfg, {"generation.guide": "head_to_tail"}), run2, data=data)


def test_plan_sources_head_to_tail():
    from synthmed.synthetic.writer import plan_sources

    cfg = load_config(None, ["generation.n_per_class=6", "seed=1"])
    items = plan_generation(cfg, ["head", "mid", "tail"], [50, 10, 2])
    cands = {0: [f"h{i}" for i in range(5)], 1: ["m0", "m1"], 2: ["t0"]}
    h2t = plan_sources(items, cands, [50, 10, 2], "head_to_tail")
    src_class = {s: c for c, ids in cands.items() for s in ids}
    for it in h2t:
        if it.class_index == 0:  # the most frequent class has no more frequent donor: its own images
            assert src_class[it.source_id] == 0
        else:
            assert src_class[it.source_id] < it.class_index  # an image of a more frequent class
    assert h2t == plan_sources(items, cands, [50, 10, 2], "head_to_tail")  # seeded by the items
    same = plan_sources(items, cands, [50, 10, 2], "same_class")
    assert [it.source_id for it in same if it.class_index == 1] == ["m0", "m1"] * 3
    assert plan_sources(items, cands, [50, 10, 2], "none") == items


def _fake_sample(batch):
    """A deterministic stand-in for a generator: pixels from each item's seed."""
    return np.stack([np.random.default_rng(it.seed).integers(0, 256, (6, 6, 3), dtype=np.uint8) for it in batch])


def test_writer_two_processes_equal_one(tmp_path):
    """Shards of whole batches written by two 'processes' (rank 1 first, then rank 0 merges) give the manifest and
    PNGs of one process; changed provenance regenerates; no partial manifest is left."""
    from synthmed.synthetic.writer import PARTIAL, write_synthetic

    cfg = load_config(None, ["generation.n_per_class=5"])
    items = plan_generation(cfg, ["a", "b", "c"], [1, 1, 1])
    prov = {"generator": "fake", "sampler": "x", "steps": 3, "guidance": 1.5, "model_sha256": ["s0", "s1", "s2"]}
    one, two = tmp_path / "one", tmp_path / "two"
    made = write_synthetic(one, items, _fake_sample, prov, batch_size=4, progress=False)
    assert len(made) == 15
    for rank in (1, 0):
        write_synthetic(two, items, _fake_sample, prov, batch_size=4, rank=rank, world=2, progress=False)
    assert (two / "synthetic" / "manifest.csv").read_bytes() == (one / "synthetic" / "manifest.csv").read_bytes()
    assert _bytes(two / "synthetic") == _bytes(one / "synthetic")
    assert not list((two / "synthetic").glob(PARTIAL.format(rank="*")))
    rows = SyntheticSet(one).read_manifest()
    assert [r["model_sha256"] for r in rows[:3]] == ["s0", "s1", "s2"] and rows[0]["guidance"] == "1.5"
    assert write_synthetic(one, items, _fake_sample, prov, batch_size=4, progress=False) == []  # all done
    prov2 = dict(prov, steps=4)
    assert len(write_synthetic(one, items, _fake_sample, prov2, batch_size=4, progress=False)) == 15
    assert {r["steps"] for r in SyntheticSet(one).read_manifest()} == {"4"}


def test_testing_package_is_not_imported_by_runtime_code():
    import ast

    src = Path(__file__).resolve().parents[1] / "src" / "synthmed"
    bad = []
    for path in src.rglob("*.py"):
        if "testing" in path.relative_to(src).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.name}: {n}" for n in names if n.startswith("synthmed.testing")]
    assert not bad, bad
