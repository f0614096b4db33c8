"""generator.ddpm.timestep_importance: noise levels drawn with p(t) = (1 - a) / T + a w(t) / sum w (w the min-SNR
loss weight), each row's loss multiplied by (1 / T) / p(t) - the uniform objective in expectation, with
lower-variance gradients. Off, every draw and every old checkpoint fingerprint stay as they were."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from synthmed.errors import UserError
from synthmed.generators.ddpm.model import ImagePolicy, downsampling, resolve_arch
from synthmed.generators.ddpm.train import (IndexSampler, _batch, compute_loss, fingerprint, snr_weights,
                                            timestep_probs, train_ddpm)

from test_ddpm import CLASSES, state_equal, tiny_cfg, trained_and_resumed_equal, two_class_set

T = 100


def sched(cfg) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=T, beta_schedule=cfg.beta_schedule, prediction_type=cfg.prediction_type)


def draws(cfg, data, t_probs=None, seed: int = 3):
    policy = ImagePolicy.for_data(*data.size, data.channels, cfg, downsampling(resolve_arch(cfg)))
    g = torch.Generator("cpu").manual_seed(seed)
    return _batch(policy.pad_uint8(data.images), torch.as_tensor(data.labels), g, cfg, len(CLASSES), T,
                  IndexSampler(data.labels, len(CLASSES), cfg.class_power), t_probs)


def test_off_keeps_every_draw_and_the_fingerprint():
    data = two_class_set(n_per_class=4, size=8)
    assert timestep_probs(sched(tiny_cfg()), tiny_cfg()) is None
    for a, b in zip(draws(tiny_cfg(), data), draws(tiny_cfg(timestep_importance=None), data)):
        assert (a is None and b is None) or torch.equal(a, b)
    assert fingerprint(tiny_cfg(), 0, data, 1) == fingerprint(tiny_cfg(timestep_importance=None), 0, data, 1)
    assert fingerprint(tiny_cfg(), 0, data, 1) != fingerprint(tiny_cfg(timestep_importance=0.5), 0, data, 1)


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("a", [0.25, 1.0])
def test_probabilities_follow_the_weight_and_keep_the_objective(ptype, a):
    cfg = tiny_cfg(timestep_importance=a, prediction_type=ptype)
    p = timestep_probs(sched(cfg), cfg).double()
    w = snr_weights(sched(cfg), torch.arange(T), 5.0, ptype).double()
    assert p.shape == (T,) and torch.isclose(p.sum(), torch.tensor(1.0, dtype=p.dtype), atol=1e-6)
    assert torch.allclose(p, (1 - a) / T + a * w / w.sum(), atol=1e-6)
    assert p[w.argmax()] > 1 / T > p[w.argmin()]  # the loss weight is not flat: the draws follow it
    # E_p[row weight * w(t)] = the uniform mean of w(t): the same objective in expectation
    assert torch.isclose((p * (1 / (T * p)) * w).sum(), w.mean(), rtol=1e-5)


def test_draws_come_from_the_given_probabilities():
    data = two_class_set(n_per_class=4, size=8)
    cfg = tiny_cfg(timestep_importance=1.0)
    one = torch.zeros(T)
    one[7] = 1.0
    t = draws(cfg, data, one)[3]
    assert t.shape == (cfg.batch_size,) and bool((t == 7).all())
    many = torch.cat([draws(cfg, data, timestep_probs(sched(cfg), cfg), seed=s)[3] for s in range(300)])
    w = snr_weights(sched(cfg), torch.arange(T), 5.0, cfg.prediction_type)
    top = w >= w.median()
    assert top[many].float().mean() > 0.7  # uniform draws would put about half of them there


def test_the_loss_gets_the_row_weights(tmp_path):
    """The first step's loss_fn receives sample_weight = (1 / T) / p(t) for exactly the drawn timesteps, and the
    weighted loss equals compute_loss with those weights."""
    data = two_class_set(n_per_class=4, size=8)
    cfg = tiny_cfg(steps=1, timestep_importance=0.5, prediction_type="v_prediction")
    seen = {}

    def spy(pred, target, t, sch, gamma, ptype, sample_weight=None):
        seen.update(t=t.clone(), w=None if sample_weight is None else sample_weight.clone())
        return compute_loss(pred, target, t, sch, gamma, ptype, sample_weight=sample_weight)

    train_ddpm(cfg, data, CLASSES, tmp_path / "w", seed=0, device="cpu", progress=False, loss_fn=spy)
    p = timestep_probs(sched(cfg), cfg)
    assert torch.equal(seen["t"], draws(cfg, data, p, seed=1)[3])  # train_ddpm draws from seed * 1000 + 1
    assert torch.allclose(seen["w"], 1 / (T * p[seen["t"]]))
    pred, target = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t4 = torch.tensor([1, 20, 50, 90])
    plain = compute_loss(pred, target, t4, sched(cfg), 5.0, "v_prediction")
    doubled = compute_loss(pred, target, t4, sched(cfg), 5.0, "v_prediction", sample_weight=torch.full((4,), 2.0))
    assert torch.isclose(doubled, 2 * plain)


def test_on_trains_resumes_exactly_and_is_recorded(tmp_path):
    data = two_class_set(n_per_class=4, size=8)
    off = train_ddpm(tiny_cfg(steps=4), data, CLASSES, tmp_path / "off", seed=0, device="cpu", progress=False)
    gen = trained_and_resumed_equal(tiny_cfg(steps=4, timestep_importance=0.75), data, tmp_path / "on")
    assert not state_equal(off.generator.unet, gen.unet)
    assert gen.meta["training"]["timestep_importance"] == 0.75
    assert "timestep_importance" not in off.generator.meta["training"]


@pytest.mark.parametrize("bad", [0, -0.1, 1.5])
def test_bad_values_are_refused(bad):
    with pytest.raises((UserError, ValueError)):
        tiny_cfg(timestep_importance=bad)


def test_needs_the_min_snr_weights():
    with pytest.raises(ValueError, match="snr_gamma"):
        tiny_cfg(timestep_importance=0.5, snr_gamma=None)
