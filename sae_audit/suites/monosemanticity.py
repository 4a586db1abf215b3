"""Monosemanticity suite: the MS of every latent (Pach et al. 2025, arXiv 2504.02821).

Per image, a latent's activation is its maximum over the image's tokens. The
score min-max scales those activations over the dataset and weighs pairs of
images by how similar their judge embeddings are (SPEC section 4). One pass,
no dense ``[N, d_sae]`` matrix: with ``r_n`` the raw activation, ``lo`` its
minimum and ``s = max - lo``, ``a_n = (r_n - lo) / s``, so

    u = (sum r - N lo) / s,   v = (sum r^2 - 2 lo sum r + N lo^2) / s^2,
    w = (sum r e - lo sum e) / s

and the accumulator keeps ``sum r``, ``sum r^2`` ``[d_sae]``, ``sum r e``
``[d_sae, d_e]``, ``sum e`` ``[d_e]`` and the per-latent extremes: memory
``O(d_sae * d_e)``, mergeable exactly. ``lo`` is 0 unless the latent fires on
every image (then it is the smallest per-image maximum).
"""

from __future__ import annotations

import torch

from sae_audit import metrics
from sae_audit.errors import SaeAuditError
from sae_audit.suites.base import SuiteBatch
from sae_audit.suites.common import quantiles, rounded


class MonosemanticityAccumulator:
    """Streaming MS of ``d_sae`` latents against judge embeddings of width ``d_e``.

    Args:
        d_sae: number of latents.
        d_e: width of the judge embeddings (``batch.embeddings`` must be ``[B, d_e]``).
        judge: name of the judge model, recorded in the results.
    """

    def __init__(self, d_sae: int, d_e: int, judge: str = ""):
        self.d_sae, self.d_e, self.judge = d_sae, d_e, judge
        self.n = 0
        self.n_nonfinite = 0
        self.n_fired = torch.zeros(d_sae, dtype=torch.long)
        self.min_pos = torch.full((d_sae,), float("inf"), dtype=torch.float64)
        self.max = torch.zeros(d_sae, dtype=torch.float64)
        self.s1 = torch.zeros(d_sae, dtype=torch.float64)
        self.s2 = torch.zeros(d_sae, dtype=torch.float64)
        self.sre = torch.zeros(d_sae, d_e, dtype=torch.float64)
        self.se = torch.zeros(d_e, dtype=torch.float64)

    @torch.no_grad()
    def accumulate(self, batch: SuiteBatch) -> None:
        """Raises :class:`SaeAuditError` when the batch carries no embeddings or embeddings of another width."""
        if batch.embeddings is None:
            raise SaeAuditError("the monosemanticity suite needs judge embeddings in every batch")
        ic = batch.image_codes
        emb = batch.embeddings.detach().cpu().double()
        if emb.ndim != 2 or emb.shape[1] != self.d_e:
            raise SaeAuditError(
                f"judge embeddings have width {emb.shape[-1]} but this monosemanticity accumulator was built "
                f"for width {self.d_e}; use the same judge model for every part of the data"
            )
        if emb.shape[0] != len(ic.images):
            raise SaeAuditError(f"{emb.shape[0]} judge embeddings for {len(ic.images)} images in one batch")
        ok = torch.isfinite(emb).all(dim=1) & (emb.norm(dim=1) > 0)
        self.n_nonfinite += int((~ok).sum())
        r = ic.max_acts[ok].double()
        e = emb[ok]
        e = e / e.norm(dim=1, keepdim=True)
        if r.shape[0] == 0:
            return
        self.n += r.shape[0]
        fired = r > 0
        self.n_fired += fired.sum(dim=0)
        self.min_pos = torch.minimum(self.min_pos, torch.where(fired, r, torch.inf).min(dim=0).values)
        self.max = torch.maximum(self.max, r.max(dim=0).values)
        self.s1 += r.sum(dim=0)
        self.s2 += r.pow(2).sum(dim=0)
        self.sre += r.T @ e
        self.se += e.sum(dim=0)

    def merge(self, other: "MonosemanticityAccumulator") -> None:
        if (other.d_sae, other.d_e) != (self.d_sae, self.d_e):
            raise SaeAuditError(
                f"cannot merge monosemanticity accumulators of widths (d_sae, d_e) {(other.d_sae, other.d_e)} "
                f"and {(self.d_sae, self.d_e)}: the judge or the SAE differs"
            )
        self.n += other.n
        self.n_nonfinite += other.n_nonfinite
        self.n_fired += other.n_fired
        self.min_pos = torch.minimum(self.min_pos, other.min_pos)
        self.max = torch.maximum(self.max, other.max)
        self.s1 += other.s1
        self.s2 += other.s2
        self.sre += other.sre
        self.se += other.se

    def scores(self) -> torch.Tensor:
        """``[d_sae]`` float64 MS per latent (NaN: fires on fewer than two images, or constant)."""
        n = self.n
        lo = torch.where(self.n_fired == n, self.min_pos, torch.zeros_like(self.max)) if n else self.max * 0
        span = self.max - lo
        ok = span > 0
        s = torch.where(ok, span, torch.ones_like(span))
        u = (self.s1 - n * lo) / s
        v = (self.s2 - 2 * lo * self.s1 + n * lo.pow(2)) / s.pow(2)
        w = (self.sre - lo[:, None] * self.se[None, :]) / s[:, None]
        ms = metrics.monosemanticity_from_sums(u, v, w.pow(2).sum(dim=1))
        return torch.where(ok, ms, torch.full_like(ms, float("nan")))

    def finish(self) -> dict:
        ms = self.scores()
        alive = torch.isfinite(ms)
        n_alive = int(alive.sum())
        out = {
            "judge": self.judge,
            "d_e": self.d_e,
            "n_images": self.n,
            "n_nonfinite_embeddings": self.n_nonfinite,
            "n_scored": n_alive,
            "n_unscored": self.d_sae - n_alive,
            **{f"ms_{k}": v for k, v in quantiles(ms).items()},
            "per_latent": rounded(ms),
        }
        if n_alive == 0:
            out["reason"] = (
                "MS needs at least two images" if self.n < 2 else "no latent fires on two or more images"
            )
        return out
