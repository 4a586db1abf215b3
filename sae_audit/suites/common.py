"""Building blocks shared by the suites: per-image pooling, bounded top-image heaps, moments.

Everything here is streaming and mergeable, and its memory does not depend on
the number of inputs (except where a docstring says otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sae_audit.suites.base import SuiteBatch


@dataclass(frozen=True)
class ImageCodes:
    """Per-image view of one :class:`SuiteBatch`.

    Attributes:
        images: ``[B]`` int64 dataset indices of the images.
        labels: ``[B]`` int64 classes (-1 unlabeled).
        max_acts: ``[B, d_sae]`` float32, each latent's maximum activation over
            the image's (finite) tokens; 0 where it never fires. Dense over one
            *batch* only, never over the dataset.
        n_tokens: ``[B]`` int64 finite tokens per image.
        row: ``[N]`` int64, the row of ``images`` each token of the batch belongs to.
    """

    images: torch.Tensor
    labels: torch.Tensor
    max_acts: torch.Tensor
    n_tokens: torch.Tensor
    row: torch.Tensor


_LAST: list = [None, None]  # (batch, ImageCodes) of the last call: every suite pools the same batch


def image_codes(batch: SuiteBatch) -> ImageCodes:
    """Pool a batch's token codes per image (max over tokens, per latent); cached for the last batch."""
    if _LAST[0] is batch:
        return _LAST[1]
    out = _image_codes(batch)
    _LAST[0], _LAST[1] = batch, out
    return out


def _image_codes(batch: SuiteBatch) -> ImageCodes:
    codes = batch.codes
    if batch.images is not None:
        images = batch.images.long()
        labels = batch.image_labels.long() if batch.image_labels is not None else torch.full_like(images, -1)
        # Map each token's image index to its row in ``images``.
        order = torch.argsort(images)
        pos = torch.searchsorted(images[order], batch.image_index.long())
        row = order[pos.clamp(max=max(len(images) - 1, 0))] if len(images) else pos
    else:
        images, row = torch.unique(batch.image_index.long(), return_inverse=True)
        labels = torch.full_like(images, -1)
        if len(images):
            labels[row] = batch.labels.long()
    b, d_sae = len(images), codes.d_sae
    flat = torch.zeros(b * d_sae, dtype=torch.float32)
    if len(codes):
        keys = (row[:, None] * d_sae + codes.indices.cpu()).flatten()
        flat.scatter_reduce_(0, keys, codes.values.detach().cpu().float().flatten().clamp_min(0), reduce="amax")
    n_tokens = torch.bincount(row, minlength=b) if len(codes) else torch.zeros(b, dtype=torch.long)
    return ImageCodes(images, labels, flat.view(b, d_sae), n_tokens, row)


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
