"""The from-scratch class-conditional DDPM: training, exact resume, save/load, per-image seeds, conditioning."""

from __future__ import annotations

import math
import typing

import numpy as np
import pytest
import torch

from synthmed.data.dataset import ImageSet
from synthmed.errors import ConfigError, TrainingDivergedError, UserError
from synthmed.generators.config import DDPMConfig
from synthmed.generators.edm.config import UNetPreset
from synthmed.generators.base import SampleOptions
from synthmed.generators.checkpoints import SimulatedInterrupt, list_checkpoints
from synthmed.generators.ddpm.generator import DDPMGenerator
from synthmed.generators.ddpm.model import (
    PRESETS, SAMPLERS, ImagePolicy, build_unet, count_params, downsampling, make_sampler, resolve_arch,
)
from synthmed.generators.ddpm.train import compute_loss, train_ddpm

CLASSES = ["bright_disc", "dark_square"]


def two_class_set(n_per_class: int = 16, size: int = 12, channels: int = 1, seed: int = 0) -> ImageSet:
    """Bright discs on grey vs dark squares on grey: very different mean brightness per class."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, labels = [], []
    for i in range(2 * n_per_class):
        c = i % 2
        img = np.full((size, size), 128.0)
        cy, cx = rng.uniform(size * 0.35, size * 0.65, 2)
        r = rng.uniform(size * 0.3, size * 0.45)
        if c == 0:
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 235
            img = np.maximum(img, 200)
        else:
            img[(abs(yy - cy) < r) & (abs(xx - cx) < r)] = 15
            img = np.minimum(img, 50)
        img += rng.normal(0, 4, img.shape)
        images.append(np.repeat(np.clip(img, 0, 255).astype(np.uint8)[:, :, None], channels, axis=2))
        labels.append(c)
    return ImageSet(np.stack(images), np.array(labels), [f"train/{i}" for i in range(len(labels))])


def tiny_cfg(**kw) -> DDPMConfig:
    base = dict(preset="custom", block_out_channels=[8, 16], layers_per_block=1, steps=6, batch_size=8, lr=1e-3,
                warmup_steps=2, checkpoint_every=2, keep_checkpoints=2, num_train_timesteps=100,
                mixed_precision="no")
    base.update(kw)
    return DDPMConfig(**base)


def state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def trained_and_resumed_equal(cfg: DDPMConfig, data: ImageSet, tmp_path) -> DDPMGenerator:
    """Train ``cfg`` once straight and once interrupted after step 2 then resumed; assert equal weights and return
    the generator."""
    full = train_ddpm(cfg, data, CLASSES, tmp_path / "a", seed=0, device="cpu", progress=False)
    with pytest.raises(SimulatedInterrupt):
        train_ddpm(cfg, data, CLASSES, tmp_path / "b", seed=0, device="cpu", stop_after=2, progress=False)
    resumed = train_ddpm(cfg, data, CLASSES, tmp_path / "b", seed=0, device="cpu", progress=False)
    assert resumed.resumed_from == 2 and state_equal(full.generator.unet, resumed.generator.unet)
    return full.generator


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained long enough to tell the two classes apart (shared by several tests)."""
    data = two_class_set(n_per_class=16, size=8)
    cfg = tiny_cfg(steps=120, batch_size=16, lr=5e-3, warmup_steps=10, checkpoint_every=1000, snr_gamma=None,
                   ema_power=0.6)
    res = train_ddpm(cfg, data, CLASSES, tmp_path_factory.mktemp("w"), seed=0, device="cpu", progress=False)
    return res


