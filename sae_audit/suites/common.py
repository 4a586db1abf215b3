"""Building blocks shared by the suites: bounded top-image heaps, streaming moments, summaries.

Everything here is streaming and mergeable, and its memory does not depend on
the number of inputs (except where a docstring says otherwise).
"""

from __future__ import annotations

import torch

from sae_audit.suites.base import ImageCodes, replicate_batch_moments


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


class ReplicateMoments:
    """Count, mean ``[R, d]`` and sum of squared deviations ``[R]`` of rows on ``R`` bootstrap replicates.

    Each row's weight in replicate ``r`` is its image's Poisson weight ``w[r, image]``
    (:mod:`sae_audit.suites.bootstrap`). Per batch the rows are centred on the
    batch's own mean (so no large offset cancels), summed per image, weighted with
    one ``[R, B] @ [B, d]`` product, and combined across batches and merges with
    Chan et al.'s parallel update, replicate by replicate (vectorised over ``R``).
    Memory ``O(R * d)``.
    """

    def __init__(self, replicates: int, d: int):
        self.n = torch.zeros(replicates, dtype=torch.float64)
        self.mean = torch.zeros(replicates, d, dtype=torch.float64)
        self.m2 = torch.zeros(replicates, dtype=torch.float64)

    def add(self, w: torch.Tensor, x: torch.Tensor, row: torch.Tensor, n_images: int) -> None:
        """Add rows ``x [N, d]`` whose images are ``row [N]`` (rows of ``w [R, n_images]``)."""
        if x.shape[0] == 0:
            return
        x = x.double()
        c = x.mean(dim=0)
        xc = x - c
        self.add_centred(w, c, xc, xc.pow(2).sum(dim=1), row, n_images)

    def add_centred(self, w: torch.Tensor, c: torch.Tensor, xc: torch.Tensor, sq_rows: torch.Tensor,
                    row: torch.Tensor, n_images: int) -> None:
        """:meth:`add` given the batch mean ``c [d]``, the centred rows ``xc [N, d]`` and ``||xc||^2 [N]``
        (float64), so a caller that has them does not compute them twice."""
        self._combine(*replicate_batch_moments(w, c, xc, sq_rows, row, n_images))

    def _combine(self, n_b: torch.Tensor, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        """Add one batch's replicate moments ``(n [R], mean [R, d], m2 [R])`` (as :func:`replicate_batch_moments`)."""
        n = self.n + n_b
        safe = torch.where(n > 0, n, torch.ones_like(n))
        delta = mean_b - self.mean
        has_b = (n_b > 0)[:, None]
        self.m2 = torch.where(n_b > 0, self.m2 + m2_b + delta.pow(2).sum(dim=1) * self.n * n_b / safe, self.m2)
        self.mean = torch.where(has_b, self.mean + delta * (n_b / safe)[:, None], self.mean)
        self.n = n

    def merge(self, other: "ReplicateMoments") -> None:
        if other.mean.shape != self.mean.shape:
            raise ValueError("cannot merge replicate moments of different shapes (another `bootstrap` R?)")
        self._combine(other.n, other.mean, other.m2)


def per_image_sums(values: torch.Tensor, row: torch.Tensor, n_images: int) -> torch.Tensor:
    """``[n_images, ...]`` float64 sums of ``values [N, ...]`` over the rows of each image (``row [N]``)."""
    out = torch.zeros((n_images, *values.shape[1:]), dtype=torch.float64)
    return out.index_add_(0, row, values.double()) if values.shape[0] else out


def check_same_bootstrap(a, b) -> None:
    """Raise ``ValueError`` when two accumulators saw different bootstraps (R, seed or image set)."""
    if a is not None and b is not None and a != b:
        raise ValueError(f"cannot merge accumulators built with different bootstraps ({a} vs {b})")


def interval_dict(replicates: dict) -> dict:
    """``{metric: [low, high] | None}`` (or a list of those for vector metrics) from ``{metric: [R] or [R, m]}``."""
    from sae_audit.metrics import percentile_interval

    out = {}
    for key, reps in replicates.items():
        iv = percentile_interval(reps)
        if isinstance(iv, list):
            out[key] = [list(v) if v is not None else None for v in iv]
        else:
            out[key] = list(iv) if iv is not None else None
    return out
