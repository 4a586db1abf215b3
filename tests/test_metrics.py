"""Metrics against independent references (scipy, scikit-learn, hand-computed values)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import rankdata as sp_rankdata
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from sae_audit import metrics


def test_fvu_is_variance_about_the_mean_and_offset_invariant():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, generator=g)
    x_hat = x + 0.1 * torch.randn(50, 4, generator=g)
    xn, xhn = x.numpy().astype(np.float64), x_hat.numpy().astype(np.float64)
    ref = ((xn - xhn) ** 2).sum() / ((xn - xn.mean(0)) ** 2).sum()
    assert metrics.fvu(x, x_hat) == pytest.approx(ref, rel=1e-9)
    xd, xhd = x.double(), x_hat.double()  # float32 would round the offset data itself
    assert metrics.fvu(xd + 1000.0, xhd + 1000.0) == pytest.approx(ref, rel=1e-9)
    assert metrics.explained_variance(x, x_hat) == pytest.approx(1 - ref, rel=1e-9)
    assert math.isnan(metrics.fvu(x[:1], x_hat[:1]))


def test_cosine():
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([[0.0, 2.0], [2.0, 2.0]])
    torch.testing.assert_close(metrics.cosine(x, y), torch.tensor([0.0, 1.0], dtype=torch.float64))


def test_js_divergence_matches_scipy():
    rng = np.random.default_rng(0)
    p, q = rng.random(30), rng.random(30)
    p[:5] = 0
    ref = jensenshannon(p, q, base=2) ** 2
    assert metrics.js_divergence(torch.tensor(p), torch.tensor(q)) == pytest.approx(ref, rel=1e-9)
    assert metrics.js_divergence(torch.tensor([1.0, 0]), torch.tensor([0.0, 1])) == pytest.approx(1.0)
    assert math.isnan(metrics.js_divergence(torch.zeros(3), torch.ones(3)))


def test_rank_and_spearman_match_scipy_with_ties():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, 40).astype(float)
    b = a + rng.integers(0, 3, 40)
    np.testing.assert_allclose(metrics.rankdata(torch.tensor(a)).numpy(), sp_rankdata(a))
    assert metrics.spearman(torch.tensor(a), torch.tensor(b)) == pytest.approx(spearmanr(a, b).statistic, rel=1e-9)
    assert math.isnan(metrics.spearman(torch.ones(5), torch.arange(5.0)))


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(2)
    neg = rng.integers(0, 10, 60).astype(float)
    pos = rng.integers(3, 13, 40).astype(float)
    ref = roc_auc_score(np.r_[np.zeros(60), np.ones(40)], np.r_[neg, pos])
    assert metrics.auroc(torch.tensor(neg), torch.tensor(pos)) == pytest.approx(ref, rel=1e-9)
    assert math.isnan(metrics.auroc(torch.tensor([]), torch.tensor([1.0])))


def test_effective_units_hand_values():
    v = torch.tensor([[2.0, 2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
    torch.testing.assert_close(metrics.effective_units(v), torch.tensor([2.0, 1.0, 0.0, 49.0 / 25.0]))


def test_log10_histogram_counts_alive_and_dead():
    f = torch.tensor([0.0, 1e-3, 1e-3, 0.5, 1.0, 0.0, 1e-9])
    h = metrics.log10_histogram(f, bins=7, low=-7.0)
    assert h["dead"] == 2 and sum(h["counts"]) == 5
    assert h["counts"][0] == 1  # 1e-9 clamps into the first bin
    assert h["counts"][4] == 2  # log10 = -3 lies in [-3, -2)