def test_presets_and_param_counts():
    counts = {}
    for name in PRESETS:
        arch = resolve_arch(DDPMConfig(preset=name))
        with torch.device("meta"):  # count without allocating
            counts[name] = count_params(build_unet(arch, 3, 8, 32))
    assert counts["XS"] < 300_000
    assert counts["XS"] < counts["XS-deep"] < 1.5e6  # two more coarse levels, down to 4x4 at 32 px
    assert len(resolve_arch(DDPMConfig(preset="XS-deep"))["block_out_channels"]) == 4
    assert set(typing.get_args(UNetPreset)) == set(PRESETS) | {"custom"}  # the config accepts exactly the presets
    assert 1.2e6 < counts["S"] < 2.0e6
    assert 5.5e6 < counts["M"] < 7.5e6
    assert 20e6 < counts["L"] < 30e6
    with pytest.raises(ConfigError, match="block_out_channels"):
        resolve_arch(DDPMConfig(preset="custom"))
    with pytest.raises(ConfigError, match="attention_levels"):
        resolve_arch(DDPMConfig(preset="XS", attention_levels=[5]))


def test_image_policy_pads_28_to_32_and_crops_back():
    cfg = DDPMConfig(preset="XS")
    p = ImagePolicy.for_data(28, 28, 3, cfg, 2)
    assert p.resolution == 32 and p.pad == (2, 2, 2, 2)
    imgs = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 3), dtype=np.uint8)
    padded = p.pad_uint8(imgs)
    assert padded.shape == (2, 3, 32, 32)
    back = p.to_uint8(padded.float() / 127.5 - 1)
    np.testing.assert_array_equal(back, imgs)
    with pytest.raises(ConfigError, match="resolution"):
        ImagePolicy.for_data(28, 28, 3, DDPMConfig(preset="XS", resolution=30), 2)


def test_patch_unet_folds_pixels_and_round_trips(tmp_path):
    """patch_size 2: the UNet runs at half the resolution on 4x the channels; the policy pads to a multiple of the
    total downsampling; a pixel's output depends on its patch (not an identity); training resumes exactly and the
    saved generator loads as the same network."""
    import torch.nn.functional as F

    cfg = tiny_cfg(block_out_channels=[8, 16], patch_size=2, steps=4)
    arch = resolve_arch(cfg)
    assert arch["patch_size"] == 2 and downsampling(arch) == 4
    assert resolve_arch(tiny_cfg())["patch_size"] == 1 and downsampling(resolve_arch(tiny_cfg())) == 2
    assert ImagePolicy.for_data(12, 12, 1, cfg, downsampling(arch)).resolution == 16
    assert ImagePolicy.for_data(28, 28, 3, cfg, 2 * 2 ** 3).resolution == 32  # e.g. patch 2 over 4 levels
    torch.manual_seed(0)
    unet = build_unet(arch, 1, 2, 16)
    assert type(unet).__name__ == "PatchUNet2DModel"
    assert unet.config.sample_size == 8 and unet.config.in_channels == 4 == unet.config.out_channels
    x = torch.randn(2, 1, 16, 16)
    t, y = torch.tensor([5, 50]), torch.tensor([0, 1])
    out = unet(x, t, class_labels=y).sample
    inner = super(type(unet), unet).forward(F.pixel_unshuffle(x, 2), t, class_labels=y).sample
    assert out.shape == x.shape
    torch.testing.assert_close(out, F.pixel_shuffle(inner, 2))
    with pytest.raises(ValueError, match="patch size"):
        unet(torch.randn(1, 1, 15, 16), t[:1], class_labels=y[:1])

    data = two_class_set(n_per_class=8, size=12)
    gen = trained_and_resumed_equal(cfg, data, tmp_path)
    assert gen.meta["arch"]["patch_size"] == 2 and gen.policy.resolution == 16
    gen.save(tmp_path / "g")
    loaded = DDPMGenerator.load(tmp_path / "g")
    assert type(loaded.unet).__name__ == "PatchUNet2DModel" and loaded.unet.patch_size == 2
    o = SampleOptions("ddim", 4, 1.5)
    np.testing.assert_array_equal(gen.sample([0, 1], [3, 4], o), loaded.sample([0, 1], [3, 4], o))


