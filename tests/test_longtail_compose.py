"""Composition: every synthetic mix policy with every imbalance method; batch_ratio + resample; synthetic loss
weight; the augment policy; policy facts; the progress-bar label."""

from __future__ import annotations

import typing

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synthmed.classifiers.batches import epoch_batches
from synthmed.classifiers.config import ImbalanceConfig, MixConfig
from synthmed.classifiers.losses import batch_loss
from synthmed.classifiers.mixing import augment_replacements, batch_ratio_batches, plan_mix
from synthmed.classifiers.policies import SYNTHETIC_POLICIES, mix_key, policy_kind, uses_synthetic
from synthmed.classifiers.train import fit_classifier, fit_plan
from synthmed.config import load_config
from synthmed.errors import DataError

from toydata import toy_set, toy_sets

METHODS = typing.get_args(ImbalanceConfig.model_fields["method"].annotation)
TRAIN, VAL, _ = toy_sets(n_classes=3, n_train=[12, 4, 2], n_eval=3, size=8)
SYN = toy_set(6, 3, size=8, seed=5, prefix="synthetic/x")
POLICY_ARGS = {"add_per_class": ["mix.add_per_class=3"], "balance_to": ["mix.balance_to=8"],
               "ratio": ["mix.ratio=0.25"], "batch_ratio": ["mix.batch_ratio=0.25"], "synthetic_only": [],
               "weighted_loss": ["mix.lambda=0.5"], "pretrain_then_finetune": [], "augment": ["mix.augment_p=0.5"]}


def _cfg(*extra: str):
    return load_config(None, ["classifier.model=cnn", "classifier.epochs=2", "classifier.batch_size=8",
                              "classifier.lr=0.003", "device=cpu", "imbalance.crt_epochs=1", "imbalance.crt_views=1",
                              "imbalance.posthoc_taus=[0.0, 1.0]", *extra])


def test_the_grid_covers_every_policy_and_method() -> None:
    assert set(POLICY_ARGS) == set(SYNTHETIC_POLICIES)
    assert set(METHODS) >= {"none", "resample", "logit_adjustment", "balanced_softmax", "drw", "posthoc_la", "crt"}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("policy", SYNTHETIC_POLICIES)
def test_every_policy_composes_with_every_method(policy: str, method: str) -> None:
    cfg = _cfg(f"mix.policy={policy}", *POLICY_ARGS[policy], f"imbalance.method={method}")
    assert policy_kind(cfg) == "synthetic"
    clf = fit_classifier(cfg, TRAIN, VAL, 3, seed=0, synthetic=SYN, progress=False)
    info = clf.info
    assert info["n_train_synthetic"] > 0 and info["policy"] == policy
    assert all(torch.isfinite(v).all() for v in clf.net.state_dict().values() if v.is_floating_point())
    assert info["prior_counts"] == [12, 4, 2]  # the real prior, whatever the mix
    facts = {"drw": "drw_first_epoch", "posthoc_la": "posthoc_tau", "crt": "crt"}
    for m, key in facts.items():
        assert (key in info) == (method == m)
    if method == "crt":
        assert info["crt"]["n_real"] == 18  # the head is re-trained on the real set, also after synthetic_only


