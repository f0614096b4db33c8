"""``generation.precision``: the ddpm / edm kinds sample under bf16 autocast when asked (or, with ``auto``, where bf16
is native), close to fp32, and the manifest records it so a set is never resumed in the other precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from synthmed.config import load_config, save_resolved, with_overrides
from synthmed.errors import ConfigError
from synthmed.generators.base import SampleOptions
from synthmed.generators.config import DDPMConfig
from synthmed.generators.ddpm.generator import DDPMGenerator
from synthmed.generators.ddpm.model import ImagePolicy, build_unet, downsampling, resolve_arch
from synthmed.generators.stage import finetune, generate
from synthmed.synthetic.dataset import SyntheticSet

CLASSES = ["a", "b"]


def random_generator() -> DDPMGenerator:
    """A random-weight class-conditional UNet at 16 px (no training needed to compare arithmetic)."""
    cfg = DDPMConfig(preset="custom", block_out_channels=[8, 16], layers_per_block=1, num_train_timesteps=100)
    arch = resolve_arch(cfg)
    torch.manual_seed(0)
    unet = build_unet(arch, 1, len(CLASSES), 16)
    policy = ImagePolicy.for_data(16, 16, 1, cfg, downsampling(arch))
    sched = dict(DDPMScheduler(num_train_timesteps=100, prediction_type="v_prediction").config)
    return DDPMGenerator(unet.eval(), sched, CLASSES, policy)


def test_bf16_sampling_is_close_to_fp32_deterministic_and_recorded():
    gen = random_generator()
    labels, seeds = [0, 1, 0, 1], [1, 2, 3, 4]
    fp32 = gen.sample(labels, seeds, SampleOptions("dpmpp_sde", 6, 1.5))
    bf16 = gen.sample(labels, seeds, SampleOptions("dpmpp_sde", 6, 1.5, precision="bf16"))
    again = gen.sample(labels, seeds, SampleOptions("dpmpp_sde", 6, 1.5, precision="bf16"))
    np.testing.assert_array_equal(bf16, again)
    diff = np.abs(fp32.astype(int) - bf16.astype(int))
    assert diff.max() > 0, "precision=bf16 did not change the arithmetic"
    assert diff.mean() < 4, f"bf16 sampling drifted from fp32 by {diff.mean():.1f} grey levels on average"
    assert gen.provenance(SampleOptions(precision="bf16"))["precision"] == "bf16"
    assert gen.provenance(SampleOptions())["precision"] == ""  # fp32 sets keep their old manifests valid
    with pytest.raises(ValueError, match="sampling precision 'fp16'"):
        gen.sample(labels, seeds, SampleOptions(precision="fp16"))


@pytest.mark.parametrize("native", [True, False])
def test_auto_picks_bf16_only_where_native(monkeypatch, native):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    gen = random_generator()
    want = torch.bfloat16 if native else None
    assert gen.sampling_dtype(SampleOptions(precision="auto")) == want
    assert gen.provenance(SampleOptions(precision="auto"))["precision"] == ("bf16" if native else "")


def test_generate_records_precision_and_regenerates_when_it_changes(tmp_path):
    cfg = load_config(None, [
        "data.source=phantom:blood", "data.phantom.n_classes=2", "data.phantom.n_per_class=8",
        "data.phantom.size=28", "data.size=28", "device=cpu", "generator.kind=ddpm", "generator.ddpm.preset=custom",
        "generator.ddpm.block_out_channels=[8, 16]", "generator.ddpm.layers_per_block=1", "generator.ddpm.steps=2",
        "generator.ddpm.batch_size=4", "generator.ddpm.num_train_timesteps=50", "generator.ddpm.mixed_precision=no",
        "generation.n_per_class=2", "generation.sampler=dpmpp", "generation.steps=3", "generation.precision=bf16"])
    save_resolved(cfg, tmp_path)
    finetune(cfg, tmp_path)
    generate(cfg, tmp_path)
    synth = SyntheticSet(tmp_path)
    rows = synth.read_manifest()
    assert len(rows) == 4 and {r["precision"] for r in rows} == {"bf16"}
    bf16 = {r["id"]: synth.abspath(r["path"]).read_bytes() for r in rows}
    generate(with_overrides(cfg, {"generation.precision": "fp32"}), tmp_path)
    rows = synth.read_manifest()
    assert {r["precision"] for r in rows} == {""}
    assert any(synth.abspath(r["path"]).read_bytes() != bf16[r["id"]] for r in rows)  # remade in fp32
    with pytest.raises(ConfigError, match="precision"):
        with_overrides(cfg, {"generation.precision": "fp16"})


def test_bf16_is_refused_for_a_kind_that_sets_its_own_precision(tmp_path):
    """Stable Diffusion picks its own dtype; an explicit bf16 there would be silently ignored, so it is an error."""
    cfg = load_config(None, ["data.source=phantom:blood", "data.phantom.n_classes=2", "data.phantom.n_per_class=4",
                             "device=cpu", "generator.kind=stable_diffusion", "generation.precision=bf16"])
    (tmp_path / "generator").mkdir()
    with pytest.raises(ConfigError, match="generation.precision=bf16: generator.kind=stable_diffusion"):
        generate(cfg, tmp_path)


def test_fp32_keeps_the_generate_key_of_runs_made_before_the_setting():
    """Adding generation.precision must not invalidate cached synthetic sets: at fp32 it is left out of the key."""
    from synthmed.pipeline import keys

    cfg = load_config(None, ["data.source=phantom:blood"])
    dumped = keys._dump(cfg.generation)
    old = keys.digest({"stage": "generate", "in": keys.upstream_keys(cfg).finetune,
                       "generation": {k: v for k, v in dumped.items() if k != "precision"}})
    assert keys.upstream_keys(cfg).generate == old
    bf16 = with_overrides(cfg, {"generation.precision": "bf16"})
    assert keys.upstream_keys(bf16).generate != old
    assert keys.upstream_keys(bf16).finetune == keys.upstream_keys(cfg).finetune


def test_edm_kind_samples_in_bf16_too():
    from synthmed.generators.edm import precond
    from synthmed.generators.edm.config import EDMConfig
    from synthmed.generators.edm.generator import EDMGenerator

    cfg = EDMConfig(preset="custom", block_out_channels=[8, 16], layers_per_block=1)
    arch = resolve_arch(cfg)
    torch.manual_seed(0)
    gen = EDMGenerator(build_unet(arch, 1, len(CLASSES), 16).eval(),
                       precond.scheduler_config(cfg.sigma_data, cfg.sigma_min, cfg.sigma_max, cfg.rho), CLASSES,
                       ImagePolicy.for_data(16, 16, 1, cfg, downsampling(arch)))
    fp32 = gen.sample([0, 1], [1, 2], SampleOptions("euler", 5, 1.5))
    bf16 = gen.sample([0, 1], [1, 2], SampleOptions("euler", 5, 1.5, precision="bf16"))
    diff = np.abs(fp32.astype(int) - bf16.astype(int))
    assert 0 < diff.max() and diff.mean() < 4
    assert gen.provenance(SampleOptions(precision="bf16"))["precision"] == "bf16"
