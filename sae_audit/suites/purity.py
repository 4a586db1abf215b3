"""Class purity of each latent's top-activating images (SPEC section 4).

Purity of latent ``j``: among the (up to) ``n_top`` images on which it fires
most strongly (per-image maximum over tokens), the share that belong to its
most common class. Reported per latent and as mean / median / p90 over the
latents that fire on at least one labelled image. Streaming with one bounded
heap per latent (:class:`~sae_audit.suites.common.TopImages`).
"""

from __future__ import annotations

import torch

from sae_audit.suites.base import ImageCodes, SuiteBatch
from sae_audit.suites.common import TopImages, quantiles, rounded


class PurityAccumulator:
    """Top-``n_top`` labelled images per latent; memory ``O(d_sae * n_top)``."""

    def __init__(self, d_sae: int, n_top: int = 16):
        self.d_sae, self.n_top = d_sae, n_top
        self.heap = TopImages(d_sae, n_top)
        self.n_images = 0
        self.n_labelled = 0

    @torch.no_grad()
    def accumulate(self, batch: SuiteBatch) -> None:
        ic = batch.image_codes
        self.n_images += len(ic.images)
        keep = ic.labels >= 0
        self.n_labelled += int(keep.sum())
        if keep.any():
            self.heap.add(ImageCodes(ic.images[keep], ic.labels[keep], ic.max_acts[keep], ic.n_tokens[keep], ic.row))

    def merge(self, other: "PurityAccumulator") -> None:
        self.heap.merge(other.heap)
        self.n_images += other.n_images
        self.n_labelled += other.n_labelled

    def purities(self) -> torch.Tensor:
        """``[d_sae]`` float64 purity (NaN for latents with no labelled image)."""
        labels = self.heap.labels
        n_cls = int(labels.max()) + 1 if labels.numel() and labels.max() >= 0 else 0
        counts = torch.zeros(self.d_sae, max(n_cls, 1), dtype=torch.long)
        valid = labels >= 0
        counts.scatter_add_(1, labels.clamp_min(0), valid.long())
        held = valid.sum(dim=1)
        top = counts.max(dim=1).values
        return torch.where(held > 0, top.double() / held.clamp_min(1).double(), torch.full((self.d_sae,), float("nan"),
                                                                                          dtype=torch.float64))

    def finish(self) -> dict:
        if self.n_labelled == 0:
            return {"skipped": "the image set has no labels", "n_images": self.n_images}
        p = self.purities()
        out = {
            "n_images": self.n_images,
            "n_labelled": self.n_labelled,
            "n_top": self.n_top,
            "n_scored": int(torch.isfinite(p).sum()),
            **{f"purity_{k}": v for k, v in quantiles(p).items()},
            "per_latent": rounded(p),
        }
        if out["n_scored"] == 0:
            out["reason"] = "no latent fires on a labelled image"
        return out
