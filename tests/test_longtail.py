"""Long-tail toolbox: CIFAR ResNet-20/32, balanced softmax, DRW, post-hoc logit adjustment, cRT and the real prior."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synthmed.classifiers.config import ClassifierConfig, ImbalanceConfig
from synthmed.classifiers.imbalance import (
    choose_posthoc_tau, class_weights, drw_epoch, effective_number_weights, log_prior, logit_adjustment, prior_counts,
)
from synthmed.classifiers.losses import batch_loss
from synthmed.classifiers.models import build_model
from synthmed.classifiers.resnet_cifar import ShortcutA
from synthmed.classifiers.train import TrainedClassifier, fit_classifier
from synthmed.config import load_config
from synthmed.errors import ConfigError

from toydata import toy_set, toy_sets


def _cfg(*extra: str):
    return load_config(None, ["classifier.model=cnn", "classifier.epochs=3", "classifier.batch_size=16",
                              "classifier.lr=0.003", "device=cpu", *extra])


# ----------------------------------------------------------------------------------------------- ResNet-20/32


@pytest.mark.parametrize("name,n_blocks,params", [("resnet20", 3, 0.27e6), ("resnet32", 5, 0.46e6)])
def test_cifar_resnet_shape_depth_and_size(name: str, n_blocks: int, params: float) -> None:
    net, info = build_model(ClassifierConfig(model=name), in_channels=3, size=28, n_classes=10)
    b = net.backbone
    convs = [m for m in b.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) + 1 == 6 * n_blocks + 2  # weighted layers: 6n + 1 convs and the linear head
    assert [len(layer) for layer in (b.layer1, b.layer2, b.layer3)] == [n_blocks] * 3
    assert b.conv1.stride == (1, 1) and net.feature_dim == 64 and info["shortcut"] == "A"
    assert abs(sum(p.numel() for p in net.parameters()) - params) < 0.01e6  # He et al.: 0.27 M / 0.46 M
    x = torch.rand(2, 3, 28, 28)
    assert b.layer3(b.layer2(b.layer1(b.bn1(b.conv1(x))))).shape == (2, 64, 7, 7)
    assert net(x).shape == (2, 10) and net.features(x).shape == (2, 64)
    gray, _ = build_model(ClassifierConfig(model=name), in_channels=1, size=28, n_classes=3)
    assert gray.backbone.conv1.in_channels == 1 and gray(torch.rand(2, 1, 28, 28)).shape == (2, 3)


def test_option_a_shortcut_subsamples_and_zero_pads() -> None:
    sc = ShortcutA(16, 32, 2)
    x = torch.rand(2, 16, 8, 8)
    y = sc(x)
    assert y.shape == (2, 32, 4, 4) and not list(sc.parameters())
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2]) and y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


def test_resnet20_trains_beyond_chance_and_reloads(tmp_path) -> None:
    train, val, test = toy_sets(n_classes=3, n_train=16, n_eval=10, size=12)
    clf = fit_classifier(_cfg("classifier.model=resnet20", "classifier.epochs=4"), train, val, 3, seed=0,
                         out_dir=tmp_path, progress=False)
    pred = clf.predict(test.images)
    assert (pred == test.labels).mean() > 0.6  # chance is 1/3
    again = TrainedClassifier.load(tmp_path)
    assert np.allclose(again.logits(test.images), clf.logits(test.images), atol=1e-5)


# ----------------------------------------------------------------------------------------------- loss-side methods


def test_balanced_softmax_is_logit_adjustment_at_tau_one() -> None:
    n = np.array([90, 9, 1])
    logits, y = torch.randn(12, 3), torch.randint(0, 3, (12,))
    bs = torch.tensor(logit_adjustment(ImbalanceConfig(method="balanced_softmax", tau=3.0), n), dtype=torch.float32)
    la = torch.tensor(logit_adjustment(ImbalanceConfig(method="logit_adjustment", tau=1.0), n), dtype=torch.float32)
    assert torch.allclose(bs, torch.log(torch.tensor([90.0, 9.0, 1.0])))  # Ren et al.: logits + log n_j
    want = -torch.log_softmax(logits + torch.log(torch.tensor([90.0, 9.0, 1.0])), 1)[torch.arange(12), y].mean()
    assert torch.allclose(batch_loss(logits, y, [12, 0], [1.0, 1.0], None, bs), want, atol=1e-6)
    assert torch.allclose(batch_loss(logits, y, [12, 0], [1.0, 1.0], None, la), want, atol=1e-6)


def test_drw_defers_effective_number_weights() -> None:
    imb = ImbalanceConfig(method="drw", drw_start=0.6, beta=0.99)
    n = np.array([100, 10, 1])
    assert drw_epoch(imb, 10) == 7
    assert all(class_weights(imb, n, e, 10) is None for e in range(1, 7))
    assert all(np.allclose(class_weights(imb, n, e, 10), effective_number_weights(n, 0.99)) for e in (7, 10))
    assert drw_epoch(ImbalanceConfig(method="drw", drw_start=0.99), 3) == 3  # at least one re-weighted epoch


def test_drw_training_selects_a_reweighted_epoch() -> None:
    train, val, _ = toy_sets(n_classes=3, n_train=[24, 6, 3], n_eval=8, size=8)
    clf = fit_classifier(_cfg("classifier.epochs=4", "imbalance.method=drw", "imbalance.drw_start=0.5"),
                         train, val, 3, seed=0, progress=False)
    assert clf.info["drw_first_epoch"] == 3 and clf.info["best_epoch"] >= 3


def test_prior_counts_real_by_default() -> None:
    real, syn = [40, 20, 5], [0, 10, 35]
    assert prior_counts(ImbalanceConfig(), real, syn).tolist() == real
    assert prior_counts(ImbalanceConfig(prior="real_plus_synthetic"), real, syn).tolist() == [40, 30, 40]


@pytest.mark.parametrize("prior,want", [("real", [24, 6, 3]), ("real_plus_synthetic", [24, 24, 24])])
def test_balance_to_with_logit_adjustment_uses_the_chosen_prior(prior: str, want: list[int]) -> None:
    train, val, _ = toy_sets(n_classes=3, n_train=[24, 6, 3], n_eval=6, size=8)
    syn = toy_set(30, 3, size=8, seed=5, prefix="synthetic/x")
    cfg = _cfg("classifier.epochs=1", "mix.policy=balance_to", "mix.balance_to=24",
               "imbalance.method=logit_adjustment", f"imbalance.prior={prior}")
    clf = fit_classifier(cfg, train, val, 3, seed=0, synthetic=syn, progress=False)
    assert clf.info["prior_counts"] == want and clf.info["n_train_synthetic"] == 39


# ----------------------------------------------------------------------------------------------- post-hoc LA


def test_choose_posthoc_tau_on_a_constructed_case() -> None:
    counts = np.array([90, 10])
    lp = log_prior(counts)
    # the class-1 samples lean to the head class: tau = 0.5 fixes them, tau = 1 over-corrects the class-0 ones
    z = np.array([[2.0, 0.0], [2.0, 0.0], [0.5, 0.0], [0.5, 0.0]])
    y = np.array([0, 0, 1, 1])
    tau, grid = choose_posthoc_tau(z, y, counts, [0.0, 0.5, 1.0], 2)
    assert [(g["tau"], g["val_balanced_accuracy"]) for g in grid] == [(0.0, 0.5), (0.5, 1.0), (1.0, 0.5)]
    assert tau == 0.5 and ((z - tau * lp).argmax(1) == y).all()
    assert choose_posthoc_tau(z, y, counts, [1.0, 0.0], 2)[0] == 1.0  # a tie goes to the earlier grid value


def test_posthoc_la_offsets_predictions_and_survives_reload(tmp_path) -> None:
    train, val, test = toy_sets(n_classes=3, n_train=[30, 6, 3], n_eval=8, size=8)
    cfg = _cfg("classifier.epochs=2", "imbalance.method=posthoc_la", "imbalance.posthoc_taus=[0.0, 1.0, 2.0]")
    clf = fit_classifier(cfg, train, val, 3, seed=0, out_dir=tmp_path, progress=False)
    tau = clf.info["posthoc_tau"]
    assert tau in (0.0, 1.0, 2.0) and len(clf.info["posthoc_grid"]) == 3
    assert np.allclose(clf.info["logit_offset"], -tau * log_prior([30, 6, 3]))
    assert clf.info["val_balanced_accuracy"] == max(g["val_balanced_accuracy"] for g in clf.info["posthoc_grid"])
    raw = clf.net(torch.from_numpy(test.images).permute(0, 3, 1, 2).float() / 255).detach().numpy()
    assert np.allclose(clf.logits(test.images), raw + np.asarray(clf.info["logit_offset"]), atol=1e-5)
    again = TrainedClassifier.load(tmp_path)
    assert np.allclose(again.predict_proba(test.images), clf.predict_proba(test.images), atol=1e-6)


# ----------------------------------------------------------------------------------------------- cRT


def test_crt_retrains_only_the_head_on_balanced_real_data() -> None:
    train, val, _ = toy_sets(n_classes=3, n_train=[30, 6, 3], n_eval=8, size=8)
    base = fit_classifier(_cfg("classifier.epochs=2"), train, val, 3, seed=0, progress=False)
    crt = fit_classifier(_cfg("classifier.epochs=2", "imbalance.method=crt", "imbalance.crt_epochs=3",
                              "imbalance.crt_views=2"), train, val, 3, seed=0, progress=False)
    a, b = base.net.state_dict(), crt.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("head."))  # the backbone is frozen
    assert not torch.equal(a["head.weight"], b["head.weight"])
    info = crt.info
    assert info["crt"]["n_real"] == 39 and 1 <= info["crt"]["best_epoch"] <= 3 and len(info["crt_history"]) == 3
    assert info["val_balanced_accuracy"] == max(h["val_balanced_accuracy"] for h in info["crt_history"])
    assert all(p.requires_grad for p in crt.net.parameters())


def test_crt_uses_class_balanced_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    import synthmed.classifiers.heads as heads
    import synthmed.classifiers.train as train_mod

    seen: list[np.ndarray] = []
    in_crt = [False]
    real_ce, real_retrain = F.cross_entropy, heads.retrain_head

    def spy(logits, target, **kw):
        if in_crt[0]:
            seen.append(target.numpy().copy())
        return real_ce(logits, target, **kw)

    def retrain(*a, **kw):
        in_crt[0] = True
        try:
            return real_retrain(*a, **kw)
        finally:
            in_crt[0] = False

    monkeypatch.setattr(heads.F, "cross_entropy", spy)
    monkeypatch.setattr(train_mod, "retrain_head", retrain)
    train, val, _ = toy_sets(n_classes=3, n_train=[60, 6, 2], n_eval=4, size=8)
    fit_classifier(_cfg("classifier.epochs=1", "imbalance.method=crt", "imbalance.crt_epochs=20"), train, val, 3,
                   seed=0, progress=False)
    share = np.bincount(np.concatenate(seen), minlength=3) / sum(len(s) for s in seen)
    assert np.allclose(share, 1 / 3, atol=0.05)  # the real set is 88 % class 0


def test_crt_refuses_a_fixed_head() -> None:
    from synthmed.classifiers.heads import check_crt_head

    net, _ = build_model(ClassifierConfig(model="cnn"), 1, 8, 3)
    check_crt_head(net)
    net.head = torch.nn.Identity()
    with pytest.raises(ConfigError, match="imbalance.method=crt"):
        check_crt_head(net)
