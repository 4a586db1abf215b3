"""The SAE family: one base, sibling architectures without training state, the fixed name map."""

from __future__ import annotations

import pytest
import torch

from sae_audit.errors import SaeAuditError
from sae_audit.sae import SAE, JumpReLUSAE, ReLUSAE, SAEConfig, TopKSAE, build_sae, load_sae, save_sae
from sae_audit.sae.architectures import ARCHITECTURE_CLASSES, extra_params
from sae_audit.sae.codes import codes_from_dense
from sae_audit.sae.config import ARCHITECTURES

TRAINING_STATE = ("tokens_since_fired", "training_loss", "remove_parallel_decoder_grad", "normalise_decoder",
                  "init_b_dec", "dead_mask", "data_mean")


def make(arch: str, k: int = 5, seed: int = 0) -> SAE:
    sae = build_sae(SAEConfig(d_in=6, d_sae=16, k=k, architecture=arch), seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        sae.W_enc.add_(0.3 * torch.randn(sae.W_enc.shape, generator=g))
        sae.b_enc.copy_(0.2 * torch.randn(16, generator=g))
        sae.b_dec.copy_(0.3 * torch.randn(6, generator=g))
        if arch == "jumprelu":
            sae.threshold.copy_(0.3 * torch.rand(16, generator=g))
    return sae


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_no_architecture_carries_training_state(arch):
    sae = make(arch)
    assert [name for name in TRAINING_STATE if hasattr(sae, name)] == []
    assert list(sae.buffers()) == []
    expected = {"W_enc", "b_enc", "W_dec", "b_dec"} | set(extra_params(sae.config))
    assert set(sae.state_dict()) == expected


def test_jumprelu_and_relu_are_siblings_of_topk_not_subclasses():
    assert not issubclass(JumpReLUSAE, TopKSAE) and not issubclass(ReLUSAE, TopKSAE)
    assert all(cls.__bases__ == (SAE,) for cls in (TopKSAE, JumpReLUSAE, ReLUSAE))
    with pytest.raises(TypeError):
        SAE(SAEConfig(d_in=4, d_sae=8, k=2))  # abstract: no encode


def test_architecture_map_is_fixed_and_matches_the_config_names():
    assert tuple(ARCHITECTURE_CLASSES) == ARCHITECTURES
    with pytest.raises(TypeError):
        ARCHITECTURE_CLASSES["mine"] = TopKSAE  # type: ignore[index]
    for arch, cls in ARCHITECTURE_CLASSES.items():
        assert type(make(arch)) is cls
    assert extra_params(SAEConfig(d_in=4, d_sae=8, k=2, architecture="jumprelu")) == {"threshold": (8,)}
    assert extra_params(SAEConfig(d_in=4, d_sae=8, k=2)) == {}


def test_every_architecture_shares_the_tied_seeded_init():
    fresh = [build_sae(SAEConfig(d_in=6, d_sae=16, k=5, architecture=a), seed=3) for a in ARCHITECTURES]
    for sae in fresh:
        assert sae.W_dec.dtype == torch.float32
        torch.testing.assert_close(sae.W_enc, sae.W_dec.T)
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(16))
        torch.testing.assert_close(sae.W_dec, fresh[0].W_dec, rtol=0, atol=0)


def dense_reference(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """``z`` one input and one latent at a time (before any cap)."""
    W, b_enc, b_dec = sae.W_enc.detach(), sae.b_enc.detach(), sae.b_dec.detach()
    threshold = sae.threshold.detach() if isinstance(sae, JumpReLUSAE) else None
    z = torch.zeros(x.shape[0], sae.d_sae)
    for i in range(x.shape[0]):
        for j in range(sae.d_sae):
            h = float(sum((x[i, a] - b_dec[a]) * W[a, j] for a in range(sae.d_in)) + b_enc[j])
            gate = threshold is None or h > float(threshold[j])
            z[i, j] = max(h, 0.0) if gate else 0.0
    return z


@pytest.mark.parametrize("arch", ["jumprelu", "relu"])
def test_dense_architectures_match_reference_and_cap_at_k(arch):
    sae = make(arch, k=16)
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(1))
    ref = dense_reference(sae, x)
    if arch == "jumprelu":  # the threshold must matter: some positive pre-activations fall below it
        assert (torch.relu(sae.pre_activations(x)).detach() > ref).any()
    codes = sae.encode(x)
    assert codes.k == int((ref > 0).sum(dim=1).max())
    torch.testing.assert_close(codes.to_dense(), ref, atol=1e-5, rtol=1e-5)
    for k in (1, 2):
        capped = sae.encode(x, k=k).to_dense()
        assert int((capped > 0).sum(dim=1).max()) <= k
        kept = ref.topk(k, dim=1).values
        torch.testing.assert_close(capped.topk(k, dim=1).values, kept, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae(x), sae.decode(ref), atol=1e-5, rtol=1e-5)
    with pytest.raises(SaeAuditError, match="k=17"):
        sae.encode(x, k=17)


def test_codes_from_dense_pads_silent_inputs_and_keeps_one_column_at_least():
    z = torch.tensor([[0.0, 2.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    codes = codes_from_dense(z, k=4)
    assert codes.k == 2 and codes.d_sae == 4 and codes.l0().tolist() == [2, 0]
    torch.testing.assert_close(codes.to_dense(), z)
    assert codes_from_dense(torch.zeros(3, 4), k=4).k == 1
    assert codes_from_dense(z, k=1).to_dense().tolist() == [[0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_native_round_trip_of_every_architecture(arch, tmp_path):
    sae = make(arch)
    folder = save_sae(sae, tmp_path / arch)
    assert not (folder / "README.md").exists()  # save_sae writes a card only when given one
    again = load_sae(folder)
    assert type(again) is type(sae)
    x = torch.randn(4, 6)
    torch.testing.assert_close(again(x), sae(x))
