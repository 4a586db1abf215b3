"""The Top-k training objective against a slow, one-number-at-a-time reference (SPEC sections 1-2)."""

from __future__ import annotations

import math

import pytest
import torch

from sae_audit.sae import SAEConfig, TopKSAE, build_sae
from sae_audit.train import LossOutput, TopKObjective
from sae_audit.train.objective import geometric_median


def make_sae(**kw) -> TopKSAE:
    cfg = dict(d_in=5, d_sae=12, k=3, aux_alpha=0.25, k_aux=4, dead_after=10, lambda_off=0.3, lambda_ratio=0.07)
    sae = TopKSAE(SAEConfig(**{**cfg, **kw}), seed=4)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # untie and shift so every term is exercised
        sae.W_enc.add_(0.4 * torch.randn(sae.W_enc.shape, generator=g))
        sae.b_enc.copy_(0.3 * torch.randn(12, generator=g))
        sae.b_dec.copy_(0.5 * torch.randn(5, generator=g))
    return sae


def reference_loss(sae: TopKSAE, x, mean, since: list[int]):
    """Every term with Python floats and loops; returns (total, terms, counters after the step)."""
    cfg = sae.config
    W_enc, b_enc = sae.W_enc.detach().double().tolist(), sae.b_enc.detach().double().tolist()
    W_dec, b_dec = sae.W_dec.detach().double().tolist(), sae.b_dec.detach().double().tolist()
    X, mu = x.double().tolist(), mean.double().tolist()
    B, d_in, d_sae, k = len(X), cfg.d_in, cfg.d_sae, cfg.k
    H = [[sum((X[i][a] - b_dec[a]) * W_enc[a][j] for a in range(d_in)) + b_enc[j] for j in range(d_sae)]
         for i in range(B)]
    S = [sorted(range(d_sae), key=lambda j: -H[i][j])[:k] for i in range(B)]
    X_hat = [[b_dec[a] + sum(max(H[i][j], 0.0) * W_dec[j][a] for j in S[i]) for a in range(d_in)] for i in range(B)]
    sq = lambda u: sum(v * v for v in u)  # noqa: E731
    nmse = sum(sq([X[i][a] - X_hat[i][a] for a in range(d_in)]) for i in range(B)) / sum(
        sq([X[i][a] - mu[a] for a in range(d_in)]) for i in range(B))
    fired = {j for i in range(B) for j in S[i] if H[i][j] > 0}
    after = [0 if j in fired else since[j] + B for j in range(d_sae)]
    dead = [j for j in range(d_sae) if after[j] >= cfg.dead_after]
    num = den = 0.0
    for i in range(B):
        e = [X[i][a] - X_hat[i][a] for a in range(d_in)]
        cand = sorted(dead, key=lambda j: -H[i][j])[:cfg.k_aux]
        e_hat = [sum(max(H[i][j], 0.0) * W_dec[j][a] for j in cand) for a in range(d_in)]
        num += sq([e[a] - e_hat[a] for a in range(d_in)])
        den += sq(e)
    auxk = num / den if dead else 0.0
    A = set().union(*map(set, S))
    off = sum(sum(max(H[i][j], 0.0) for j in A if j not in S[i]) for i in range(B)) / B
    ratio = 0.0
    for i in range(B):
        p = [max(H[i][j], 0.0) for j in A]
        ratio += sum(p) / (math.sqrt(sq(p)) + 1e-8)
    ratio /= B
    total = nmse + cfg.aux_alpha * auxk + cfg.lambda_off * off + cfg.lambda_ratio * ratio
    return total, (nmse, auxk, off, ratio), after


def test_loss_equals_the_slow_reference_and_updates_the_counters():
    sae = make_sae(k_aux=2)
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(6)) * 2.0
    mean = torch.tensor([0.5, -0.2, 0.1, 0.0, 0.3])
    objective = TopKObjective(sae, mean)
    since = [0, 13, 7, 12, 40, 1, 19, 5, 30, 22, 8, 15]
    objective.tokens_since_fired.copy_(torch.tensor(since))
    total, terms, after = reference_loss(sae, x, mean, since)
    assert sum(a >= 10 for a in after) > sae.config.k_aux, "the test needs more dead latents than k_aux"
    assert any(0 < a < 10 for a in after) and 0 in after, "and live ones, silent and fired"
    out = objective.loss(x)
    assert isinstance(out, LossOutput) and out.loss.requires_grad
    got = [out.nmse.item(), out.auxk.item(), out.off_l1.item(), out.ratio.item()]
    assert all(t > 0 for t in terms)
    assert got == pytest.approx(list(terms), rel=1e-5)
    assert out.loss.item() == pytest.approx(total, rel=1e-5)
    assert objective.tokens_since_fired.tolist() == after
    assert objective.dead_mask().tolist() == [a >= 10 for a in after]


def test_zero_weights_skip_their_terms_and_plain_topk_is_nmse_alone():
    sae = make_sae(aux_alpha=0.0, lambda_off=0.0, lambda_ratio=0.0)
    objective = TopKObjective(sae, torch.zeros(5))
    objective.tokens_since_fired.fill_(100)  # all dead, but alpha is 0
    out = objective.loss(torch.randn(4, 5))
    assert out.auxk.item() == out.off_l1.item() == out.ratio.item() == 0.0
    assert out.loss.item() == out.nmse.item()


def test_only_top_k_sae_is_trained():
    with pytest.raises(TypeError, match="Top-k"):
        TopKObjective(build_sae(SAEConfig(d_in=4, d_sae=8, k=2, architecture="jumprelu")), torch.zeros(4))


def test_b_dec_init_mean_geometric_median_and_unknown_method():
    sae = make_sae()
    objective = TopKObjective(sae, torch.zeros(5))
    pts = torch.randn(50, 5, generator=torch.Generator().manual_seed(0))
    objective.init_b_dec(pts, "mean")
    torch.testing.assert_close(sae.b_dec.detach(), pts.mean(0))
    objective.init_b_dec(pts)
    torch.testing.assert_close(sae.b_dec.detach(), geometric_median(pts))
    # The geometric median minimises the sum of distances: nudging it never helps.
    cost = lambda p: (pts - p).norm(dim=1).sum()  # noqa: E731
    best = cost(sae.b_dec.detach())
    for d in torch.eye(5):
        assert best <= cost(sae.b_dec.detach() + 1e-2 * d) and best <= cost(sae.b_dec.detach() - 1e-2 * d)
    with pytest.raises(ValueError, match="median"):
        objective.init_b_dec(pts, "median")
