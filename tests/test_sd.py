"""Stable Diffusion fine-tuning and generation on a tiny random SD and real PBC images at 64 px (CPU, offline)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_sd_fixtures import CLASSES, make_cfg, pbc_subset, sd_overrides, tiny_sd  # noqa: F401

from synthmed.errors import ConfigError, UserError
from synthmed.generators.stage import finetune, generate


def finetune_sd(cfg, run, data):
    return finetune(cfg, run, data=data, progress=False)


def generate_sd(cfg, run, data):
    return generate(cfg, run, data=data, progress=False)


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


@pytest.fixture(scope="module")
def trained(tiny_sd, pbc_subset, tmp_path_factory):
    """A cytodiff (per-class LoRA) run: fine-tuned and sampled once for the module."""
    from synthmed.data.load import load_data

    run = tmp_path_factory.mktemp("sdrun") / "run"
    cfg = make_cfg(tiny_sd, pbc_subset)
    data = load_data(cfg.data, run, echo_warnings=False)
    finetune_sd(cfg, run, data)
    generate_sd(cfg, run, data)
    return cfg, run, data


def test_tiny_sd_tokenizer(tiny_sd):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_sd / "tokenizer")
    assert tok.model_max_length == 77
    ids = tok("a photo of a neutrophil").input_ids
    assert ids[:5] == [49406, 320, 1125, 539, 320] and ids[-1] == 49407  # the real CLIP ids of "a photo of a"


def test_recipes():
    from synthmed.generators.sd_config import StableDiffusionConfig
    from synthmed.generators.stable_diffusion.recipes import resolve

    st = resolve(StableDiffusionConfig(recipe="cytodiff"))
    assert (st.rank, st.alpha, st.lr, st.weight_decay, st.batch_size, st.epochs, st.resolution) == (16, 16, 1e-4, 1e-2, 8, 300, 512)
    assert st.per_class and st.lora and st.train_text_encoder and st.guidance == 2.0 and st.warmup_steps == 100
    assert st.steps_for(16) == 600 and "add_k_proj" in st.unet_targets and "out_proj" in st.text_encoder_targets
    st = resolve(StableDiffusionConfig(recipe="datadream_joint", rank=8), ["a", "b"])
    assert not st.per_class and st.rank == 8 and st.prompt("a") == "a photo of an a"
    full = resolve(StableDiffusionConfig(recipe="full_unet"))
    assert not full.lora and not full.train_text_encoder
    with pytest.raises(ConfigError, match="prompt_template"):
        resolve(StableDiffusionConfig(recipe="datadream_joint", prompt_template="a cell"), ["a", "b"])
    with pytest.raises(ConfigError, match="unknown class 'zebra'"):
        resolve(StableDiffusionConfig(prompts={"zebra": "x"}), ["a", "b"])


def test_finetune_outputs_and_loss(trained):
    from safetensors.torch import load_file

    from synthmed.io import pixel_hash

    cfg, run, data = trained
    gen = run / "generator"
    meta = json.loads((gen / "synthmed.json").read_text())
    assert meta["recipe"] == "cytodiff" and meta["classes"] == CLASSES
    for c in CLASSES:
        a = meta["adapters"][c]
        assert a["loss_end"] < a["loss_start"], (c, a)  # training lowers the (fixed-noise) denoising loss
        assert (gen / "lora" / c / "pytorch_lora_weights.safetensors").is_file()
        card = (gen / "lora" / c / "README.md").read_text()
        assert "base_model:" in card and "load_lora_weights" in card
    sds = [load_file(gen / "lora" / c / "pytorch_lora_weights.safetensors") for c in CLASSES]
    assert any(k.startswith("text_encoder.") for k in sds[0]) and any(k.startswith("unet.") for k in sds[0])
    key = next(k for k in sds[0] if k.startswith("unet.") and "up" in k.split(".")[-2])
    assert not np.allclose(sds[0][key].numpy(), sds[1][key].numpy())  # per-class adapters differ
    with open(gen / "training_images.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_id = dict(zip(data.train.ids, data.train.images))
    assert len(rows) == 2 * len(CLASSES)
    assert all(pixel_hash(by_id[r["id"]]) == r["pixel_hash"] for r in rows)


def test_plain_diffusers_reproduces_generation(trained, tiny_sd):
    """The saved LoRA loads in a plain StableDiffusionPipeline and gives our PNGs (one image at a time there, two per
    batch here: at most a few pixels differ by one level, as test_resume_and_batch_size states for batch sizes)."""
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    cfg, run, data = trained
    with open(run / "synthetic" / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * len(CLASSES)
    assert {r["adapter"] for r in rows} == set(CLASSES) and rows[0]["guidance"] == "2" and rows[0]["steps"] == "4"
    assert [r["id"] for r in rows[:3]] == ["c00_000000", "c01_000000", "c02_000000"]  # plan order
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    for row in (rows[0], rows[4]):
        pipe.load_lora_weights(run / "generator" / "lora" / row["class_name"])
        out = pipe(row["prompt"], num_inference_steps=4, guidance_scale=2.0, height=64, width=64, output_type="np",
                   generator=torch.Generator().manual_seed(int(row["seed"]))).images[0]
        pipe.unload_lora_weights()
        ours = _png(run / "synthetic" / row["path"])
        assert ours.shape == (64, 64, 3)
        theirs = (out * 255).round().astype(np.uint8).astype(int)
        assert np.abs(ours.astype(int) - theirs).max() <= 1 and (ours != theirs).mean() < 0.01


def test_resume_and_batch_size(trained, tmp_path):
    """Deleted PNGs are regenerated bit for bit (the others are kept); another batch size changes at most a few
    pixels by one level (batched float kernels), never the image."""
    from synthmed.config import with_overrides

    cfg, run, data = trained
    run2 = tmp_path / "run2"
    shutil.copytree(run / "generator", run2 / "generator")
    shutil.copytree(run / "synthetic", run2 / "synthetic")
    victims = sorted((run2 / "synthetic" / CLASSES[1]).glob("*.png"))[:1]
    keep = sorted((run2 / "synthetic" / CLASSES[0]).glob("*.png"))[0]
    mtime = keep.stat().st_mtime_ns
    for v in victims:
        v.unlink()
    generate_sd(cfg, run2, data)
    assert keep.stat().st_mtime_ns == mtime
    for v in victims:
        assert v.read_bytes() == (run / "synthetic" / CLASSES[1] / v.name).read_bytes()
    assert (run2 / "synthetic" / "manifest.csv").read_bytes() == (run / "synthetic" / "manifest.csv").read_bytes()
    assert not list((run2 / "synthetic").glob("*.partial.csv"))
    run3 = tmp_path / "run3"
    shutil.copytree(run / "generator", run3 / "generator")
    generate_sd(with_overrides(cfg, {"generation.batch_size": 1}), run3, data)
    for p in sorted((run / "synthetic").rglob("*.png")):
        a, b = _png(p).astype(int), _png(run3 / "synthetic" / p.relative_to(run / "synthetic")).astype(int)
        assert np.abs(a - b).max() <= 1 and (a != b).mean() < 0.01


def test_img2img_real_guidance(trained, tmp_path):
    from synthmed.config import with_overrides
    from synthmed.generators.base import SampleOptions
    from synthmed.generators.stable_diffusion import StableDiffusionGenerator
    from synthmed.synthetic.writer import plan_generation

    cfg, run, data = trained
    run2 = tmp_path / "run2"
    shutil.copytree(run / "generator", run2 / "generator")
    cfg2 = with_overrides(cfg, {"generation.strength": 0.6, "generation.n_per_class": 3})
    generate_sd(cfg2, run2, data)
    with open(run2 / "synthetic" / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    train_ids = set(data.train.ids)
    assert all(r["strength"] == "0.6" and r["source_image"] in train_ids for r in rows)
    by_class = {}
    for r in rows:
        by_class.setdefault(r["class_name"], []).append(r["source_image"])
    assert all(len(set(v)) == 2 for v in by_class.values())  # 3 images cycle over the 2 few-shot sources
    # the output depends on the source image: same item, other source -> other image
    gen = StableDiffusionGenerator.load(run / "generator", cfg2)
    item = plan_generation(cfg2, data.classes, data.train.counts(data.n_classes))[0]
    idx = [i for i, y in enumerate(data.train.labels) if y == item.class_index]
    outs = []
    for src in (idx[0], idx[1]):
        opts = SampleOptions(steps=4, sources=data.train.images[src:src + 1], strength=0.6)
        outs.append(gen.sample([item.class_index], [item.seed], opts)[0])
    assert np.abs(outs[0].astype(int) - outs[1].astype(int)).mean() > 1.0
    first = next(r for r in rows if r["id"] == item.id)
    if first["source_image"] == data.train.ids[idx[0]]:
        assert np.abs(_png(run2 / "synthetic" / first["path"]).astype(int) - outs[0].astype(int)).max() <= 1


def test_resume_training_equals_uninterrupted(tiny_sd, pbc_subset, tmp_path):
    """A joint LoRA interrupted after its step-2 checkpoint and resumed equals the uninterrupted run."""
    from safetensors.torch import load_file

    from synthmed.data.load import load_data

    cfg = make_cfg(tiny_sd, pbc_subset, **{"generator.stable_diffusion.recipe": "datadream_joint",
                                          "generator.stable_diffusion.max_steps": 4,
                                          "generator.stable_diffusion.checkpoint_every": 2,
                                          "generator.stable_diffusion.text_encoder_targets": "[]"})
    run = tmp_path / "run"
    data = load_data(cfg.data, run, echo_warnings=False)
    finetune_sd(cfg, run, data)
    lora = run / "generator" / "lora" / "joint" / "pytorch_lora_weights.safetensors"
    full = load_file(lora)
    assert not any(k.startswith("text_encoder.") for k in full)  # frozen text encoder (cached embeddings)
    work = run / "generator_work" / "joint"
    shutil.rmtree(work / "checkpoints" / "step-000004")
    (work / "done.json").unlink()
    shutil.rmtree(run / "generator")
    finetune_sd(cfg, run, data)
    assert json.loads((work / "done.json").read_text())["resumed_from"] == 2
    resumed = load_file(lora)
    assert resumed.keys() == full.keys()
    for k in full:
        np.testing.assert_allclose(resumed[k].numpy(), full[k].numpy(), rtol=1e-5, atol=1e-6)
    finetune_sd(cfg, run, data)  # finished: skipped
    assert json.loads((work / "done.json").read_text())["resumed_from"] == 2


def test_cli_errors_exit_2(tiny_sd, pbc_subset, tmp_path, capsys):
    from synthmed.cli import main

    def run_cli(verb: str, **extra: object) -> tuple[int, str]:
        args = [verb, str(cfg_path), "-o", str(tmp_path / "run")]
        for o in sd_overrides(tiny_sd, pbc_subset, **extra):
            args += ["--set", o]
        code = main(args)
        lines = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
        assert len(lines) == 1, lines
        return code, lines[0]

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("seed: 0\n")
    long = "a very " + "very " * 80 + "long prompt"
    code, err = run_cli("finetune", **{"generator.stable_diffusion.prompts": "{basophil: '" + long + "'}"})
    assert code == 2 and "basophil" in err and "77" in err
    code, err = run_cli("finetune", **{"generator.stable_diffusion.base": str(tmp_path / "no-such-sd")})
    assert code == 2 and "no-such-sd" in err
    code, err = run_cli("generate")
    assert code == 2 and "finetune" in err


def test_lora_for_another_base_exit_2(trained, tmp_path, capsys):
    from synthmed.cli import main
    from synthmed.testing.sd_tiny import build_tiny_sd

    cfg, run, data = trained
    other = build_tiny_sd(tmp_path / "other-sd", seed=1, cross_attention_dim=48)
    run2 = tmp_path / "run2"
    shutil.copytree(run / "generator", run2 / "generator")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(cfg.to_yaml())
    code = main(["generate", str(cfg_path), "-o", str(run2), "--set", f"generator.stable_diffusion.base={other}"])
    err = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
    assert code == 2 and len(err) == 1 and "another base model" in err[0], err


def test_base_loading_errors(tmp_path):
    from synthmed.generators.stable_diffusion.base import load_pipeline

    with pytest.raises(ConfigError, match="base is not set"):
        load_pipeline(None, True)
    (tmp_path / "notsd").mkdir()
    with pytest.raises(UserError, match="model_index.json"):
        load_pipeline(str(tmp_path / "notsd"), True)
    with pytest.raises(UserError, match="not in the Hugging Face cache"):
        load_pipeline("nobody-has/this-model-xyz", True)


def test_lora_stack_version_mismatch_is_one_line(monkeypatch):
    """transformers >= 5.24 with peft < 0.22 fails at the first text-encoder adapter; we refuse it up front."""
    import transformers.integrations.peft as tp

    from synthmed.generators.stable_diffusion.base import check_lora_stack

    check_lora_stack()  # the installed stack is compatible (pyproject caps transformers accordingly)
    monkeypatch.setattr(tp, "MIN_PEFT_VERSION", "999.0", raising=False)
    with pytest.raises(UserError, match=r"needs peft >= 999\.0 but peft .* is installed"):
        check_lora_stack()


def test_caching_does_not_change_training(tiny_sd, pbc_subset, tmp_path):
    """Cached VAE latents / text embeddings give the same LoRA as encoding every step."""
    from safetensors.torch import load_file

    from synthmed.data.load import load_data

    common = {"generator.stable_diffusion.recipe": "datadream_joint", "generator.stable_diffusion.max_steps": 3,
              "generator.stable_diffusion.text_encoder_targets": "[]"}
    out, losses = [], []
    for cache in (True, False):
        cfg = make_cfg(tiny_sd, pbc_subset, **common, **{"generator.stable_diffusion.cache_latents": cache,
                                                        "generator.stable_diffusion.cache_text": cache})
        run = tmp_path / f"run{cache}"
        finetune_sd(cfg, run, load_data(cfg.data, run, echo_warnings=False))
        out.append(load_file(run / "generator" / "lora" / "joint" / "pytorch_lora_weights.safetensors"))
        losses.append(json.loads((run / "generator" / "synthmed.json").read_text())["adapters"]["joint"]["loss_end"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for k in out[0]:  # Adam magnifies float noise on near-zero gradients: compare at a fraction of one lr step
        np.testing.assert_allclose(out[0][k].numpy(), out[1][k].numpy(), rtol=1e-3, atol=5e-5)


def test_full_unet_recipe(tiny_sd, pbc_subset, tmp_path):
    from synthmed.data.load import load_data

    cfg = make_cfg(tiny_sd, pbc_subset, **{"generator.stable_diffusion.recipe": "full_unet",
                                          "generator.stable_diffusion.max_steps": 2, "generation.n_per_class": 1})
    run = tmp_path / "run"
    data = load_data(cfg.data, run, echo_warnings=False)
    finetune_sd(cfg, run, data)
    assert (run / "generator" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not (run / "generator" / "lora").exists()
    generate_sd(cfg, run, data)
    with open(run / "synthetic" / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(CLASSES) and rows[0]["adapter"] == "" and rows[0]["guidance"] == "7.5"
    assert rows[0]["prompt"] == "a medical image of a basophil"


def test_default_sampler_options_and_parallel_setting():
    """``generation.sampler: default`` with ``steps: null`` resolves to 50 steps (it raised KeyError); the
    ``parallel`` setting is a validated config field that reaches the runtime."""
    from pydantic import ValidationError

    from synthmed.config import load_config
    from synthmed.generators.base import SampleOptions
    from synthmed.generators.sd_config import StableDiffusionConfig
    from synthmed.generators.stable_diffusion.generator import StableDiffusionGenerator, settings_and_runtime

    cfg = load_config(None, ["generator.kind=stable_diffusion", "generation.sampler=default", "generation.steps=null",
                             "generator.stable_diffusion.parallel=data", "device=cpu"])
    st, rt = settings_and_runtime(cfg, ["a", "b"])
    assert rt.parallel == "data"
    gen = StableDiffusionGenerator(cfg, ["a", "b"], st, rt)
    opts = SampleOptions(sampler=cfg.generation.sampler, steps=cfg.generation.steps)
    assert gen.options(opts) == ("default", 50, st.guidance)
    assert gen.options(SampleOptions(sampler="default", steps=7))[:2] == ("default", 7)
    assert [gen.options(SampleOptions(sampler=s))[1] for s in ("dpmpp", "ddim", "ddpm")] == [25, 50, 1000]
    assert gen.options(None)[:2] == ("dpmpp", 25)
    assert StableDiffusionConfig().parallel == "auto"
    with pytest.raises(ValidationError):
        StableDiffusionConfig(parallel="ranks")
