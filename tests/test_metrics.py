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


def _ms_pairwise(acts: np.ndarray, emb: np.ndarray) -> np.ndarray:
    """O(N^2) reference: the pairwise definition of Pach et al. 2025, by explicit loops over pairs."""
    n, d_sae = acts.shape
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    out = np.full(d_sae, np.nan)
    for j in range(d_sae):
        col = acts[:, j]
        lo, hi = col.min(), col.max()
        if hi == lo:
            continue
        a = (col - lo) / (hi - lo)
        num = den = 0.0
        for i in range(n):
            for m in range(i + 1, n):
                w = a[i] * a[m]
                num += w * float(e[i] @ e[m])
                den += w
        if den > 0:
            out[j] = num / den
    return out


def test_monosemanticity_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    n, d_sae, d_e = 40, 12, 6
    acts = np.maximum(rng.normal(size=(n, d_sae)), 0) * rng.uniform(0.5, 3, d_sae)
    acts[:, 0] = 0.0  # dead
    acts[:, 1] = 0.0
    acts[7, 1] = 2.0  # fires on one input only: zero denominator
    acts[:, 2] += 5.0  # always on: min-max scaling matters
    emb = rng.normal(size=(n, d_e)) + 0.3
    got = metrics.monosemanticity_score(torch.tensor(acts), torch.tensor(emb)).numpy()
    ref = _ms_pairwise(acts, emb)
    assert np.isnan(got[0]) and np.isnan(got[1])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_allclose(got[~np.isnan(ref)], ref[~np.isnan(ref)], atol=1e-5)
    # Identical embeddings: every alive latent is perfectly monosemantic.
    same = metrics.monosemanticity_score(torch.tensor(acts), torch.ones(n, d_e)).numpy()
    np.testing.assert_allclose(same[2:], 1.0, atol=1e-9)


# --------------------------------------------------------------------------- replicate statistics (SPEC section 5)
def test_percentile_interval_is_numpys_2_5_and_97_5_percentiles():
    rng = np.random.default_rng(1)
    v = rng.normal(size=200)
    assert metrics.percentile_interval(torch.tensor(v)) == pytest.approx(tuple(np.percentile(v, [2.5, 97.5])))
    two = np.stack([v, 2 * v], axis=1)
    got = metrics.percentile_interval(torch.tensor(two))
    assert got[1] == pytest.approx(tuple(np.percentile(2 * v, [2.5, 97.5])))
    v[:30] = np.nan  # 15% undefined replicates: no interval rather than a biased one
    assert metrics.percentile_interval(torch.tensor(v)) is None
    v[:30] = 0.0
    v[:10] = np.nan  # 5% undefined: the interval of the finite ones
    assert metrics.percentile_interval(torch.tensor(v)) == pytest.approx(tuple(np.percentile(v[10:], [2.5, 97.5])))
    assert metrics.percentile_interval(torch.zeros(0)) is None


def test_row_wise_ranks_spearman_and_js_match_scipy_row_by_row():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 4, size=(6, 40)).astype(float)  # many ties, like firing counts
    b = a + rng.integers(0, 3, size=(6, 40))
    b[2] = 1.0  # a constant row
    np.testing.assert_allclose(metrics.rankdata_rows(torch.tensor(a)).numpy(), sp_rankdata(a, axis=1))
    rho = metrics.spearman_rows(torch.tensor(a), torch.tensor(b)).numpy()
    for r in range(6):
        if r == 2:
            assert np.isnan(rho[r])
        else:
            assert rho[r] == pytest.approx(spearmanr(a[r], b[r]).statistic, rel=1e-9)
    js = metrics.js_divergence_rows(torch.tensor(a), torch.tensor(b)).numpy()
    for r in range(6):
        assert js[r] == pytest.approx(jensenshannon(a[r], b[r], base=2) ** 2, rel=1e-9, abs=1e-12)
    terms = metrics.js_contributions(torch.tensor(a[0]), torch.tensor(b[0]))
    assert (terms >= 0).all() and float(terms.sum()) == pytest.approx(metrics.js_divergence(a[0], b[0]), rel=1e-12)


def test_weighted_auroc_is_sklearns_with_sample_weights():
    rng = np.random.default_rng(3)
    neg = np.round(rng.normal(size=30), 1)  # rounded: ties within and across the two sides
    pos = np.round(rng.normal(0.7, 1, size=20), 1)
    neg[4] = np.nan
    wn, wp = rng.poisson(1.0, size=(5, 30)).astype(float), rng.poisson(1.0, size=(5, 20)).astype(float)
    got = metrics.weighted_auroc(torch.tensor(neg), torch.tensor(pos), torch.tensor(wn), torch.tensor(wp), chunk=2)
    keep = ~np.isnan(neg)
    y = np.r_[np.zeros(keep.sum()), np.ones(20)]
    for r in range(5):
        ref = roc_auc_score(y, np.r_[neg[keep], pos], sample_weight=np.r_[wn[r][keep], wp[r]])
        assert float(got[r]) == pytest.approx(ref, rel=1e-12)
    assert metrics.weighted_auroc(torch.tensor(neg), torch.tensor(pos)) == pytest.approx(
        metrics.auroc(torch.tensor(neg), torch.tensor(pos)), rel=1e-12)
    zero = metrics.weighted_auroc(torch.tensor(neg), torch.tensor(pos), torch.zeros(1, 30), torch.ones(1, 20))
    assert torch.isnan(zero).all()


def test_kl_softmax_cosine_distance_and_fidelity_score():
    from scipy.special import softmax
    from scipy.stats import entropy

    rng = np.random.default_rng(4)
    p, q = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
    got = metrics.kl_softmax(torch.tensor(p), torch.tensor(q)).numpy()
    np.testing.assert_allclose(got, [entropy(softmax(p[i]), softmax(q[i])) for i in range(3)], rtol=1e-9)
    assert float(metrics.kl_softmax(torch.tensor(p), torch.tensor(p)).abs().max()) < 1e-12
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(metrics.cosine_distance(y, torch.tensor([[0.0, 3.0], [2.0, 2.0]])),
                               torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert metrics.fidelity_score(0.0, 0.2) == 1.0  # the SAE leaves the output untouched
    assert metrics.fidelity_score(0.2, 0.2) == 0.0  # no better than erasing the hooked tokens
    assert metrics.fidelity_score(0.3, 0.2) == pytest.approx(-0.5)
    assert math.isnan(metrics.fidelity_score(0.1, 0.0))
    torch.testing.assert_close(metrics.fidelity_score(torch.tensor([0.1, 0.4]), torch.tensor([0.2, 0.2])),
                               torch.tensor([0.5, -1.0], dtype=torch.float64))