def test_self_condition_feeds_the_x0_estimate_back_and_round_trips(tmp_path):
    """self_condition: the UNet takes 2C input channels; training resumes exactly; the extra channels change the
    samples (the loop feeds a real estimate, not zeros); the saved generator loads and samples the same; an unset
    or False flag leaves the checkpoint fingerprint as it was before the option existed."""
    from synthmed.generators.ddpm.train import fingerprint

    data = two_class_set(n_per_class=8, size=12)
    cfg = tiny_cfg(self_condition=True, steps=6, prediction_type="v_prediction")
    arch = resolve_arch(cfg)
    assert arch["self_condition"] and "self_condition" not in resolve_arch(tiny_cfg())
    assert build_unet(arch, 3, 2, 16).config.in_channels == 6
    assert fingerprint(tiny_cfg(self_condition=False), 0, data, 1) == fingerprint(tiny_cfg(), 0, data, 1)
    assert fingerprint(cfg, 0, data, 1) != fingerprint(tiny_cfg(prediction_type="v_prediction", steps=6), 0, data, 1)
    gen = trained_and_resumed_equal(cfg, data, tmp_path)
    assert gen.self_conditioned and gen.meta["arch"]["self_condition"]  # recorded once, with the architecture
    o = SampleOptions("dpmpp", 6, 1.5)
    imgs = gen.sample([0, 1], [3, 4], o)
    import synthmed.generators.ddpm.generator as ddpm_generator

    estimate = ddpm_generator.x0_estimate
    try:  # feeding zeros instead of each step's estimate gives other images: the estimate reaches the network
        ddpm_generator.x0_estimate = lambda out, x, *a: torch.zeros_like(x)
        assert not np.array_equal(imgs, gen.sample([0, 1], [3, 4], o))
    finally:
        ddpm_generator.x0_estimate = estimate
    gen.save(tmp_path / "g")
    loaded = DDPMGenerator.load(tmp_path / "g")
    assert loaded.self_conditioned
    np.testing.assert_array_equal(imgs, loaded.sample([0, 1], [3, 4], o))


def test_loss_falls(trained):
    losses = trained.losses
    assert len(losses) == 120 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-40:]) < 0.7 * np.mean(losses[:10])


def test_labels_matter(trained):
    gen = trained.generator
    n = 12
    labels = [0] * n + [1] * n
    imgs = gen.sample(labels, list(range(100, 100 + 2 * n)), SampleOptions("dpmpp", 12, 3.0))
    assert imgs.shape == (2 * n, 8, 8, 1) and imgs.dtype == np.uint8
    bright = imgs[:n].reshape(n, -1).mean(1)
    dark = imgs[n:].reshape(n, -1).mean(1)
    # real class means are ~215 vs ~35; a model that ignores the label gives the same distribution for both
    # (difference ~0, AUC ~0.5); measured here: difference ~110, AUC ~0.93
    auc = (bright[:, None] > dark[None, :]).mean()
    assert bright.mean() - dark.mean() > 50 and auc > 0.8, (bright, dark)