def test_batch_ratio_with_resample_is_class_balanced() -> None:
    real = np.repeat([0, 1, 2], [900, 90, 10])
    syn = np.repeat([0, 1, 2], [10, 10, 280])
    batches = batch_ratio_batches(1000, 300, 40, 0.25, np.random.default_rng(0), (real, syn, 3))
    r = np.concatenate([b[0] for b in batches])
    s = np.concatenate([b[1] for b in batches])
    assert len(r) == 1000 and all(len(b[1]) == round(len(b[0]) / 3) for b in batches)  # the ratio holds per batch
    assert np.allclose(np.bincount(real[r], minlength=3) / len(r), 1 / 3, atol=0.05)
    assert np.allclose(np.bincount(syn[s], minlength=3) / len(s), 1 / 3, atol=0.06)
    plain = batch_ratio_batches(1000, 300, 40, 0.25, np.random.default_rng(0))
    assert sorted(np.concatenate([b[0] for b in plain]).tolist()) == list(range(1000))  # without resample: a pass
    p = plan_mix(MixConfig(policy="batch_ratio", batch_ratio=0.25), toy_set([90, 9, 1], 3, size=8), SYN, 3, 0)
    drawn = np.concatenate([b[0] for _ in range(20) for b in epoch_batches(p, "batch_ratio", 20, np.random.default_rng(1), True, 3)])
    assert np.bincount(p.real.labels[drawn], minlength=3)[2] > 0.2 * len(drawn)  # the 1-image class, ~1/3 of draws


def test_synthetic_weight_in_the_loss() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(10, 3), torch.randint(0, 3, (10,))
    sw = torch.tensor([1.0] * 6 + [0.25] * 4)
    ce = F.cross_entropy(logits, y, reduction="none")
    got = batch_loss(logits, y, [10, 0], [1.0, 1.0], sample_w=sw)
    assert torch.allclose(got, (sw * ce).sum() / sw.sum())
    zero = torch.tensor([1.0] * 6 + [0.0] * 4)
    other = logits.clone()
    other[6:] = 50 * torch.randn(4, 3)
    assert torch.allclose(batch_loss(other, y, [10, 0], [1.0, 1.0], sample_w=zero), ce[:6].mean())
    cw = torch.tensor([1.0, 2.0, 3.0])
    both = batch_loss(logits, y, [10, 0], [1.0, 1.0], cw, sample_w=sw)
    assert torch.allclose(both, (cw[y] * sw * ce).sum() / (cw[y] * sw).sum())


def test_synthetic_weight_changes_training_and_is_in_the_plan() -> None:
    a = fit_classifier(_cfg("mix.policy=add_per_class", "mix.add_per_class=3"), TRAIN, VAL, 3, 0, SYN, progress=False)
    b = fit_classifier(_cfg("mix.policy=add_per_class", "mix.add_per_class=3", "mix.synthetic_weight=0.1"),
                       TRAIN, VAL, 3, 0, SYN, progress=False)
    assert not torch.equal(a.net.head.weight, b.net.head.weight)
    assert plan_mix(MixConfig(policy="ratio", ratio=0.2, synthetic_weight=0.3), TRAIN, SYN, 3, 0).synthetic_weight == 0.3


# ----------------------------------------------------------------------------------------------- augment


def _sources(real, syn, every: int = 1) -> list[str]:
    """Synthetic image i made from the i-th real image of its class (every ``every``-th one only)."""
    out = []
    for i, c in enumerate(syn.labels.tolist()):
        own = [j for j in range(len(real)) if real.labels[j] == c]
        k = int((syn.labels[:i] == c).sum())
        out.append(real.ids[own[k % len(own)]] if i % every == 0 else "")
    return out


def test_augment_maps_variants_to_their_source_image() -> None:
    src = _sources(TRAIN, SYN)
    p = plan_mix(MixConfig(policy="augment", augment_p=0.5), TRAIN, SYN, 3, 0, src)
    assert p.mode == "augment" and p.n_real == 18 and p.n_synthetic == 18 and not p.warnings[1:]
    ids = {id_: i for i, id_ in enumerate(TRAIN.ids)}
    for j in range(p.n_synthetic):  # every kept variant belongs to exactly one real image, of its class
        owners = [i for i, v in enumerate(p.variants) if j in v.tolist()]
        assert len(owners) == 1 and p.real.labels[owners[0]] == p.synthetic.labels[j]
    for i, v in enumerate(p.variants):
        assert all(ids[src[SYN.ids.index(p.synthetic.ids[j])]] == i for j in v.tolist())
    assert any("never replaced" in w for w in p.warnings)  # class 0 has 12 real images but 6 variants


