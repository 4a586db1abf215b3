"""Top-k SAE and regularisers against slow, obviously-correct references (SPEC sections 1-2)."""

from __future__ import annotations

import math

import pytest
import torch

from sae_audit.errors import SaeAuditError
from sae_audit.sae import SAEConfig, SparseCodes, TopKSAE, losses
from sae_audit.train.objective import TopKObjective


def make_sae(d_in=6, d_sae=20, k=3, seed=0, **kw) -> TopKSAE:
    sae = TopKSAE(SAEConfig(d_in=d_in, d_sae=d_sae, k=k, **kw), seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # untie and shift so every term is exercised
        sae.W_enc.add_(0.3 * torch.randn(sae.W_enc.shape, generator=g))
        sae.b_enc.copy_(0.2 * torch.randn(d_sae, generator=g))
        sae.b_dec.copy_(0.5 * torch.randn(d_in, generator=g))
    return sae


def ref_encode(sae: TopKSAE, x: torch.Tensor, k: int) -> torch.Tensor:
    """Dense codes, one input and one latent at a time."""
    W_enc, b_enc, b_dec = sae.W_enc.detach(), sae.b_enc.detach(), sae.b_dec.detach()
    out = torch.zeros(x.shape[0], sae.d_sae)
    for i in range(x.shape[0]):
        h = [float(sum((x[i, a] - b_dec[a]) * W_enc[a, j] for a in range(sae.d_in)) + b_enc[j]) for j in range(sae.d_sae)]
        order = sorted(range(sae.d_sae), key=lambda j: -h[j])[:k]
        for j in order:
            out[i, j] = max(h[j], 0.0)  # ReLU after selection
    return out


def test_encode_matches_reference_and_k_override():
    sae = make_sae()
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(3))
    for k in (1, 3, 8):
        codes = sae.encode(x, k=k)
        assert codes.indices.shape == (7, k) and codes.values.shape == (7, k)
        torch.testing.assert_close(codes.to_dense(), ref_encode(sae, x, k), atol=1e-5, rtol=1e-5)


def test_decode_sparse_equals_dense_and_reference():
    sae = make_sae()
    x = torch.randn(9, 6)
    codes = sae.encode(x)
    dense = codes.to_dense()
    ref = dense @ sae.W_dec.detach() + sae.b_dec.detach()
    torch.testing.assert_close(sae.decode(codes), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.decode(dense), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae(x), ref, atol=1e-5, rtol=1e-5)


def test_scalar_normalisation_is_undone_on_output():
    sae = make_sae(normalisation="scalar", norm_scale=0.25)
    x = torch.randn(4, 6)
    xs = x * 0.25
    plain = make_sae()
    expected = plain.decode(plain.encode(xs)) / 0.25
    torch.testing.assert_close(sae(x), expected)


def test_wrong_width_and_bad_k_are_user_errors():
    sae = make_sae()
    with pytest.raises(SaeAuditError, match="d_in=6"):
        sae.encode(torch.randn(2, 7))
    with pytest.raises(SaeAuditError, match="k=21"):
        sae.encode(torch.randn(2, 6), k=21)
    with pytest.raises(SaeAuditError, match="larger than d_sae"):
        SAEConfig(d_in=4, d_sae=8, k=9)


def ref_regularisers(h: torch.Tensor, k: int, eps=1e-8):
    B, d = h.shape
    S = [set(sorted(range(d), key=lambda j: -float(h[i, j]))[:k]) for i in range(B)]
    A = set().union(*S)
    off = ratio = 0.0
    for i in range(B):
        off += sum(max(float(h[i, j]), 0.0) for j in A if j not in S[i])
        p = [max(float(h[i, j]), 0.0) for j in A]
        ratio += sum(p) / (math.sqrt(sum(v * v for v in p)) + eps)
    return off / B, ratio / B, A


def test_regularisers_match_reference_and_only_touch_batch_active_latents():
    torch.manual_seed(0)
    h = torch.randn(6, 15, requires_grad=True)
    _, idx = h.topk(3, dim=1)
    off_ref, ratio_ref, A = ref_regularisers(h.detach(), 3)
    off = losses.off_support_l1(h, idx)
    ratio = losses.l1_l2_ratio(h, idx)
    assert off.item() == pytest.approx(off_ref, rel=1e-5)
    assert ratio.item() == pytest.approx(ratio_ref, rel=1e-5)
    (off + ratio).backward()
    inactive = sorted(set(range(15)) - A)
    assert inactive, "test needs latents outside the batch-active set"
    assert torch.all(h.grad[:, inactive] == 0)


