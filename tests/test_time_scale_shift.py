"""generator.ddpm.time_scale_shift (AdaGN, Dhariwal & Nichol 2021): the time + class embedding scales and shifts
the output of each ResNet block's second norm; off, the UNet and every old checkpoint fingerprint stay as they were."""

from __future__ import annotations

import numpy as np
import torch

from synthmed.generators.base import SampleOptions
from synthmed.generators.ddpm.generator import DDPMGenerator
from synthmed.generators.ddpm.model import build_unet, resolve_arch
from synthmed.generators.ddpm.train import fingerprint

from test_ddpm import state_equal, tiny_cfg, trained_and_resumed_equal, two_class_set


def resnets(unet: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in unet.modules() if type(m).__name__ == "ResnetBlock2D"]


def test_on_modulates_every_resnet_off_adds():
    off, on = resolve_arch(tiny_cfg()), resolve_arch(tiny_cfg(time_scale_shift=True))
    assert "time_scale_shift" not in off and on["time_scale_shift"] is True
    assert resolve_arch(tiny_cfg(time_scale_shift=False)) == off
    torch.manual_seed(0)
    plain = build_unet(off, 1, 2, 8)
    torch.manual_seed(0)
    ada = build_unet(on, 1, 2, 8)
    assert resnets(plain) and len(resnets(plain)) == len(resnets(ada))
    for a, b in zip(resnets(plain), resnets(ada)):  # one (scale, shift) pair per channel instead of one shift
        assert b.time_emb_proj.out_features == 2 * a.time_emb_proj.out_features == 2 * a.conv1.out_channels
        assert a.time_embedding_norm == "default" and b.time_embedding_norm == "scale_shift"
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([5, 50]), torch.tensor([0, 1])
    assert not torch.allclose(plain(x, t, class_labels=y).sample, ada(x, t, class_labels=y).sample)


def test_off_keeps_the_fingerprint():
    data = two_class_set(n_per_class=4, size=8)
    assert fingerprint(tiny_cfg(), 0, data, 1) == fingerprint(tiny_cfg(time_scale_shift=None), 0, data, 1)
    assert fingerprint(tiny_cfg(), 0, data, 1) == fingerprint(tiny_cfg(time_scale_shift=False), 0, data, 1)
    assert fingerprint(tiny_cfg(), 0, data, 1) != fingerprint(tiny_cfg(time_scale_shift=True), 0, data, 1)


def test_on_trains_resumes_exactly_and_round_trips(tmp_path):
    data = two_class_set(n_per_class=8, size=12)
    gen = trained_and_resumed_equal(tiny_cfg(time_scale_shift=True), data, tmp_path)
    assert gen.meta["arch"]["time_scale_shift"] is True
    gen.save(tmp_path / "g")
    loaded = DDPMGenerator.load(tmp_path / "g")  # the UNet's config.json carries resnet_time_scale_shift
    assert loaded.unet.config.resnet_time_scale_shift == "scale_shift" and state_equal(gen.unet, loaded.unet)
    o = SampleOptions("ddim", 4, 1.5)
    np.testing.assert_array_equal(gen.sample([0, 1], [3, 4], o), loaded.sample([0, 1], [3, 4], o))
