"""The paper experiment's evaluation helpers against slow, obviously-correct references."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch

from sae_audit.sae import SparseCodes

PATH = Path(__file__).resolve().parents[1] / "experiments" / "paper" / "evaluate.py"
spec = importlib.util.spec_from_file_location("paper_evaluate", PATH)
ev = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ev)


def test_monosemanticity_matches_the_pairwise_definition():
    g = torch.Generator().manual_seed(0)
    a = torch.relu(torch.randn(9, 5, generator=g))
    a[:, 3] = 0.0  # a latent that never fires: NaN
    emb = torch.nn.functional.normalize(torch.randn(9, 4, generator=g), dim=1)
    got = ev.monosemanticity(a, emb)
    for j in range(5):
        col = a[:, j].double()
        if col.max() == col.min():
            assert math.isnan(float(got[j]))
            continue
        s = (col - col.min()) / (col.max() - col.min())
        num = den = 0.0
        for n in range(9):
            for m in range(n + 1, 9):
                w = float(s[n] * s[m])
                num += w * float(emb[n].double() @ emb[m].double())
                den += w
        assert abs(float(got[j]) - num / den) < 1e-6


def test_image_activations_take_the_max_over_each_images_patches():
    idx = torch.tensor([[0, 1], [2, 1], [0, 3], [3, 2]])
    val = torch.tensor([[1.0, 2.0], [5.0, 0.5], [0.2, 4.0], [1.0, 0.0]])
    got = ev.image_activations([SparseCodes(idx, val, 4)], 4, per_image=2)
    expected = torch.tensor([[1.0, 2.0, 5.0, 0.0], [0.2, 0.0, 0.0, 4.0]])
    torch.testing.assert_close(got, expected)


def test_budgets_are_the_k_robustness_grid():
    assert ev.budgets(8) == [2, 4, 8, 16, 32]
    assert ev.budgets(32) == [8, 16, 32, 64, 128]


def test_monosemanticity_agrees_with_the_audit_metric():
    from sae_audit.metrics import monosemanticity_score

    g = torch.Generator().manual_seed(1)
    a = torch.relu(torch.randn(200, 30, generator=g) - 0.5)
    a[:, 7] = 0.0
    emb = torch.randn(200, 12, generator=g)
    ours = ev.monosemanticity(a, torch.nn.functional.normalize(emb.double(), dim=1))
    theirs = monosemanticity_score(a, emb)
    assert torch.equal(torch.isnan(ours), torch.isnan(theirs))
    ok = ~torch.isnan(ours)
    torch.testing.assert_close(ours[ok], theirs[ok], atol=1e-9, rtol=1e-9)
