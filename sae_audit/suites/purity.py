"""Class purity of each latent's top-activating images (SPEC section 4).

Purity of latent ``j``: among the (up to) ``n_top`` images on which it fires
most strongly (per-image maximum over tokens), the share that belong to its
most common class. Reported per latent and as mean / median / p90 over the
latents that fire on at least one labelled image. Streaming with one bounded
heap per latent (:class:`~sae_audit.suites.common.TopImages`).

Intervals (SPEC section 5): a bootstrap replicate is the image set with image
``n`` repeated ``w_nr`` times, so its top-``n_top`` list walks down the images
in activation order counting each with its weight until ``n_top`` are taken.
The heap keeps ``4 * n_top`` images per latent, so the walk never runs out
unless the first ``4 * n_top`` weights sum to less than ``n_top``
(probability below 1e-14 for ``n_top = 16``) while the latent fired on more
images than the heap holds. Weights are regenerated from the image ids.
"""

from __future__ import annotations

import torch

from sae_audit.suites.base import ImageCodes, SuiteBatch
from sae_audit.suites.common import TopImages, check_same_bootstrap, interval_dict, quantiles, rounded

#: Heap depth per latent, in multiples of ``n_top``, when intervals are computed.
DEPTH = 4


class PurityAccumulator:
    """Top-``n_top`` labelled images per latent (``DEPTH * n_top`` with replicates); memory ``O(d_sae * n_top)``."""

    def __init__(self, d_sae: int, n_top: int = 16, replicates: bool = True):
        self.d_sae, self.n_top = d_sae, n_top
        self.heap = TopImages(d_sae, n_top * (DEPTH if replicates else 1))
        self.n_images = 0
        self.n_labelled = 0
        self.bootstrap = None

    @torch.no_grad()
    def accumulate(self, batch: SuiteBatch) -> None:
        ic = batch.image_codes
        if batch.bootstrap is not None:
            check_same_bootstrap(self.bootstrap, batch.bootstrap)
            self.bootstrap = batch.bootstrap
        self.n_images += len(ic.images)
        keep = ic.labels >= 0
        self.n_labelled += int(keep.sum())
        if keep.any():
            self.heap.add(ImageCodes(ic.images[keep], ic.labels[keep], ic.max_acts[keep], ic.n_tokens[keep], ic.row))

    def merge(self, other: "PurityAccumulator") -> None:
        check_same_bootstrap(self.bootstrap, other.bootstrap)
        self.bootstrap = self.bootstrap or other.bootstrap
        self.heap.merge(other.heap)
        self.n_images += other.n_images
        self.n_labelled += other.n_labelled

    def purities(self) -> torch.Tensor:
        """``[d_sae]`` float64 purity (NaN for latents with no labelled image)."""
        labels = self.heap.labels[:, : self.n_top]
        n_cls = int(labels.max()) + 1 if labels.numel() and labels.max() >= 0 else 0
        counts = torch.zeros(self.d_sae, max(n_cls, 1), dtype=torch.long)
        valid = labels >= 0
        counts.scatter_add_(1, labels.clamp_min(0), valid.long())
        held = valid.sum(dim=1)
        top = counts.max(dim=1).values
        return torch.where(held > 0, top.double() / held.clamp_min(1).double(), torch.full((self.d_sae,), float("nan"),
                                                                                          dtype=torch.float64))

    def replicate_purities(self, chunk: int = 16) -> torch.Tensor | None:
        """``[R, d_sae]`` float64 purity on every bootstrap replicate (``None`` without a bootstrap)."""
        if self.bootstrap is None:
            return None
        images, labels = self.heap.images, self.heap.labels
        valid = (images >= 0) & (labels >= 0)
        n_cls = int(labels.max()) + 1 if labels.numel() and labels.max() >= 0 else 1
        uniq, inv = torch.unique(images[valid], return_inverse=True)
        w_img = self.bootstrap.weights(uniq)  # [R, U]
        r = w_img.shape[0]
        lab = labels.clamp_min(0)
        out = torch.empty(r, self.d_sae, dtype=torch.float64)
        for start in range(0, r, chunk):
            wc = w_img[start:start + chunk]
            w = torch.zeros(wc.shape[0], *images.shape, dtype=torch.float64)
            w[:, valid] = wc[:, inv]
            before = torch.cumsum(w, dim=2) - w
            take = torch.minimum(w, (self.n_top - before).clamp_min(0.0))  # copies of each image in the top n_top
            counts = torch.zeros(wc.shape[0], self.d_sae, n_cls, dtype=torch.float64)
            counts.scatter_add_(2, lab[None].expand_as(take), take)
            total = take.sum(dim=2)
            out[start:start + chunk] = torch.where(total > 0, counts.max(dim=2).values / total.clamp_min(1e-300),
                                                   torch.full_like(total, float("nan")))
        return out

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
        reps = self.replicate_purities()
        if reps is not None:
            out["intervals"] = interval_dict(_summaries(reps))
        if out["n_scored"] == 0:
            out["reason"] = "no latent fires on a labelled image"
        return out


def _summaries(p: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"purity_mean", "purity_median", "purity_p90": [R]}`` over the finite latents of each row of ``p``."""
    finite = torch.isfinite(p)
    cnt = finite.sum(dim=1)
    mean = torch.where(cnt > 0, torch.where(finite, p, 0.0).sum(dim=1) / cnt.clamp_min(1),
                       torch.full((p.shape[0],), float("nan"), dtype=torch.float64))
    return {"purity_mean": mean, "purity_median": torch.nanquantile(p, 0.5, dim=1),
            "purity_p90": torch.nanquantile(p, 0.9, dim=1)}
