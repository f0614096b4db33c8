"""generator.ddpm.input_perturbation (Ning et al., ICML 2023): the noisy input gets noise + gamma * xi, the target
keeps the plain noise; off, every draw and every old checkpoint fingerprint stay as they were."""

from __future__ import annotations

import pytest
import torch

from synthmed.errors import UserError
from synthmed.generators.ddpm.model import ImagePolicy, downsampling, resolve_arch, to_model_range
from synthmed.generators.ddpm.train import IndexSampler, _batch, fingerprint, train_ddpm

from test_ddpm import CLASSES, state_equal, tiny_cfg, trained_and_resumed_equal, two_class_set


def draws(cfg, data, seed: int = 3):
    policy = ImagePolicy.for_data(*data.size, data.channels, cfg, downsampling(resolve_arch(cfg)))
    g = torch.Generator("cpu").manual_seed(seed)
    return _batch(policy.pad_uint8(data.images), torch.as_tensor(data.labels), g, cfg, len(CLASSES), 100,
                  IndexSampler(data.labels, len(CLASSES), cfg.class_power))


def test_off_keeps_every_draw_and_the_fingerprint():
    data = two_class_set(n_per_class=4, size=8)
    off, on = draws(tiny_cfg(), data), draws(tiny_cfg(input_perturbation=0.1), data)
    assert off[-1] is None and on[-1] is not None and on[-1].shape == on[0].shape
    for a, b in zip(off[:4], on[:4]):  # images, labels, noise, timesteps: drawn before the perturbation
        assert torch.equal(a, b)
    assert not torch.equal(on[-1], on[2])  # an independent draw, not the noise again
    assert fingerprint(tiny_cfg(), 0, data, 1) == fingerprint(tiny_cfg(input_perturbation=None), 0, data, 1)
    assert fingerprint(tiny_cfg(), 0, data, 1) != fingerprint(tiny_cfg(input_perturbation=0.1), 0, data, 1)


def test_perturbs_the_input_not_the_target(tmp_path, monkeypatch):
    """The first step's UNet input equals add_noise(x, noise + gamma * xi, t); the loss target is built from the
    plain noise (v = sqrt(ab) noise - sqrt(1 - ab) x)."""
    from synthmed.generators.ddpm.train import compute_loss

    data = two_class_set(n_per_class=4, size=8)
    cfg = tiny_cfg(steps=1, input_perturbation=0.5, prediction_type="v_prediction", hflip=False)
    seen = {}

    def spy(pred, target, t, sched, gamma, ptype):
        seen["target"], seen["t"] = target.detach().clone(), t.clone()
        return compute_loss(pred, target, t, sched, gamma, ptype)

    inputs = []
    from diffusers import UNet2DModel

    orig = UNet2DModel.forward
    monkeypatch.setattr(UNet2DModel, "forward", lambda self, x, *a, **k: inputs.append(x.detach().clone())
                        or orig(self, x, *a, **k))
    train_ddpm(cfg, data, CLASSES, tmp_path / "w", seed=0, device="cpu", progress=False, loss_fn=spy)
    x_u8, _, noise, t, _, _, xi = draws(cfg, data, seed=1)  # train_ddpm draws from seed * 1000 + 1
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=100, beta_schedule=cfg.beta_schedule, prediction_type=cfg.prediction_type)
    x = to_model_range(x_u8)
    assert torch.equal(seen["t"], t)
    assert torch.allclose(inputs[0], sched.add_noise(x, noise + 0.5 * xi, t), atol=1e-6)
    assert torch.allclose(seen["target"], sched.get_velocity(x, noise, t), atol=1e-6)
    assert not torch.allclose(inputs[0], sched.add_noise(x, noise, t), atol=1e-3)


def test_on_trains_resumes_exactly_and_is_recorded(tmp_path):
    data = two_class_set(n_per_class=4, size=8)
    off = train_ddpm(tiny_cfg(steps=4), data, CLASSES, tmp_path / "off", seed=0, device="cpu", progress=False)
    gen = trained_and_resumed_equal(tiny_cfg(steps=4, input_perturbation=0.1), data, tmp_path / "on")
    assert not state_equal(off.generator.unet, gen.unet)
    assert gen.meta["training"]["input_perturbation"] == 0.1
    assert "input_perturbation" not in off.generator.meta["training"]


@pytest.mark.parametrize("bad", [0, -0.1, 1.5])
def test_bad_values_are_refused(bad):
    with pytest.raises((UserError, ValueError)):
        tiny_cfg(input_perturbation=bad)
