"""Building blocks shared by the suites: bounded top-image heaps, streaming moments, summaries.

Everything here is streaming and mergeable, and its memory does not depend on
the number of inputs (except where a docstring says otherwise).
"""

from __future__ import annotations

import torch

from sae_audit.suites.base import ImageCodes


class TopImages:
    """Bounded per-latent heaps: the ``n`` images with the largest activation of each latent.

    Kept as ``[d_sae, n]`` tensors (value, image index, label), so memory is
    ``O(d_sae * n)`` whatever the number of images. Ties are broken by the
    smaller image index, so the result does not depend on batch order or
    sharding.
    """

    def __init__(self, d_sae: int, n: int):
        self.d_sae, self.n = d_sae, n
        self.values = torch.full((d_sae, n), float("-inf"))
        self.images = torch.full((d_sae, n), -1, dtype=torch.long)
        self.labels = torch.full((d_sae, n), -1, dtype=torch.long)

    def _absorb(self, values: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> None:
        # Only latents with a candidate at least as strong as their weakest kept image can change.
        rows = ((values >= self.values[:, -1:]) & (images >= 0)).any(dim=1).nonzero().flatten()
        if rows.numel() == 0:
            return
        v = torch.cat([self.values[rows], values[rows]], dim=1)
        i = torch.cat([self.images[rows], images[rows]], dim=1)
        lab = torch.cat([self.labels[rows], labels[rows]], dim=1)
        # Sort by image index, then (stably) by value descending: ties -> smaller index first.
        o = torch.argsort(torch.where(i < 0, torch.iinfo(torch.long).max, i), dim=1, stable=True)
        v, i, lab = v.gather(1, o), i.gather(1, o), lab.gather(1, o)
        o = torch.argsort(v, dim=1, descending=True, stable=True)[:, : self.n]
        self.values[rows], self.images[rows], self.labels[rows] = v.gather(1, o), i.gather(1, o), lab.gather(1, o)

    def add(self, ic: ImageCodes) -> None:
        """Offer every image of a batch to every latent's heap (only firing images enter)."""
        if not len(ic.images):
            return
        vals = ic.max_acts.T  # [d_sae, B]
        fired = vals > 0
        vals = torch.where(fired, vals, torch.full_like(vals, float("-inf")))
        imgs = torch.where(fired, ic.images[None, :].expand_as(vals), torch.full_like(vals, -1, dtype=torch.long))
        labs = torch.where(fired, ic.labels[None, :].expand_as(vals), torch.full_like(vals, -1, dtype=torch.long))
        self._absorb(vals, imgs, labs)

    def merge(self, other: "TopImages") -> None:
        if (other.d_sae, other.n) != (self.d_sae, self.n):
            raise ValueError("cannot merge heaps of different shapes")
        self._absorb(other.values, other.images, other.labels)

    def count(self) -> torch.Tensor:
        """``[d_sae]`` int64: images held for each latent (< n when it fired on fewer)."""
        return (self.images >= 0).sum(dim=1)


class Moments:
    """Streaming count, mean ``[d]`` and sum of squared deviations of rows (Chan et al. 1979)."""

    def __init__(self, d: int):
        self.n = 0
        self.mean = torch.zeros(d, dtype=torch.float64)
        self.m2 = 0.0

    def add(self, x: torch.Tensor) -> None:
        if x.shape[0] == 0:
            return
        x = x.double()
        mean_b = x.mean(dim=0)
        self._combine(x.shape[0], mean_b, float((x - mean_b).pow(2).sum()))

    def _combine(self, n_b: int, mean_b: torch.Tensor, m2_b: float) -> None:
        n_a = self.n
        if n_a == 0:
            self.n, self.mean, self.m2 = n_b, mean_b.clone(), m2_b
            return
        n = n_a + n_b
        delta = mean_b - self.mean
        self.m2 = self.m2 + m2_b + float(delta.pow(2).sum()) * n_a * n_b / n
        self.mean = self.mean + delta * (n_b / n)
        self.n = n

    def merge(self, other: "Moments") -> None:
        if other.n:
            self._combine(other.n, other.mean, other.m2)


def quantiles(values: torch.Tensor) -> dict:
    """Mean, median and 90th percentile of the finite entries of ``values`` (None when there are none)."""
    v = values.double()
    v = v[torch.isfinite(v)]
    if v.numel() == 0:
        return {"mean": None, "median": None, "p90": None}
    return {
        "mean": float(v.mean()),
        "median": float(v.quantile(0.5)),
        "p90": float(v.quantile(0.9)),
    }


def rounded(values: torch.Tensor, digits: int = 4) -> list:
    """A JSON-ready list: floats rounded to ``digits`` decimals, NaN as ``None``."""
    return [None if v != v else round(v, digits) for v in values.double().tolist()]
