"""Latent pictures: the top-activating images of the latents that shift most between ID and OOD.

While streaming, every latent keeps a bounded heap of its ``n_top`` most
activating images (per-image maximum over tokens; value and dataset index
only: ``O(d_sae * n_top)`` memory). At the end, for each ID/OOD pair, the
latents to show are the coverage suite's most shifted latents and its most
frequent OOD-only latents; only their few top images are decoded again, by
random access to the image set (no second pass), and stored as small PNG
thumbnails in base64, so reports render from ``results.json`` alone.
"""

from __future__ import annotations

import base64
import io

import torch

from sae_audit.suites.base import SuiteBatch
from sae_audit.suites.common import TopImages

THUMB_PX = 48


class PicturesAccumulator:
    """Top-``n_top`` images of every latent; memory ``O(d_sae * n_top)``."""

    def __init__(self, d_sae: int, n_top: int = 5):
        self.d_sae, self.n_top = d_sae, n_top
        self.heap = TopImages(d_sae, n_top)

    @torch.no_grad()
    def accumulate(self, batch: SuiteBatch) -> None:
        self.heap.add(batch.image_codes)

    def merge(self, other: "PicturesAccumulator") -> None:
        self.heap.merge(other.heap)

    def top(self, latent: int) -> list[tuple[int, float]]:
        """``[(image index, activation)]`` of ``latent``'s top images, strongest first."""
        keep = self.heap.images[latent] >= 0
        return list(zip(self.heap.images[latent][keep].tolist(), self.heap.values[latent][keep].tolist()))

    def finish(self) -> dict:
        return {"n_top": self.n_top, "n_latents_with_images": int((self.heap.count() > 0).sum())}


def thumbnail(image, px: int = THUMB_PX) -> str:
    """A PIL image as a base64 PNG string of at most ``px`` x ``px`` pixels (aspect kept)."""
    im = image.convert("RGB")
    im.thumbnail((px, px))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def compare(id_acc: PicturesAccumulator, ood_acc: PicturesAccumulator, coverage_pair: dict, id_set, ood_set,
            n_shifted: int = 5, n_ood_only: int = 3) -> dict:
    """Thumbnails of the top images on both sets for the most shifted and top OOD-only latents.

    Args:
        coverage_pair: the coverage suite's pair dict (``top_shifted``, ``top_ood_only``).
        id_set, ood_set: the :class:`~sae_audit.data.ImageSet` s the accumulators saw (random access
            by dataset index; ``None`` stores no thumbnails, indices only).
    Returns:
        ``{"latents": [{"latent", "why", "freq_id", "freq_ood", "log10_shift",
        "id": [{"image", "activation", "png"}], "ood": [...]}]}``.
    """
    chosen: list[tuple[dict, str]] = []
    seen = set()
    for key, why, limit in (("top_shifted", "shifted", n_shifted), ("top_ood_only", "OOD-only", n_ood_only)):
        for row in coverage_pair.get(key, [])[:limit]:
            if row["latent"] not in seen:
                seen.add(row["latent"])
                chosen.append((row, why))

    cache: dict[tuple[int, int], str | None] = {}

    def pictures(acc: PicturesAccumulator, image_set, which: int, latent: int) -> list[dict]:
        items = []
        for index, value in acc.top(latent):
            png = None
            if image_set is not None:
                if (which, index) not in cache:
                    try:
                        cache[(which, index)] = thumbnail(image_set.load(index))
                    except Exception:  # an image that became unreadable: show the index only
                        cache[(which, index)] = None
                png = cache[(which, index)]
            items.append({"image": index, "item": _item_id(image_set, index), "activation": round(value, 4),
                          "png": png})
        return items

    latents = []
    for row, why in chosen:
        j = row["latent"]
        latents.append({
            "latent": j, "why": why, "freq_id": row["freq_id"], "freq_ood": row["freq_ood"],
            "log10_shift": row["log10_shift"],
            "id": pictures(id_acc, id_set, 0, j), "ood": pictures(ood_acc, ood_set, 1, j),
        })
    return {"thumbnail_px": THUMB_PX, "latents": latents}


def _item_id(image_set, index: int) -> str:
    try:
        return str(image_set.item_id(index)) if image_set is not None else str(index)
    except Exception:
        return str(index)
