"""Paired sweeps (SPEC section 6): within one seed every SAE of a sweep starts from the same weights
and sees the same batches; the seed is recorded in the config as ``init_seed``."""

from __future__ import annotations

import json

import torch

from sae_audit.sae import SAEConfig, load_sae, save_sae
from sae_audit.train import TrainConfig, fit_saes
from sae_audit.train import trainer as trainer_module

D, D_SAE = 16, 64


def _chunks(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(32, D, generator=g)
    for _ in range(4):
        yield torch.relu(torch.randn(512, 32, generator=g) - 1.0) @ basis


def _sweep(monkeypatch, seed: int, configs):
    """Train ``configs`` together; return (trained, initial state dicts, batches seen per SAE)."""
    initial, seen = [], {}

    class Spy(trainer_module.TrainingRun):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            initial.append({n: p.detach().clone() for n, p in self.sae.named_parameters()})
            self.index = len(initial) - 1

        def step(self, x, lr, bf16=False):
            seen.setdefault(self.index, []).append(x.clone())
            return super().step(x, lr, bf16)

    monkeypatch.setattr(trainer_module, "TrainingRun", Spy)
    train = TrainConfig(batch_size=128, max_vectors=1024, eval_vectors=256, buffer_size=512, seed=seed)
    trained = fit_saes(configs, _chunks(), train, progress=False)
    return trained, initial, seen


def _configs():
    base = dict(d_in=D, d_sae=D_SAE, normalisation="scalar")
    return [SAEConfig(k=4, **base), SAEConfig(k=4, lambda_off=1e-2, **base),
            SAEConfig(k=8, lambda_ratio=1e-2, **base)]


def test_variants_of_one_sweep_start_from_identical_weights_and_see_the_same_batches(monkeypatch):
    trained, initial, seen = _sweep(monkeypatch, 3, _configs())
    assert [sae.config.init_seed for sae, _ in trained] == [3, 3, 3]
    for other in initial[1:]:
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            assert torch.equal(initial[0][name], other[name]), name
    assert initial[0]["W_dec"].abs().sum() > 0
    assert len(seen[0]) == 1024 // 128  # max_vectors / batch_size steps
    for i in (1, 2):
        assert len(seen[i]) == len(seen[0])
        assert all(torch.equal(a, b) for a, b in zip(seen[0], seen[i]))
    # Training moved them apart (different k / regularisers), so the pairing is not trivially one SAE.
    assert not torch.equal(trained[0][0].W_dec, trained[2][0].W_dec)


def test_different_seeds_start_from_different_weights(monkeypatch):
    _, first, _ = _sweep(monkeypatch, 0, _configs()[:1])
    _, second, _ = _sweep(monkeypatch, 1, _configs()[:1])
    assert not torch.allclose(first[0]["W_dec"], second[0]["W_dec"])
    # The seed alone decides: the same seed again gives the same weights.
    _, again, _ = _sweep(monkeypatch, 0, _configs()[:1])
    assert torch.equal(first[0]["W_dec"], again[0]["W_dec"])


def test_init_seed_is_saved_and_loaded_and_old_files_without_it_load(tmp_path):
    cfg = SAEConfig(d_in=D, d_sae=D_SAE, k=4, init_seed=7)
    from sae_audit.sae import TopKSAE

    save_sae(TopKSAE(cfg, seed=7), tmp_path / "new")
    assert json.loads((tmp_path / "new" / "config.json").read_text())["init_seed"] == 7
    assert load_sae(tmp_path / "new").config.init_seed == 7
    save_sae(TopKSAE(SAEConfig(d_in=D, d_sae=D_SAE, k=4), seed=0), tmp_path / "old")
    raw = json.loads((tmp_path / "old" / "config.json").read_text())
    raw.pop("init_seed")
    (tmp_path / "old" / "config.json").write_text(json.dumps(raw))
    assert load_sae(tmp_path / "old").config.init_seed is None
