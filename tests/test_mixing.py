"""Mixing policies give exactly the specified counts and ratios; loss weighting and imbalance formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synthmed.classifiers.batches import epoch_batches
from synthmed.classifiers.config import ImbalanceConfig, MixConfig
from synthmed.classifiers.imbalance import (
    balanced_order, class_weights, effective_number_weights, inverse_frequency_weights, logit_adjusted_cross_entropy,
    logit_adjustment,
)
from synthmed.classifiers.losses import batch_loss
from synthmed.classifiers.mixing import batch_ratio_batches, largest_remainder, plan_mix
from synthmed.errors import DataError

from toydata import toy_set

REAL = toy_set([40, 20, 5], 3, size=8, seed=0, prefix="train")
SYN = toy_set(60, 3, size=8, seed=9, prefix="synthetic/x")


def plan(**kw):
    return plan_mix(MixConfig(**kw), REAL, SYN, 3, seed=0)


def test_real_only_and_synthetic_only() -> None:
    p = plan(policy="real_only")
    assert p.n_real == 65 and p.n_synthetic == 0
    p = plan(policy="synthetic_only")
    assert p.n_real == 0 and p.n_synthetic == 180


def test_add_per_class_counts_and_shortage() -> None:
    p = plan(policy="add_per_class", add_per_class=25)
    assert p.n_real == 65 and p.synthetic.counts(3) == [25, 25, 25]
    assert all(i.startswith("synthetic/") for i in p.synthetic.ids)
    assert plan(policy="add_per_class", add_per_class=25).synthetic.ids == p.synthetic.ids  # seeded
    with pytest.raises(DataError, match="class 0 needs 61"):
        plan(policy="add_per_class", add_per_class=61)
    p = plan(policy="add_per_class", add_per_class=61, shortage="take_all")
    assert p.synthetic.counts(3) == [60, 60, 60] and p.warnings


def test_balance_to_fills_up_to_n() -> None:
    p = plan(policy="balance_to", balance_to=30)
    assert p.synthetic.counts(3) == [0, 10, 25]
    assert (np.asarray(p.real.counts(3)) + p.synthetic.counts(3)).tolist() == [40, 30, 30]


@pytest.mark.parametrize("r", [0.0, 0.1, 0.25, 0.5])
def test_ratio_keeps_real_and_adds_exact_share(r: float) -> None:
    p = plan(policy="ratio", ratio=r)
    assert p.n_real == 65
    assert p.n_synthetic == round(r / (1 - r) * 65)
    assert p.synthetic.counts(3) == largest_remainder(p.n_synthetic, np.array([40, 20, 5])).tolist()


def test_ratio_one_is_synthetic_only_same_size() -> None:
    p = plan(policy="ratio", ratio=1.0)
    assert p.n_real == 0 and p.synthetic.counts(3) == [40, 20, 5]


def test_ratio_shortage_subsamples_real_in_take_all_mode() -> None:
    with pytest.raises(DataError, match="ratio=0.75"):
        plan(policy="ratio", ratio=0.75)  # class 0 needs 120 synthetic, 60 exist
    p = plan(policy="ratio", ratio=0.75, shortage="take_all")
    assert p.synthetic.counts(3)[0] == 60 and p.real.counts(3)[0] == 20  # 60 * 0.25 / 0.75
    assert p.synthetic.counts(3)[1:] == [60, 15] and p.real.counts(3)[1:] == [20, 5]


def test_batch_ratio_every_batch() -> None:
    batches = batch_ratio_batches(65, 180, 20, 0.25, np.random.default_rng(0))
    real = np.concatenate([b[0] for b in batches])
    assert sorted(real.tolist()) == list(range(65))  # one pass over the real images
    for r, s in batches:
        assert len(s) == round(len(r) * 0.25 / 0.75)
    assert [len(b[1]) for b in batches[:-1]] == [5] * (len(batches) - 1)
    only = batch_ratio_batches(65, 50, 20, 1.0, np.random.default_rng(0))
    assert all(len(r) == 0 for r, _ in only) and sum(len(s) for _, s in only) == 50
    p = plan(policy="batch_ratio", batch_ratio=0.5)
    assert p.mode == "batch_ratio" and p.n_synthetic == 180


def test_weighted_loss_formula_and_lambda_one() -> None:
    torch.manual_seed(0)
    logits = torch.randn(10, 3)
    y = torch.randint(0, 3, (10,))
    lam = 0.7
    want = lam * F.cross_entropy(logits[:6], y[:6]) + (1 - lam) * F.cross_entropy(logits[6:], y[6:])
    got = batch_loss(logits, y, [6, 4], [lam, 1 - lam])
    assert torch.allclose(got, want)
    # lambda = 1: exactly plain CE on the real images, whatever the synthetic logits are
    other = logits.clone()
    other[6:] = 100 * torch.randn(4, 3)
    assert torch.allclose(batch_loss(other, y, [6, 4], [1.0, 0.0]), F.cross_entropy(logits[:6], y[:6]))
    assert torch.allclose(batch_loss(logits, y, [10, 0], [1.0, 1.0]), F.cross_entropy(logits, y))
    p = plan(policy="weighted_loss", weight_lambda=1.0)
    assert p.n_synthetic == 0  # lambda = 1 never reads synthetic images
    p = plan(policy="weighted_loss", weight_lambda=0.5)
    b = epoch_batches(p, "weighted_loss", 16, np.random.default_rng(0), False, 3)
    assert sorted(np.concatenate([r for r, _ in b]).tolist()) == list(range(65))
    assert all(len(s) == 16 for _, s in b)


def test_pretrain_then_finetune_plan() -> None:
    from synthmed.classifiers.train import _phases

    p = plan(policy="pretrain_then_finetune", pretrain_fraction=0.4)
    phases = _phases(p, 10)
    assert [(n, q.n_real, q.n_synthetic, e, sel) for n, q, _, e, sel in phases] == [
        ("pretrain", 0, 180, 4, False), ("finetune", 65, 0, 6, True)]


def test_class_weight_formulas() -> None:
    n = np.array([100, 10, 1])
    w = inverse_frequency_weights(n)
    assert np.allclose(w, (1 / n) / (1 / n).sum() * 3) and w.sum() == pytest.approx(3)
    beta = 0.99
    w = effective_number_weights(n, beta)
    raw = (1 - beta) / (1 - beta ** n)
    assert np.allclose(w, raw / raw.sum() * 3)
    assert class_weights(ImbalanceConfig(method="none"), n) is None
    assert np.allclose(class_weights(ImbalanceConfig(method="effective_number", beta=beta), n), w)
    # weighted mean CE equals torch's weighted cross-entropy
    logits, y = torch.randn(12, 3), torch.randint(0, 3, (12,))
    wt = torch.tensor(w, dtype=torch.float32)
    assert torch.allclose(batch_loss(logits, y, [12, 0], [1.0, 1.0], wt), F.cross_entropy(logits, y, weight=wt))


def test_logit_adjustment_formula() -> None:
    n = np.array([80, 15, 5])
    adj = logit_adjustment(ImbalanceConfig(method="logit_adjustment", tau=1.5), n)
    assert np.allclose(adj, 1.5 * np.log(n / n.sum()))
    logits, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    adj_t = torch.tensor(adj, dtype=torch.float32)
    want = F.cross_entropy(logits + adj_t, y)
    assert torch.allclose(batch_loss(logits, y, [8, 0], [1.0, 1.0], None, adj_t), want)
    assert torch.allclose(logit_adjusted_cross_entropy(logits, y, n, 1.5), want, atol=1e-6)
    assert logit_adjustment(ImbalanceConfig(method="none"), n) is None


def test_resampling_is_class_balanced() -> None:
    labels = np.repeat([0, 1, 2], [900, 90, 10])
    idx = balanced_order(labels, 3, np.random.default_rng(0), size=30000)
    share = np.bincount(labels[idx], minlength=3) / 30000
    assert np.allclose(share, 1 / 3, atol=0.02)
