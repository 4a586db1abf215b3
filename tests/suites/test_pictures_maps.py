"""Per-patch maps of the pictures suite against a dense loop; sharding, non-finite tokens, grids, bad input."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch

from sae_audit.sae import SAEConfig, TopKSAE
from sae_audit.suites.base import SuiteBatch
from sae_audit.suites.pictures import PicturesAccumulator, compare, patch_grid

D_IN, D_SAE, K = 8, 24, 4


def make_sae(seed=3):
    sae = TopKSAE(SAEConfig(d_in=D_IN, d_sae=D_SAE, k=K), seed=seed)
    with torch.no_grad():
        sae.b_enc.copy_(torch.linspace(-1.5, 0.3, D_SAE))
    return sae


def make_data(n, tok, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n * tok, D_IN, generator=g) + torch.randn(n, D_IN, generator=g).repeat_interleave(tok, 0)
    images = torch.randperm(n, generator=g) * 3 + 1  # dataset indices, not in order
    return x, images


def batches(sae, x, images, tok, per_batch, drop=()):
    """SuiteBatch es of whole images; token rows listed in ``drop`` are removed as non-finite."""
    n = len(images)
    out = []
    for start in range(0, n, per_batch):
        chunk = torch.arange(start, min(n, start + per_batch))
        rows = torch.tensor([i * tok + t for i in chunk.tolist() for t in range(tok)])
        keep = torch.tensor([int(r) not in drop for r in rows])
        xr = x[rows][keep]
        codes = sae.encode(xr)
        idx = images[chunk].repeat_interleave(tok)[keep]
        out.append(SuiteBatch(xr, codes, sae.decode(codes), idx, torch.full_like(idx, -1),
                              n_nonfinite=int((~keep).sum()), images=images[chunk],
                              image_labels=torch.full((len(chunk),), -1)))
    return out


def dense_reference(sae, x, images, tok, n_top):
    """For each latent: ``[(image, value, map)]`` of its top images by an explicit loop."""
    z = sae.encode(x).to_dense().numpy().astype(np.float64).reshape(len(images), tok, D_SAE)
    ref = {}
    for j in range(D_SAE):
        cands = [(float(z[i, :, j].max()), int(images[i]), i) for i in range(len(images)) if z[i, :, j].max() > 0]
        cands.sort(key=lambda c: (-c[0], c[1]))
        ref[j] = [(img, v, np.round(z[i, :, j] / v * 255).clip(0, 255).astype(np.uint8))
                  for v, img, i in cands[:n_top]]
    return ref


def run(sae, x, images, tok, parts, per_batch, n_top=3, drop=()):
    shards = np.array_split(np.arange(len(images)), parts)
    accs = []
    for ids in shards:
        ids = torch.as_tensor(ids)
        sub_rows = torch.cat([torch.arange(i * tok, (i + 1) * tok) for i in ids.tolist()])
        sub_drop = {k for k, r in enumerate(sub_rows.tolist()) if r in drop}
        acc = PicturesAccumulator(D_SAE, n_top=n_top)
        for b in batches(sae, x[sub_rows], images[ids], tok, per_batch, sub_drop):
            acc.accumulate(b)
        accs.append(acc)
    for other in accs[1:]:
        accs[0].merge(other)
    return accs[0]


@torch.no_grad()
@pytest.mark.parametrize("tok,parts,per_batch", [(9, 1, 4), (10, 3, 5), (17, 2, 64)])
def test_maps_match_a_dense_loop_whatever_the_sharding(tok, parts, per_batch):
    sae = make_sae()
    x, images = make_data(23, tok, seed=tok)
    acc = run(sae, x, images, tok, parts, per_batch)
    ref = dense_reference(sae, x, images, tok, 3)
    for j in range(D_SAE):
        got = acc.top(j)
        assert [g[0] for g in got] == [r[0] for r in ref[j]], j
        for rank, (img, v, m) in enumerate(ref[j]):
            assert got[rank][1] == pytest.approx(v, rel=1e-5)
            tm = np.frombuffer(acc.token_map(j, rank), dtype=np.uint8)
            assert np.abs(tm.astype(int) - m.astype(int)).max() <= 1, (j, rank)  # float32 vs float64 rounding
            assert tm.max() == 255


@torch.no_grad()
def test_an_image_that_lost_tokens_keeps_its_rank_but_has_no_map():
    sae = make_sae()
    tok = 9
    x, images = make_data(12, tok, seed=5)
    acc = run(sae, x, images, tok, 1, 4, drop={4 * tok + 2})  # image row 4 loses one token
    lost = int(images[4])
    seen_lost = False
    for j in range(D_SAE):
        for rank, (img, _) in enumerate(acc.top(j)):
            if img == lost:
                seen_lost = True
                assert acc.token_map(j, rank) is None
            else:
                assert acc.token_map(j, rank) is not None
    assert seen_lost


@torch.no_grad()
def test_one_token_per_image_stores_no_map_and_says_why():
    sae = make_sae()
    x, images = make_data(10, 1, seed=2)
    acc = run(sae, x, images, 1, 2, 3)
    assert acc.heap.maps is None and acc.finish()["tokens_per_image"] == 1
    cov = {"top_shifted": [{"latent": j, "freq_id": 0.1, "freq_ood": 0.2, "log10_shift": 0.3} for j in range(24)]}
    out = compare(acc, acc, cov, None, None)
    assert out["patch_grid"] is None and "no spatial map" in out["no_map_reason"]
    assert all("patch_map" not in p for lat in out["latents"] for p in lat["id"])


@torch.no_grad()
def test_compare_stores_maps_that_decode_to_the_grid():
    sae = make_sae()
    tok = 10  # CLS + 3 x 3 patches
    x, images = make_data(15, tok, seed=7)
    acc = run(sae, x, images, tok, 1, 8)
    cov = {"top_shifted": [{"latent": j, "freq_id": 0.1, "freq_ood": 0.2, "log10_shift": 0.3} for j in range(24)]}
    out = compare(acc, acc, cov, None, None)
    assert out["patch_grid"] == {"rows": 3, "cols": 3, "n_prefix": 1}
    lat = next(lat for lat in out["latents"] if lat["id"])
    raw = base64.b64decode(lat["id"][0]["patch_map"])
    assert len(raw) == 10 and max(raw) == 255


def test_patch_grid_inference():
    assert patch_grid(64) == {"rows": 8, "cols": 8, "n_prefix": 0}
    assert patch_grid(65) == {"rows": 8, "cols": 8, "n_prefix": 1}
    assert patch_grid(256 + 5) == {"rows": 16, "cols": 16, "n_prefix": 5}  # DINOv2 with 4 registers
    assert patch_grid(1) is None and patch_grid(None) is None
    assert patch_grid(3) is None
    assert patch_grid(50 + 30) == {"rows": 8, "cols": 8, "n_prefix": 16}
    assert patch_grid(99) is None  # 81 + 18: a prefix of 18 is more than any family has


def test_merge_refuses_another_resolution():
    sae = make_sae()
    a = run(sae, *make_data(4, 9, seed=1), 9, 1, 4)
    b = run(sae, *make_data(4, 16, seed=1), 16, 1, 4)
    with pytest.raises(ValueError, match="resolution"):
        a.merge(b)