def test_augment_replaces_with_probability_p_and_keeps_real_frequencies() -> None:
    p = plan_mix(MixConfig(policy="augment", augment_p=0.3), TRAIN, SYN, 3, 0, [""] * len(SYN))
    assert p.warnings and "same-class" in p.warnings[0]  # no source anywhere: the fallback, with a warning
    rng = np.random.default_rng(0)
    kept, replaced = [], []
    for _ in range(400):
        r, s = augment_replacements(np.arange(18), p, rng)
        kept.append(r)
        replaced.append(s)
        assert len(r) + len(s) == 18
    n_rep = sum(len(s) for s in replaced)
    assert abs(n_rep / (400 * 18) - 0.3) < 0.02
    labels = np.concatenate([TRAIN.labels[np.concatenate(kept)], SYN.labels[np.concatenate(replaced)]])
    assert np.bincount(labels, minlength=3).tolist() == [12 * 400, 4 * 400, 2 * 400]  # each class keeps its count


def test_augment_refuses_bad_sources() -> None:
    src = _sources(TRAIN, SYN)
    with pytest.raises(DataError, match="source ids"):
        plan_mix(MixConfig(policy="augment"), TRAIN, SYN, 3, 0, src[:-1])
    wrong = list(src)
    wrong[0] = TRAIN.ids[-1]  # a class-0 synthetic image named after a class-2 real image
    with pytest.raises(DataError, match="different class"):
        plan_mix(MixConfig(policy="augment"), TRAIN, SYN, 3, 0, wrong)


def test_augment_training_records_the_replaced_share() -> None:
    clf = fit_classifier(_cfg("mix.policy=augment", "mix.augment_p=1.0"), TRAIN, VAL, 3, 0, SYN, progress=False,
                         sources=_sources(TRAIN, SYN))
    assert 0.0 < clf.info["augment_replaced_share"] < 1.0  # p = 1, but class 0 has unvaried real images


def test_augment_policy_facts() -> None:
    assert not uses_synthetic(MixConfig(policy="augment", augment_p=0.0))
    assert mix_key(MixConfig(policy="augment", augment_p=0.0, synthetic_weight=0.5)) == {"policy": "real_only"}
    key = mix_key(MixConfig(policy="augment", augment_p=0.4))
    assert key == {"policy": "augment", "augment_p": 0.4, "synthetic_weight": 1.0}
    assert "synthetic_weight" in mix_key(MixConfig(policy="balance_to"))
    for policy in ("weighted_loss", "synthetic_only", "pretrain_then_finetune", "ratio"):
        assert "augment_p" not in mix_key(MixConfig(policy=policy))
    assert "synthetic_weight" not in mix_key(MixConfig(policy="weighted_loss"))


def test_progress_bar_is_labelled_with_the_policy_name(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _cfg("classifier.epochs=1", "imbalance.method=logit_adjustment")
    plan = plan_mix(cfg.mix, TRAIN, None, 3, 0)
    fit_plan(cfg, plan, VAL, 3, seed=0, progress=True, label="logit_adjusted")
    err = capsys.readouterr().err
    assert "logit_adjusted/train seed 0" in err and "real_only/train" not in err


def test_imbalance_key_holds_only_what_the_method_reads() -> None:
    from synthmed.classifiers.policies import _IMBALANCE_FIELDS, imbalance_key

    assert set(_IMBALANCE_FIELDS) == set(METHODS)
    assert imbalance_key(ImbalanceConfig(method="resample", tau=2.0)) == {"method": "resample"}
    assert imbalance_key(ImbalanceConfig(method="drw", tau=2.0)) == {"method": "drw", "prior": "real",
                                                                     "beta": 0.9999, "drw_start": 0.8}
    fields = set(ImbalanceConfig.model_fields) - {"method"}
    assert {f for v in _IMBALANCE_FIELDS.values() for f in v} == fields  # every field is read by some method
