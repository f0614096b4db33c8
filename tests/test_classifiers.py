"""Models (cnn, resnet, tiny CLIP with q/v LoRA or linear probe) and the training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthmed.classifiers.config import ClassifierConfig, ClipConfig
from synthmed.classifiers.models import LoRAAttention, LoRAQV, build_model
from synthmed.classifiers.train import TrainedClassifier, fit_classifier
from synthmed.classifiers.transforms import augment
from synthmed.config import load_config
from synthmed.metrics.classification import classification_metrics

from toydata import toy_set, toy_sets

TINY_CLIP = {"embed_dim": 16, "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_cnn_and_resnet_forward_grayscale(name: str) -> None:
    net, info = build_model(ClassifierConfig(model=name), in_channels=1, size=16, n_classes=3)
    x = torch.rand(2, 1, 16, 16)
    assert net(x).shape == (2, 3) and net.features(x).shape == (2, net.feature_dim)
    assert info["pretrained"] is False
    if name == "resnet18":
        assert info["stem"] == "small" and net.backbone.conv1.stride == (1, 1)


@pytest.mark.parametrize("stem,stride,feat", [("small", 1, 28), ("strided", 2, 14), ("imagenet", 2, 7)])
def test_resnet_stems_set_the_feature_resolution(stem: str, stride: int, feat: int) -> None:
    net, info = build_model(ClassifierConfig(model="resnet18", resnet_stem=stem), in_channels=3, size=28, n_classes=4)
    assert info["stem"] == stem and net.backbone.conv1.stride == (stride, stride)
    b = net.backbone
    x = torch.rand(2, 3, 28, 28)
    assert b.maxpool(b.relu(b.bn1(b.conv1(x)))).shape[-1] == feat
    assert net(x).shape == (2, 4)


@pytest.mark.parametrize("head", ["lora", "linear_probe"])
def test_tiny_clip_forward_backward(head: str) -> None:
    cc = ClassifierConfig(model="clip", clip=ClipConfig(head=head, model_cfg=TINY_CLIP, lora_r=2))
    net, info = build_model(cc, in_channels=1, size=16, n_classes=3, class_names=["a", "b", "c"])
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    if head == "lora":
        assert trainable and all(".attn.lora." in n for n in trainable)
        assert any(isinstance(m, LoRAAttention) for m in net.modules())
    else:
        assert trainable == {"head.weight", "head.bias"}
    x = torch.rand(4, 1, 16, 16)
    logits = net(x)
    assert logits.shape == (4, 3)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    assert all(p.grad is None for p in net.parameters() if not p.requires_grad)


def test_lora_only_touches_q_and_v() -> None:
    lora = LoRAQV(4, 2, 4.0)
    torch.nn.init.normal_(lora.b_q)
    torch.nn.init.normal_(lora.b_v)
    out = lora.delta_weight()
    assert out.shape == (12, 4)
    assert out[:4].abs().sum() > 0 and out[4:8].abs().sum() == 0 and out[8:].abs().sum() > 0


def test_augment_keeps_range_and_shape() -> None:
    x = torch.rand(8, 1, 16, 16)
    y = augment(x, ClassifierConfig().augment, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and not torch.equal(x, y)


def _cfg(*extra: str):
    return load_config(None, ["classifier.model=cnn", "classifier.epochs=3", "classifier.batch_size=16",
                              "classifier.lr=0.003", "device=cpu", *extra])


def test_fit_beats_chance_and_reloads(tmp_path) -> None:
    train, val, test = toy_sets(n_classes=3, n_train=24, n_eval=15, size=16)
    clf = fit_classifier(_cfg(), train, val, 3, seed=0, out_dir=tmp_path, progress=False)
    m = classification_metrics(test.labels, clf.predict_proba(test.images), 3)
    assert m["balanced_accuracy"] > 0.7  # chance is 1/3
    assert 1 <= clf.info["best_epoch"] <= clf.info["epochs_run"] == 3
    again = TrainedClassifier.load(tmp_path, _cfg())
    assert np.allclose(again.predict_proba(test.images), clf.predict_proba(test.images), atol=1e-6)
    assert again.features(test.images[:5]).shape == (5, clf.net.feature_dim)


def test_lambda_one_equals_real_only_and_lambda_half_differs() -> None:
    train, val, _ = toy_sets(n_classes=3, n_train=12, n_eval=6, size=12)
    syn = toy_set(10, 3, size=12, seed=7, prefix="synthetic/x")
    base = fit_classifier(_cfg("classifier.epochs=2"), train, val, 3, seed=1, progress=False)
    same = fit_classifier(_cfg("classifier.epochs=2", "mix.policy=weighted_loss", "mix.lambda=1.0"),
                          train, val, 3, seed=1, synthetic=syn, progress=False)
    half = fit_classifier(_cfg("classifier.epochs=2", "mix.policy=weighted_loss", "mix.lambda=0.5"),
                          train, val, 3, seed=1, synthetic=syn, progress=False)
    sa, sb, sc = (c.net.state_dict() for c in (base, same, half))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # also: training is deterministic for a seed
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert half.info["n_train_synthetic"] == 30
