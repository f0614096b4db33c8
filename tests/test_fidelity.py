"""FID / KID / improved precision-recall / density-coverage on hand-made feature sets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from synthmed.metrics import fidelity


@pytest.fixture(scope="module")
def feats() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"a": rng.normal(size=(400, 32)), "b": rng.normal(size=(400, 32)),
            "noise": rng.uniform(-6, 6, size=(400, 32))}


def test_fid_self_is_zero_and_noise_is_large(feats: dict[str, np.ndarray]) -> None:
    assert fidelity.fid(feats["a"], feats["a"]) == pytest.approx(0.0, abs=1e-6)
    same = fidelity.fid(feats["a"], feats["b"])
    noise = fidelity.fid(feats["a"], feats["noise"])
    assert same < 5.0 and noise > 50 * same


def test_fid_matches_closed_form_for_shifted_means() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(2000, 4))
    b = a + 3.0  # same covariance, mean shifted by 3 in every dim -> FID = 4 * 9
    assert fidelity.fid(a, b) == pytest.approx(36.0, rel=1e-6)


def test_fid_needs_two_samples() -> None:
    assert math.isnan(fidelity.fid(np.zeros((1, 3)), np.zeros((5, 3))))


def test_kid_near_zero_for_one_distribution_and_subset_adapts(feats: dict[str, np.ndarray]) -> None:
    same = fidelity.kid(feats["a"], feats["b"], subsets=20)
    far = fidelity.kid(feats["a"], feats["noise"], subsets=20)
    assert abs(same["mean"]) < 0.05 and far["mean"] > 1.0
    assert same["subset_size"] == 400 and same["std"] >= 0
    small = fidelity.kid(feats["a"], feats["b"][:37], subsets=5)
    assert small["subset_size"] == 37
    again = fidelity.kid(feats["a"], feats["b"][:37], subsets=5)
    assert again == small  # seeded subsets: deterministic


def test_prdc_identical_and_disjoint(feats: dict[str, np.ndarray]) -> None:
    same = fidelity.prdc(feats["a"], feats["a"], k=5)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    assert same["density"] == pytest.approx(1.0, abs=0.3)
    sampled = fidelity.prdc(feats["a"], feats["b"], k=5)
    assert 0.5 < sampled["precision"] < 1.0 and 0.5 < sampled["coverage"] <= 1.0
    far = fidelity.prdc(feats["a"], feats["a"] + 100.0, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_mode_collapse_keeps_precision_but_loses_recall() -> None:
    real = np.random.default_rng(2).normal(size=(500, 2))
    collapsed = real[np.argsort(np.linalg.norm(real, axis=1))[:60]] + 1e-3  # near the 60 most central points
    m = fidelity.prdc(real, collapsed, k=5)
    assert m["precision"] > 0.9 and m["recall"] < 0.5 and m["coverage"] < 0.5


def test_prdc_too_few_samples_is_nan() -> None:
    m = fidelity.prdc(np.zeros((5, 2)), np.zeros((10, 2)), k=5)
    assert all(math.isnan(v) for v in m.values())


def test_report_per_class_with_n_and_small_n_warning(feats: dict[str, np.ndarray], capsys: pytest.CaptureFixture[str]) -> None:
    labels = np.arange(400) % 2
    rep = fidelity.fidelity_report(feats["a"], labels, feats["b"][:100], labels[:100], ["x", "y"], k=3, kid_subsets=5,
                                   backbone="toy")
    assert rep["overall"]["n_real"] == 400 and rep["overall"]["n_fake"] == 100
    assert rep["per_class"]["y"]["n_real"] == 200 and rep["per_class"]["y"]["n_fake"] == 50
    assert any("2048" in w for w in rep["overall"]["warnings"])
    assert "2048" in capsys.readouterr().err


def test_fid_agrees_with_torchmetrics() -> None:
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance

    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(120, 16)), rng.normal(0.3, 1.5, size=(90, 16)) @ rng.normal(size=(16, 16))
    metric = FrechetInceptionDistance(feature=fidelity._identity_module(16))
    metric.update(torch.from_numpy(a), real=True)
    metric.update(torch.from_numpy(b), real=False)
    assert fidelity.fid(a, b) == pytest.approx(float(metric.compute()), rel=1e-6)


def test_fid_low_rank_and_full_rank_paths_agree() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(40, 30)), rng.normal(0.5, 2.0, size=(35, 30))
    mu_a, mu_b = a.mean(0), b.mean(0)
    full = fidelity.frechet_distance(mu_a, np.cov(a, rowvar=False), mu_b, np.cov(b, rowvar=False))
    assert fidelity.fid(a, b) == pytest.approx(full, rel=1e-6)  # n > D: D x D path
    wide_a, wide_b = rng.normal(size=(20, 300)), rng.normal(size=(25, 300)) * 1.3
    full = fidelity.frechet_distance(wide_a.mean(0), np.cov(wide_a, rowvar=False), wide_b.mean(0),
                                     np.cov(wide_b, rowvar=False))
    assert fidelity.fid(wide_a, wide_b) == pytest.approx(full, rel=1e-6)  # n < D: nuclear-norm path