def test_save_load_gives_identical_samples(trained, tmp_path):
    gen = trained.generator
    sha = gen.save(tmp_path / "g")
    assert (tmp_path / "g" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list((tmp_path / "g").rglob("*.bin")) and not list((tmp_path / "g").rglob("*.pt"))
    loaded = DDPMGenerator.load(tmp_path / "g")
    assert loaded.meta["model_sha256"] == sha and loaded.classes == CLASSES
    for sampler in SAMPLERS:  # every sampler, dpmpp included (its timestep spacing once differed after loading)
        o = SampleOptions(sampler, 5, 1.5)
        np.testing.assert_array_equal(gen.sample([0, 1], [1, 2], o), loaded.sample([0, 1], [1, 2], o))
    first = make_sampler("dpmpp", loaded.scheduler_config)
    first.set_timesteps(20)
    assert int(first.timesteps[0]) == 99  # linspace: from the last training timestep (pure noise)


@pytest.mark.parametrize("sampler", ["dpmpp", "dpmpp_sde", "ddpm"])
def test_per_image_seeds_do_not_depend_on_batch(trained, sampler):
    gen = trained.generator
    labels, seeds = [0, 1, 1, 0, 1], [11, 12, 13, 14, 15]
    kw = dict(sampler=sampler, steps=6, guidance=1.5)
    all5 = gen.sample(labels, seeds, SampleOptions(batch_size=5, **kw))
    by2 = gen.sample(labels, seeds, SampleOptions(batch_size=2, **kw))
    alone = gen.sample(labels[3:4], seeds[3:4], SampleOptions(**kw))
    # floating-point kernels may round differently per batch shape: allow one grey level
    assert np.abs(all5.astype(int) - by2.astype(int)).max() <= 1
    assert np.abs(all5[3:4].astype(int) - alone.astype(int)).max() <= 1
    other = gen.sample(labels[3:4], [99], SampleOptions(**kw))
    assert np.abs(other.astype(int) - alone.astype(int)).mean() > 2  # the seed matters


@pytest.mark.parametrize("sampler", ["dpmpp_sde", "ddpm"])
def test_stochastic_samplers_draw_only_from_the_per_image_seeds(trained, sampler):
    gen = trained.generator
    o = SampleOptions(sampler, 6, 1.5)
    torch.manual_seed(0)
    first = gen.sample([0, 1], [3, 4], o)
    torch.manual_seed(1)  # the global RNG must not reach the per-step noise
    np.testing.assert_array_equal(first, gen.sample([0, 1], [3, 4], o))
    if sampler == "dpmpp_sde":  # and it is not the deterministic DPM-Solver++
        assert np.abs(first.astype(int) - gen.sample([0, 1], [3, 4], SampleOptions("dpmpp", 6, 1.5))).max() > 8


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    data = two_class_set(n_per_class=6, size=8)
    cfg = tiny_cfg(hflip=True, rot90=True, steps=7, checkpoint_every=2)
    straight = train_ddpm(cfg, data, CLASSES, tmp_path / "a", seed=3, device="cpu", progress=False)
    with pytest.raises(SimulatedInterrupt):
        train_ddpm(cfg, data, CLASSES, tmp_path / "b", seed=3, device="cpu", stop_after=5, progress=False)
    # the crash came after step 5; the newest complete checkpoint is step 4
    assert [s for s, _ in list_checkpoints(tmp_path / "b" / "checkpoints")] == [2, 4]
    resumed = train_ddpm(cfg, data, CLASSES, tmp_path / "b", seed=3, device="cpu", progress=False)
    assert resumed.resumed_from == 4 and resumed.steps == 7
    assert state_equal(straight.generator.unet, resumed.generator.unet)
    # and a different seed gives different weights (the comparison can fail)
    other = train_ddpm(cfg, data, CLASSES, tmp_path / "c", seed=4, device="cpu", progress=False)
    assert not state_equal(straight.generator.unet, other.generator.unet)
    # keep_checkpoints=2 prunes older ones
    assert [s for s, _ in list_checkpoints(tmp_path / "a" / "checkpoints")] == [6, 7]


def test_resume_refuses_other_config(tmp_path):
    data = two_class_set(n_per_class=4, size=8)
    train_ddpm(tiny_cfg(steps=2), data, CLASSES, tmp_path, seed=0, device="cpu", progress=False)
    with pytest.raises(UserError, match="another generator config"):
        train_ddpm(tiny_cfg(steps=4, lr=5e-4), data, CLASSES, tmp_path, seed=0, device="cpu", progress=False)


def test_nan_loss_stops_with_training_diverged(tmp_path):
    data = two_class_set(n_per_class=4, size=8)
    calls = {"n": 0}

    def nan_at_3(*args):
        calls["n"] += 1
        loss = compute_loss(*args)
        return loss * float("nan") if calls["n"] == 3 else loss

    with pytest.raises(TrainingDivergedError, match="step 3") as err:
        train_ddpm(tiny_cfg(steps=6), data, CLASSES, tmp_path, seed=0, device="cpu", progress=False, loss_fn=nan_at_3)
    assert err.value.exit_code == 2
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [2]


def test_v_prediction_linear_and_min_snr_train(tmp_path):
    data = two_class_set(n_per_class=4, size=8, channels=3)
    res = train_ddpm(tiny_cfg(steps=3, prediction_type="v_prediction", beta_schedule="linear", snr_gamma=5.0),
                     data, CLASSES, tmp_path, seed=0, device="cpu", progress=False)
    assert all(math.isfinite(v) for v in res.losses)
    out = res.generator.sample([0, 1], [0, 1], SampleOptions("ddim", 3, 1.0))
    assert out.shape == (2, 8, 8, 3)


def test_class_power_draws():
    """gamma = 1 is today's uniform torch.randint draw, bit for bit; gamma = 0 balances the classes."""
    from synthmed.generators.sampling import IndexSampler, class_shares

    labels = np.array([0] * 90 + [1] * 10)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(IndexSampler(labels, 2, 1.0)(64, g1), torch.randint(100, (64,), generator=g2))
    assert torch.equal(g1.get_state(), g2.get_state())
    draws = IndexSampler(labels, 2, 0.0)(4000, torch.Generator().manual_seed(0))
    tail = float((torch.as_tensor(labels)[draws] == 1).float().mean())
    assert 0.45 < tail < 0.55 and class_shares(labels, 2, 0.0) == pytest.approx([0.5, 0.5])


def test_class_power_changes_training_only_when_not_one(tmp_path):
    data = two_class_set(n_per_class=5, size=8)
    data = data.subset(list(np.flatnonzero(data.labels == 0)) + [int(np.flatnonzero(data.labels == 1)[0])])  # 5 : 1
    runs = {}
    for gamma in (1.0, 0.0):
        runs[gamma] = train_ddpm(tiny_cfg(steps=2, class_power=gamma), data, CLASSES, tmp_path / str(gamma), seed=0,
                                 device="cpu", progress=False)
    default = train_ddpm(tiny_cfg(steps=2), data, CLASSES, tmp_path / "default", seed=0, device="cpu", progress=False)
    assert state_equal(default.generator.unet, runs[1.0].generator.unet)
    assert not state_equal(runs[0.0].generator.unet, runs[1.0].generator.unet)
    assert runs[0.0].generator.meta["training"]["class_power"] == 0.0


def test_sdedit_starts_from_the_source(trained):
    """Low strength keeps the source's brightness even under the other class's label; strength 1 ignores it."""
    gen = trained.generator
    data = two_class_set(n_per_class=6, size=8, seed=1)
    bright = data.images[data.labels == 0][:6]
    seeds = list(range(6))
    low = gen.sample([1] * 6, seeds, SampleOptions("ddim", 10, 1.0, sources=bright, strength=0.2))
    free = gen.sample([1] * 6, seeds, SampleOptions("ddim", 10, 1.0))
    assert np.abs(low.astype(int) - bright.astype(int)).mean() < np.abs(free.astype(int) - bright.astype(int)).mean() / 2
    full = gen.sample([1] * 6, seeds, SampleOptions("ddim", 10, 1.0, sources=bright, strength=1.0))
    np.testing.assert_array_equal(full, free)
    again = gen.sample([1] * 6, seeds, SampleOptions("ddim", 10, 1.0, sources=bright, strength=0.2, batch_size=2))
    assert np.abs(again.astype(int) - low.astype(int)).max() <= 1  # per-image, not per-batch


def test_cbdm_regulariser_terms_and_gradients():
    """tau * t/T weighting, stop-gradients on the right sides, dropped labels and t = 0 contribute nothing."""
    from synthmed.generators.ddpm.train import cbdm_regulariser

    torch.manual_seed(0)
    pred = torch.randn(4, 1, 2, 2, requires_grad=True)
    bal = torch.randn(4, 1, 2, 2, requires_grad=True)
    t = torch.tensor([50, 100, 0, 100])
    y = torch.tensor([0, 1, 1, 2])  # 2 = the null (dropped) label
    out = cbdm_regulariser(pred, bal, t, 100, y, null_class=2, tau=2.0, gamma=0.25)
    d = ((pred - bal) ** 2).mean(dim=(1, 2, 3)).detach()
    w = torch.tensor([1.0, 2.0, 0.0, 0.0])  # tau * t / T, masked
    assert out.item() == pytest.approx(float((w * d * 1.25).mean()), rel=1e-6)
    out.backward()
    diff = (pred - bal).detach()
    n = 4 * 4  # batch mean x pixel mean
    expect_pred = 2 * diff * w[:, None, None, None] / n
    assert torch.allclose(pred.grad, expect_pred, atol=1e-6)
    assert torch.allclose(bal.grad, -0.25 * expect_pred, atol=1e-6)  # the commitment term, weighted gamma


def test_cbdm_off_keeps_old_checkpoints_and_on_changes_training(tmp_path):
    from synthmed.generators.ddpm.train import fingerprint

    data = two_class_set(n_per_class=4, size=8)
    assert fingerprint(tiny_cfg(), 0, data, 1) == fingerprint(tiny_cfg(cbdm_gamma=0.5), 0, data, 1)
    assert fingerprint(tiny_cfg(), 0, data, 1) != fingerprint(tiny_cfg(cbdm_tau=1.0), 0, data, 1)
    off = train_ddpm(tiny_cfg(steps=3), data, CLASSES, tmp_path / "off", seed=0, device="cpu", progress=False)
    on = train_ddpm(tiny_cfg(steps=3, cbdm_tau=1.0), data, CLASSES, tmp_path / "on", seed=0, device="cpu",
                    progress=False)
    assert all(math.isfinite(v) for v in on.losses)
    assert not state_equal(off.generator.unet, on.generator.unet)
    assert on.generator.meta["training"]["cbdm_tau"] == 1.0 and "cbdm_tau" not in off.generator.meta["training"]
    # exact resume with CBDM on (its extra draw comes from the checkpointed generator)
    with pytest.raises(SimulatedInterrupt):
        train_ddpm(tiny_cfg(steps=3, cbdm_tau=1.0), data, CLASSES, tmp_path / "on2", seed=0, device="cpu",
                   stop_after=2, progress=False)
    resumed = train_ddpm(tiny_cfg(steps=3, cbdm_tau=1.0), data, CLASSES, tmp_path / "on2", seed=0, device="cpu",
                         progress=False)
    assert resumed.resumed_from == 2 and state_equal(on.generator.unet, resumed.generator.unet)


def test_muon_optimizer_trains_resumes_and_keeps_old_fingerprints(tmp_path):
    """optimizer: muon changes training, resumes exactly; the default (adamw) leaves the fingerprint of checkpoints
    written before the option existed unchanged."""
    from synthmed.generators.ddpm.train import fingerprint

    data = two_class_set(n_per_class=4, size=8)
    assert fingerprint(tiny_cfg(), 0, data, 1) == fingerprint(tiny_cfg(optimizer="adamw"), 0, data, 1)
    assert fingerprint(tiny_cfg(), 0, data, 1) != fingerprint(tiny_cfg(optimizer="muon"), 0, data, 1)
    adamw = train_ddpm(tiny_cfg(steps=4), data, CLASSES, tmp_path / "adamw", seed=0, device="cpu", progress=False)
    gen = trained_and_resumed_equal(tiny_cfg(steps=4, optimizer="muon"), data, tmp_path / "muon")
    assert not state_equal(adamw.generator.unet, gen.unet)
