"""The published recipes' classifier settings: the OCT study's CNN (``oct_cnn``), Xavier initialisation
(``classifier.init``), MixUp/CutMix per-batch probability (``classifier.mix_prob``) and the cosine floor
(``classifier.min_lr``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from synthmed.classifiers.config import ClassifierConfig
from synthmed.classifiers.models import build_model
from synthmed.classifiers.schedule import lr_factor, lr_schedule, min_lr_floor
from synthmed.classifiers.transforms import mix_batch
from synthmed.errors import ConfigError


def oct_params(size: int, in_ch: int, n_classes: int) -> int:
    """conv 3x3 in->16, 16->32, 32->64 (+ biases), FC 64 (size/8)^2 -> 128, FC 128 -> classes."""
    convs = sum(9 * a * b + b for a, b in ((in_ch, 16), (16, 32), (32, 64)))
    return convs + (64 * (size // 8) ** 2 * 128 + 128) + (128 * n_classes + n_classes)


@pytest.mark.parametrize("channels", [1, 3])
def test_oct_cnn_layout_shapes_and_parameter_count(channels: int) -> None:
    net, info = build_model(ClassifierConfig(model="oct_cnn"), in_channels=channels, size=32, n_classes=2)
    assert info["model"] == "oct_cnn" and info["init"] == "default"
    n = sum(p.numel() for p in net.parameters())
    assert n == oct_params(32, 3, 2) == 155_042  # grayscale is repeated: the study's first conv takes 3 channels
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 16, (3, 3), (1, 1)), (16, 32, (3, 3), (1, 1)), (32, 64, (3, 3), (1, 1))]
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 3
    assert not any(isinstance(m, (nn.Dropout, nn.BatchNorm2d)) for m in net.modules())
    x = torch.rand(4, channels, 32, 32)
    assert net.features(x).shape == (4, 128) and net(x).shape == (4, 2)
    assert (net.features(x) >= 0).all()  # FC 128 is followed by ReLU
    assert oct_params(512, 3, 2) - oct_params(32, 3, 2) == 64 * 128 * (64**2 - 4**2)  # the FC grows with the size


def test_oct_cnn_trains_one_step() -> None:
    torch.manual_seed(0)
    net, _ = build_model(ClassifierConfig(model="oct_cnn"), in_channels=1, size=16, n_classes=2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = torch.rand(8, 1, 16, 16), torch.tensor([0, 1] * 4)
    before = [p.detach().clone() for p in net.parameters()]
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    with pytest.raises(ConfigError, match="at least 8 px"):
        build_model(ClassifierConfig(model="oct_cnn"), in_channels=1, size=4, n_classes=2)


def test_xavier_init_of_a_from_scratch_resnet50() -> None:
    torch.manual_seed(0)
    net, info = build_model(ClassifierConfig(model="resnet50", init="xavier"), in_channels=3, size=32, n_classes=4)
    assert info["init"] == "xavier"
    w = net.backbone.layer1[0].conv2.weight  # 64 -> 64, 3x3: Xavier bound sqrt(6 / (2 * 576)) = 0.0722
    bound = math.sqrt(6.0 / (64 * 9 + 64 * 9))
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert torch.all(net.head.bias == 0)
    torch.manual_seed(0)
    default, _ = build_model(ClassifierConfig(model="resnet50"), in_channels=3, size=32, n_classes=4)
    assert default.backbone.layer1[0].conv2.weight.abs().max() > 1.5 * bound  # torchvision's Kaiming-normal


def test_mix_prob_mixes_about_that_share_of_batches() -> None:
    cc = ClassifierConfig(mixup=1.0, cutmix=1.0, mix_prob=0.2)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 8, 8)
    mixed = sum(mix_batch(x, [6, 0], cc, rng, gen)[1] is not None for _ in range(1000))
    assert 160 <= mixed <= 240
    off = ClassifierConfig(mixup=1.0, mix_prob=0.0)
    assert all(mix_batch(x, [6, 0], off, rng, gen)[1] is None for _ in range(20))
    # the default (1.0) draws no coin: the same stream as before the setting existed
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    out_a = mix_batch(x, [6, 0], ClassifierConfig(mixup=1.0), a, torch.Generator().manual_seed(1))
    lam_b = float(b.beta(1.0, 1.0)) if int(b.integers(1)) == 0 else None
    assert out_a[2] == lam_b


def test_cosine_decays_to_min_lr() -> None:
    assert lr_factor(0, 10, 110) == pytest.approx(0.1) and lr_factor(9, 10, 110) == pytest.approx(1.0)
    assert lr_factor(10, 10, 110) == pytest.approx(1.0)
    floor = min_lr_floor(1e-4, 1e-8)
    assert floor == pytest.approx(1e-4)
    assert lr_factor(110, 10, 110, floor) == pytest.approx(floor) and lr_factor(500, 10, 110, floor) == pytest.approx(floor)
    assert lr_factor(60, 10, 110, floor) == pytest.approx(floor + (1 - floor) * 0.5)
    assert lr_factor(110, 10, 110) == 0.0  # no floor: decays to 0, as before
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-4)
    sched = lr_schedule(opt, 0, 5, floor)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-4) and lrs[5] == pytest.approx(1e-8)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    with pytest.raises(ValidationError, match="above"):
        ClassifierConfig(lr=1e-4, min_lr=1e-3)
    with pytest.raises(ValidationError):
        ClassifierConfig(mix_prob=1.5)


def _old_factor(step: int, warmup: int, total: int) -> float:
    """train.py's schedule before ``classifier.min_lr`` existed (warm-up, then cosine to 0)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min((step - warmup) / max(total - warmup, 1), 1.0)))


