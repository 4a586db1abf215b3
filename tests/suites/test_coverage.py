"""Coverage accumulator against dense, one-shot reference computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import spearmanr

from sae_audit.sae import SAEConfig, TopKSAE
from sae_audit.suites.base import SuiteBatch
from sae_audit.suites.coverage import CoverageAccumulator, compare


def make_data(n=300, d_in=8, seed=0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g) * torch.linspace(0.5, 2, d_in) + offset


def sae_for(d_in=8, d_sae=24, k=4):
    sae = TopKSAE(SAEConfig(d_in=d_in, d_sae=d_sae, k=k), seed=3)
    with torch.no_grad():
        sae.b_enc.copy_(torch.linspace(-1.5, 0.3, d_sae))  # some latents never win
    return sae


def accumulate(sae, x, chunks=1, threshold=0.1):
    accs = []
    for part in torch.tensor_split(x, chunks):
        acc = CoverageAccumulator(sae.d_sae, sae.d_in, sae.k, threshold)
        codes = sae.encode(part)
        acc.accumulate(SuiteBatch(part, codes, sae.decode(codes), torch.arange(len(part)), torch.full((len(part),), -1)))
        accs.append(acc)
    first = accs[0]
    for other in accs[1:]:
        first.merge(other)
    return first.finish()


@torch.no_grad()
def test_matches_dense_reference():
    sae = sae_for()
    x = make_data()
    got = accumulate(sae, x, chunks=1)
    z = sae.encode(x).to_dense().double().numpy()
    x_hat = sae(x).double().numpy()
    xn = x.double().numpy()
    f = (z > 0).mean(axis=0)
    np.testing.assert_allclose(got["frequencies"], f, rtol=1e-5)
    assert got["alive_fraction"] == pytest.approx((f > 0).mean())
    assert got["dead_fraction"] == pytest.approx((f == 0).mean())
    assert got["dense_fraction"] == pytest.approx((f > 0.1).mean())
    fvu = ((xn - x_hat) ** 2).sum() / ((xn - xn.mean(0)) ** 2).sum()
    assert got["fvu"] == pytest.approx(fvu, rel=1e-9)
    assert got["explained_variance"] == pytest.approx(1 - fvu, rel=1e-9)
    cos = (xn * x_hat).sum(1) / np.linalg.norm(xn, axis=1) / np.linalg.norm(x_hat, axis=1)
    assert got["cosine"] == pytest.approx(cos.mean(), rel=1e-9)
    rel = (((xn - x_hat) ** 2).sum(1) / (xn**2).sum(1)).mean()
    assert got["relative_mse"] == pytest.approx(rel, rel=1e-9)
    l0 = (z > 0).sum(1)
    assert got["l0_mean"] == pytest.approx(l0.mean())
    assert got["l0_std"] == pytest.approx(l0.std(), rel=1e-6)
    eu = np.where(l0 > 0, z.sum(1) ** 2 / np.maximum((z**2).sum(1), 1e-300), 0.0)
    assert got["effective_units_mean"] == pytest.approx(eu.mean(), rel=1e-9)
    mean_act = np.where(f > 0, z.sum(0) / np.maximum((z > 0).sum(0), 1), 0)
    np.testing.assert_allclose(got["mean_activation"], mean_act, rtol=1e-5)
    assert got["n_inputs"] == 300


@torch.no_grad()
def test_three_shards_merged_equal_one_pass_and_offset_invariance():
    sae = sae_for()
    x = make_data(seed=1)
    whole = accumulate(sae, x, chunks=1)
    sharded = accumulate(sae, x, chunks=3)
    for key in ("frequencies", "l0_hist", "n_alive", "n_inputs", "effective_units_hist"):
        assert whole[key] == sharded[key]
    for key in ("fvu", "cosine", "relative_mse", "l0_mean", "effective_units_mean"):
        assert sharded[key] == pytest.approx(whole[key], rel=1e-9)

    # FVU is about the dataset mean: a huge shift of data and reconstruction together changes nothing.
    acc = CoverageAccumulator(sae.d_sae, sae.d_in, sae.k)
    xd = x.double()
    codes = sae.encode(x)
    x_hat = sae.decode(codes).double()
    for part, part_hat in zip(torch.tensor_split(xd + 1e4, 3), torch.tensor_split(x_hat + 1e4, 3)):
        acc.accumulate(SuiteBatch(part, sae.encode(part.float() - 1e4), part_hat, torch.arange(len(part)),
                                  torch.zeros(len(part), dtype=torch.long)))
    assert acc.finish()["fvu"] == pytest.approx(whole["fvu"], rel=1e-6)


@torch.no_grad()
def test_compare_against_reference():
    sae = sae_for()
    a = accumulate(sae, make_data(seed=2))
    b = accumulate(sae, make_data(seed=3, offset=1.5))
    pair = compare(a, b, top=5)
    fa, fb = np.array(a["frequencies"]), np.array(b["frequencies"])
    alive_a, alive_b = fa > 0, fb > 0
    assert pair["shared_alive"] == pytest.approx((alive_a & alive_b).sum() / alive_a.sum())
    assert pair["n_ood_only"] == int((alive_b & ~alive_a).sum())
    assert pair["n_id_only"] == int((alive_a & ~alive_b).sum())
    assert pair["js_divergence"] == pytest.approx(jensenshannon(fa, fb, base=2) ** 2, rel=1e-6)
    assert pair["spearman"] == pytest.approx(spearmanr(fa, fb).statistic, rel=1e-6)
    assert pair["fvu_gap"] == pytest.approx(b["fvu"] - a["fvu"])
    shifts = [abs(r["log10_shift"]) for r in pair["top_shifted"]]
    assert shifts == sorted(shifts, reverse=True)
    assert all(r["freq_id"] == 0 for r in pair["top_ood_only"])


def test_empty_and_single_input_give_nan_not_crash():
    sae = sae_for()
    acc = CoverageAccumulator(sae.d_sae, sae.d_in, sae.k)
    out = acc.finish()
    assert out["fvu"] is None and out["n_inputs"] == 0
    x = make_data(n=1)
    codes = sae.encode(x)
    acc.accumulate(SuiteBatch(x, codes, sae.decode(codes), torch.arange(1), torch.zeros(1, dtype=torch.long)))
    assert acc.finish()["fvu"] is None  # variance about the mean of one input is zero
