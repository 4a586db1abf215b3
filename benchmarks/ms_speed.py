"""Linear-time monosemanticity score (MS) against the pairwise definition (a benchmark).

MS (Pach et al. 2025, arXiv 2504.02821; SPEC section 4) of latent ``j`` over
``N`` images: ``sum_{n<m} a_nj a_mj cos(e_n, e_m) / sum_{n<m} a_nj a_mj`` with
``a`` the min-max-scaled per-image activations and ``e`` the judge embeddings.

- **linear**: the monosemanticity suite's accumulator
  (:class:`sae_audit.suites.monosemanticity.MonosemanticityAccumulator`), fed
  batches of 64 images as the audit feeds it, then ``scores()``:
  ``O(N * d_sae * d_e)``.
- **pairwise**: the definition over all ``N (N - 1) / 2`` pairs, per latent, with
  the ``N x N`` cosine matrix computed once (float64):
  ``sum_{n<m} a_n a_m C_nm = (a^T C a - sum_n a_n^2 C_nn) / 2``: ``O(N^2)`` per latent.
  At N = 10,000 it is timed on a sample of latents and scaled to all ``d_sae``.
- **pairwise, one matmul**: the same sums for every latent at once as
  ``diag(A^T C A)`` through ``C @ A`` (``O(N^2 * d_sae)``): what a careful
  pairwise implementation does; reported beside it.

Results must agree to 1e-5 (checked on every sampled latent, and on all latents
for the one-matmul form). Per-image activations are synthetic: latent ``j``
fires on an image with a probability drawn log-uniformly in [1e-3, 0.5]
(per-image maxima over 64 patches are denser than per-token codes), values
exponential; judge embeddings Gaussian.

    python benchmarks/ms_speed.py                  # N = 2,000 and 10,000
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import interleaved, load, machine, median, table, write_json  # noqa: E402


def data(n: int, d_sae: int, d_e: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    p = torch.exp(torch.empty(d_sae).uniform_(math.log(1e-3), math.log(0.5), generator=g))
    fires = torch.rand(n, d_sae, generator=g) < p
    acts = torch.where(fires, torch.empty(n, d_sae).exponential_(1.0, generator=g), torch.zeros(()))
    emb = torch.randn(n, d_e, generator=g) + 0.5 * torch.randn(d_e, generator=g)
    return acts.float(), emb.float()


def linear_ms(acts: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    from sae_audit.sae import SparseCodes
    from sae_audit.suites.base import SuiteBatch
    from sae_audit.suites.monosemanticity import MonosemanticityAccumulator

    n, d_sae = acts.shape
    acc = MonosemanticityAccumulator(d_sae, emb.shape[1])
    for s in range(0, n, 64):
        a = acts[s:s + 64]
        width = max(1, int((a > 0).sum(1).max()))
        vals, idx = a.topk(width, dim=1)  # one token per image: its codes are the image's activations
        images = torch.arange(s, s + a.shape[0])
        acc.accumulate(SuiteBatch(x=torch.zeros(a.shape[0], 1), codes=SparseCodes(idx, vals, d_sae),
                                  x_hat=torch.zeros(a.shape[0], 1), image_index=images,
                                  labels=torch.full_like(images, -1), images=images, embeddings=emb[s:s + 64]))
    return acc.scores()


def scaled(acts: torch.Tensor) -> torch.Tensor:
    """Min-max scaling of each latent's per-image activations, as the definition states (float64)."""
    a = acts.double()
    fires_all = (a > 0).all(dim=0)
    lo = torch.where(fires_all, a.min(dim=0).values, torch.zeros(a.shape[1], dtype=torch.float64))
    span = a.max(dim=0).values - lo
    return (a - lo) / torch.where(span > 0, span, torch.ones_like(span))


def cosines(emb: torch.Tensor) -> torch.Tensor:
    e = emb.double()
    e = e / e.norm(dim=1, keepdim=True)
    return e @ e.T