@pytest.mark.parametrize("warmup,min_lr,epochs", [(0.0, 0.0003, 1), (1.0, 0.0, 2)])
def test_fit_classifier_schedule_ends_at_min_lr(monkeypatch: pytest.MonkeyPatch, warmup: float, min_lr: float,
                                                epochs: int) -> None:
    """fit_plan builds its schedule with schedule.lr_schedule and classifier.min_lr: after the last optimizer step the
    learning rate is min_lr; min_lr = 0 gives the factors of the schedule it replaced."""
    import synthmed.classifiers.train as train_mod
    from synthmed.config import load_config

    from toydata import toy_sets

    made: list[tuple[torch.optim.lr_scheduler.LambdaLR, int, int]] = []

    def recording(opt, w, total, floor=0.0):
        sched = lr_schedule(opt, w, total, floor)
        made.append((sched, w, total))
        return sched

    monkeypatch.setattr(train_mod, "lr_schedule", recording)
    lr = 0.003
    cfg = load_config(None, ["classifier.model=cnn", f"classifier.epochs={epochs}", "classifier.batch_size=16",
                             f"classifier.lr={lr}", f"classifier.warmup_epochs={warmup}",
                             f"classifier.min_lr={min_lr}", "classifier.patience=null", "device=cpu"])
    train, val, _ = toy_sets(n_classes=2, n_train=20, n_eval=6, size=16)
    train_mod.fit_classifier(cfg, train, val, 2, seed=0, progress=False)
    assert len(made) == 1
    sched, w, total = made[0]
    steps = -(-len(train) // 16)
    assert total == epochs * steps and w == int(round(warmup * steps))
    assert sched.last_epoch == total  # stepped once per optimizer step (one process)
    assert sched.optimizer.param_groups[0]["lr"] == pytest.approx(min_lr, abs=1e-12)  # the optimizer's last lr
    if min_lr == 0.0:
        assert [sched.lr_lambdas[0](s) for s in range(total + 1)] == pytest.approx(
            [_old_factor(s, w, total) for s in range(total + 1)])