def test_effective_units_squared_ratio_is_units_count():
    # k equal activations -> exactly k effective units.
    from sae_audit.metrics import effective_units

    v = torch.tensor([[1.0, 1.0, 1.0, 0.0], [5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(effective_units(v), torch.tensor([3.0, 1.0, 0.0]))


def test_auxk_matches_reference():
    torch.manual_seed(1)
    B, d_sae, d_in, k_aux = 5, 12, 4, 3
    h = torch.randn(B, d_sae)
    e = torch.randn(B, d_in)
    W = torch.randn(d_sae, d_in)
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[[1, 4, 5, 9, 11]] = True
    got = losses.auxk_loss(h, e, dead, W, k_aux)
    num = den = 0.0
    for i in range(B):
        cand = sorted([j for j in range(d_sae) if dead[j]], key=lambda j: -float(h[i, j]))[:k_aux]
        e_hat = sum(max(float(h[i, j]), 0.0) * W[j] for j in cand)
        num += float(((e[i] - e_hat) ** 2).sum())
        den += float((e[i] ** 2).sum())
    assert got.item() == pytest.approx(num / den, rel=1e-5)
    assert losses.auxk_loss(h, e, torch.zeros(d_sae, dtype=torch.bool), W, k_aux).item() == 0.0


def test_normalised_mse_uses_dataset_mean():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]) + 100.0
    x_hat = x + 0.5
    mean = x.mean(0)
    # ||x - x_hat||^2 = 4 * 0.25 = 1; sum ||x - mean||^2 = 4
    assert losses.normalised_mse(x, x_hat, mean).item() == pytest.approx(0.25)


def test_training_loss_combines_terms_with_lambdas():
    sae = make_sae(lambda_off=0.3, lambda_ratio=0.05, aux_alpha=0.5, dead_after=1)
    x = torch.randn(8, 6)
    mean = x.mean(0)
    objective = TopKObjective(sae, mean)
    objective.tokens_since_fired.fill_(5)  # everything dead before the step
    out = objective.loss(x)
    expected = out.nmse + 0.5 * out.auxk + 0.3 * out.off_l1 + 0.05 * out.ratio
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.auxk.item() > 0 and out.off_l1.item() > 0 and out.ratio.item() > 0
    fired = torch.unique(out.codes.indices[out.codes.values > 0])
    assert torch.all(objective.tokens_since_fired[fired] == 0)
    silent = torch.ones(20, dtype=torch.bool)
    silent[fired] = False
    assert torch.all(objective.tokens_since_fired[silent] == 13)


def test_plain_topk_has_no_regulariser_terms():
    sae = make_sae()
    out = TopKObjective(sae, torch.zeros(6)).loss(torch.randn(8, 6))
    assert out.off_l1.item() == 0 and out.ratio.item() == 0


def test_decoder_constraint_step():
    sae = make_sae()
    objective = TopKObjective(sae, torch.zeros(6))
    objective.normalise_decoder()
    out = objective.loss(torch.randn(16, 6))
    out.loss.backward()
    objective.project_decoder_grad()
    parallel = (sae.W_dec.grad * sae.W_dec).sum(dim=1)
    assert parallel.abs().max().item() < 1e-6
    with torch.no_grad():
        sae.W_dec -= 0.5 * sae.W_dec.grad
    objective.normalise_decoder()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(20))


def test_tied_init_and_geometric_median():
    sae = TopKSAE(SAEConfig(d_in=3, d_sae=5, k=2))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.T)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(5))
    # Geometric median of points on a line with an outlier stays near the cluster.
    pts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [100, 0, 0]])
    TopKObjective(sae, torch.zeros(3)).init_b_dec(pts)
    assert 1.0 <= sae.b_dec[0].item() <= 2.0


def test_sparse_codes_helpers():
    c = SparseCodes(torch.tensor([[0, 2], [1, 3]]), torch.tensor([[1.0, 0.0], [2.0, 3.0]]), 4)
    assert c.l0().tolist() == [1, 2]
    torch.testing.assert_close(c.to_dense(), torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 3.0]]))
    top = c.top(1)
    assert top.indices.tolist() == [[0], [3]]


@pytest.mark.parametrize("key,value", [("lambda_off", "abc"), ("norm_scale", float("inf")), ("schema_version", "1"),
                                       ("k_aux", "x"), ("lambda_ratio", float("nan")), ("k", True), ("tokens", 3)])
def test_config_rejects_wrong_types_and_non_finite_numbers(key, value):
    with pytest.raises(SaeAuditError, match=key):
        SAEConfig.from_dict({"d_in": 4, "d_sae": 8, "k": 2, key: value})