def pairwise_ms(acts: torch.Tensor, emb: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """The definition over all pairs, one latent at a time, for ``latents``."""
    a, C = scaled(acts), cosines(emb)
    diag = C.diagonal()
    out = torch.empty(len(latents), dtype=torch.float64)
    for i, j in enumerate(latents.tolist()):
        w = a[:, j]
        num = (w @ (C @ w) - (w * w * diag).sum()) / 2
        den = (w.sum() ** 2 - (w * w).sum()) / 2
        out[i] = num / den if den > 0 else float("nan")
    return out


def pairwise_matmul_ms(acts: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """The definition's pair sums for every latent at once: ``diag(A^T C A)`` through ``C @ A``."""
    a, C = scaled(acts), cosines(emb)
    num = ((C @ a) * a).sum(dim=0) - (a * a * C.diagonal()[:, None]).sum(dim=0)
    den = a.sum(dim=0) ** 2 - (a * a).sum(dim=0)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.nan)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[2000, 10000])
    ap.add_argument("--d-sae", type=int, default=1536)
    ap.add_argument("--d-e", type=int, default=384)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="ms_speed")
    args = ap.parse_args(argv)
    doc = {"benchmark": "ms_speed", "machine": machine(), "d_sae": args.d_sae, "d_e": args.d_e,
           "load_before": load(), "sizes": []}
    rows = []
    for n in args.n:
        acts, emb = data(n, args.d_sae, args.d_e)
        fired2 = ((acts > 0).sum(0) >= 2).nonzero().flatten()
        n_sample = min(len(fired2), max(4, int(2e9 // (n * n * 8))))
        sample = fired2[torch.randperm(len(fired2), generator=torch.Generator().manual_seed(1))[:n_sample]]
        ms_lin = linear_ms(acts, emb)
        ms_pair = pairwise_ms(acts, emb, sample)
        ms_mm = pairwise_matmul_ms(acts, emb)
        err_pair = float((ms_lin[sample] - ms_pair).abs().max())
        both = torch.isfinite(ms_lin) & torch.isfinite(ms_mm)
        assert torch.equal(torch.isfinite(ms_lin), torch.isfinite(ms_mm))
        err_mm = float((ms_lin[both] - ms_mm[both]).abs().max())
        before = load()
        times = interleaved({"linear": lambda: linear_ms(acts, emb),
                             "pairwise (sample)": lambda: pairwise_ms(acts, emb, sample),
                             "pairwise one matmul": lambda: pairwise_matmul_ms(acts, emb)}, rounds=args.rounds)
        t_lin = median(times["linear"])
        t_pair = median(times["pairwise (sample)"]) / n_sample * args.d_sae
        t_mm = median(times["pairwise one matmul"])
        entry = {"n_images": n, "latents_scored": int(torch.isfinite(ms_lin).sum()),
                 "pairwise_latents_timed": n_sample, "seconds": {k: [round(v, 4) for v in t] for k, t in times.items()},
                 "linear_s": round(t_lin, 4), "pairwise_s_all_latents": round(t_pair, 2),
                 "pairwise_matmul_s": round(t_mm, 3), "max_abs_diff_vs_pairwise": err_pair,
                 "max_abs_diff_vs_pairwise_matmul": err_mm, "equal_to_1e-5": max(err_pair, err_mm) <= 1e-5,
                 "ms_speedup_vs_pairwise": round(t_pair / t_lin, 1),
                 "ms_speedup_vs_pairwise_matmul": round(t_mm / t_lin, 1),
                 "load_before": before, "load_after": load()}
        doc["sizes"].append(entry)
        rows.append([n, round(t_lin, 3), round(t_pair, 1), round(t_mm, 2), entry["ms_speedup_vs_pairwise"],
                     entry["ms_speedup_vs_pairwise_matmul"], f"{max(err_pair, err_mm):.1e}", f"{before[0]:.1f}"])
    doc["load_after"] = load()
    doc["ms_speedup_vs_pairwise"] = doc["sizes"][-1]["ms_speedup_vs_pairwise"]
    doc["tables"] = [table(["N images", "linear s", "pairwise s", "pairwise (matmul) s", "speed-up",
                            "speed-up vs matmul", "max |diff|", "load"], rows,
                           title=f"MS of {args.d_sae} latents, judge width {args.d_e} "
                                 f"(medians of {args.rounds} interleaved rounds; pairwise scaled from a sample)")]
    write_json(args.out, doc)
    return 0 if all(s["equal_to_1e-5"] for s in doc["sizes"]) else 1


if __name__ == "__main__":
    sys.exit(main())
