"""Latent pictures: the top-activating images of the latents that shift most between ID and OOD,
with where in each image the latent fires.

While streaming, every latent keeps a bounded heap of its ``n_top`` most
activating images (per-image maximum over tokens, image index) and, when the
SAE reads more than one token per image (``patch``, ``all``), the latent's
activation on every token of those images, quantised to uint8 relative to the
image's maximum (which is the heap value, so the scale costs nothing). Memory:
``d_sae * n_top * (13 + T)`` bytes per SAE and image set, ``T`` the tokens per
image, whatever the number of images: 0.56 MiB for the demo (1536 latents,
5 images, 64 patches), 65 MiB for a 65,536-latent SAE on a ViT-B/16 at 224 px
(196 patches), where offering a batch of 64 images takes 0.26 s on 2 CPU
cores against 0.05 s without maps (``benchmarks/pictures_maps.py``). Keeping
the maps while streaming avoids running the model again at the end for the
few images shown.

At the end, for each ID/OOD pair, the latents to show are the coverage
suite's most shifted latents and its most frequent OOD-only latents; only
their few top images are decoded again (random access to the image set, no
second pass) and stored as small PNG thumbnails in base64, with the per-patch
map beside each, so reports render from ``results.json`` alone.
"""

from __future__ import annotations

import base64
import io
import math

import torch

from sae_audit.suites.base import SuiteBatch

THUMB_PX = 48
#: Most non-patch tokens (CLS, registers) a token sequence may start with when the patch grid is inferred.
MAX_PREFIX = 16
#: Latents per pair with pictures: the most shifted ones, then the most frequent OOD-only ones.
N_SHIFTED, N_OOD_ONLY = 10, 3
NO_MAP_REASON = "the SAE reads one token per image (cls or mean): no spatial map exists"


class TopImageMaps:
    """Bounded per-latent heaps of the ``n`` most activating images, with per-token maps.

    Attributes:
        values: ``[d_sae, n]`` float32, each kept image's activation (maximum over its tokens), ``-inf`` if empty.
        images: ``[d_sae, n]`` int64 dataset indices (-1 if empty).
        maps: ``[d_sae, n, T]`` uint8, the latent's activation on each token of the kept image as
            ``round(255 * a_t / value)``, or ``None`` while no multi-token batch has been seen.
        has_map: ``[d_sae, n]`` bool, whether the map of an entry is complete (an image that lost
            tokens to non-finite activations has none).
        n_tokens: ``T``, tokens per image (``None`` before the first batch; 1 for ``cls``/``mean``).

    Ties are broken by the smaller image index, so the kept images and maps do
    not depend on batch order or sharding (as :class:`~sae_audit.suites.common.TopImages`).
    """

    def __init__(self, d_sae: int, n: int):
        self.d_sae, self.n = d_sae, n
        self.values = torch.full((d_sae, n), float("-inf"))
        self.images = torch.full((d_sae, n), -1, dtype=torch.long)
        self.has_map = torch.zeros((d_sae, n), dtype=torch.bool)
        self.maps: torch.Tensor | None = None
        self.n_tokens: int | None = None

    def nbytes(self) -> int:
        """Bytes held by the heap's tensors."""
        t = [self.values, self.images, self.has_map] + ([self.maps] if self.maps is not None else [])
        return sum(x.numel() * x.element_size() for x in t)

    def _set_tokens(self, t: int) -> None:
        if self.n_tokens is None:
            self.n_tokens = t
            if t > 1:
                self.maps = torch.zeros((self.d_sae, self.n, t), dtype=torch.uint8)
        elif self.n_tokens != t:
            raise ValueError(f"images with {t} tokens after images with {self.n_tokens}: one resolution per run")

    def _absorb(self, rows: torch.Tensor, values, images, has_map, maps) -> None:
        """Merge candidate entries ``[R, m]`` (maps ``[R, m, T]`` or ``None``) into heap rows ``rows``."""
        v = torch.cat([self.values[rows], values], dim=1)
        i = torch.cat([self.images[rows], images], dim=1)
        h = torch.cat([self.has_map[rows], has_map], dim=1)
        # Sort by image index, then (stably) by value descending: ties -> smaller index first.
        o = torch.argsort(torch.where(i < 0, torch.iinfo(torch.long).max, i), dim=1, stable=True)
        o = o.gather(1, torch.argsort(v.gather(1, o), dim=1, descending=True, stable=True))[:, : self.n]
        self.values[rows], self.images[rows], self.has_map[rows] = v.gather(1, o), i.gather(1, o), h.gather(1, o)
        if self.maps is not None:
            m = torch.cat([self.maps[rows], maps], dim=1)
            self.maps[rows] = m.gather(1, o[:, :, None].expand(-1, -1, m.shape[2]))

    @torch.no_grad()
    def add(self, batch: SuiteBatch) -> None:
        """Offer every image of a batch to every latent's heap, with its per-token map."""
        ic = batch.image_codes
        b = len(ic.images)
        if not b:
            return
        t = (len(batch.codes) + batch.n_nonfinite) // b
        self._set_tokens(t)
        # Candidates: each latent's strongest m images of the batch (ties -> smaller index).
        order = torch.argsort(ic.images, stable=True)
        vals = ic.max_acts.T[:, order]  # [d_sae, B]
        vals = torch.where(vals > 0, vals, torch.full_like(vals, float("-inf")))
        m = min(self.n, b)
        pick = torch.argsort(vals, dim=1, descending=True, stable=True)[:, :m]
        cv = vals.gather(1, pick)
        crow = order[pick]  # [d_sae, m] row of the image in the batch
        ok = (cv > float("-inf")) & (cv >= self.values[:, -1:])
        rows = ok.any(dim=1).nonzero().flatten()
        if rows.numel() == 0:
            return
        cv, crow, ok = cv[rows], crow[rows], ok[rows]
        cimg = torch.where(ok, ic.images[crow], torch.full_like(crow, -1))
        cv = torch.where(ok, cv, torch.full_like(cv, float("-inf")))
        maps = has = None
        if self.maps is not None:
            maps, has = self._token_maps(batch, rows, crow, cv, ok, t)
        else:
            has = torch.zeros_like(ok)
        self._absorb(rows, cv, cimg, has, maps)

    def _token_maps(self, batch: SuiteBatch, rows, crow, cv, ok, t: int):
        """``([R, m, T] uint8 maps, [R, m] complete)`` of the candidate (latent, image) entries."""
        ic = batch.image_codes
        r, m = crow.shape
        maps = torch.zeros((r, m, t), dtype=torch.uint8)
        complete = ic.n_tokens[crow] == t
        flat_ok = ok.flatten()
        if not flat_ok.any():
            return maps, ok & complete
        # Key (latent, batch row) of each candidate, sorted, to find the candidate of every token's code.
        lat = rows[:, None].expand(r, m).flatten()[flat_ok]
        keys = lat * len(ic.images) + crow.flatten()[flat_ok]
        slot = flat_ok.nonzero().flatten()
        korder = torch.argsort(keys)
        keys, slot = keys[korder], slot[korder]
        codes = batch.codes
        n = len(codes)
        row = ic.row
        first = torch.full((len(ic.images),), n, dtype=torch.long).scatter_reduce(
            0, row, torch.arange(n), reduce="amin")
        pos = torch.arange(n) - first[row]  # the token's position within its image
        tok_keys = codes.indices.cpu().long() * len(ic.images) + row[:, None]
        at = torch.searchsorted(keys, tok_keys.flatten()).clamp(max=len(keys) - 1)
        hit = (keys[at] == tok_keys.flatten()) & (codes.values.detach().cpu().flatten() > 0)
        if hit.any():
            s = slot[at[hit]]
            scale = cv.flatten()[s].clamp_min(1e-30)
            q = (codes.values.detach().cpu().float().flatten()[hit] / scale * 255).round().clamp(0, 255)
            p = pos[:, None].expand(n, codes.k).flatten()[hit]
            maps.view(r * m, t)[s, p.clamp(max=t - 1)] = q.to(torch.uint8)
        return maps, ok & complete

    def merge(self, other: "TopImageMaps") -> None:
        if (other.d_sae, other.n) != (self.d_sae, self.n):
            raise ValueError("cannot merge heaps of different shapes")
        if other.n_tokens is None:
            return
        self._set_tokens(other.n_tokens)
        rows = ((other.values >= self.values[:, -1:]) & (other.images >= 0)).any(dim=1).nonzero().flatten()
        if rows.numel():
            self._absorb(rows, other.values[rows], other.images[rows], other.has_map[rows],
                         other.maps[rows] if other.maps is not None else None)

    def count(self) -> torch.Tensor:
        """``[d_sae]`` int64: images held for each latent (< n when it fired on fewer)."""
        return (self.images >= 0).sum(dim=1)


class PicturesAccumulator:
    """Top-``n_top`` images of every latent with its per-token maps; memory ``O(d_sae * n_top * T)``."""

    def __init__(self, d_sae: int, n_top: int = 5):
        self.d_sae, self.n_top = d_sae, n_top
        self.heap = TopImageMaps(d_sae, n_top)

    @torch.no_grad()
    def accumulate(self, batch: SuiteBatch) -> None:
        self.heap.add(batch)

    def merge(self, other: "PicturesAccumulator") -> None:
        self.heap.merge(other.heap)

    def top(self, latent: int) -> list[tuple[int, float]]:
        """``[(image index, activation)]`` of ``latent``'s top images, strongest first."""
        keep = self.heap.images[latent] >= 0
        return list(zip(self.heap.images[latent][keep].tolist(), self.heap.values[latent][keep].tolist()))

    def token_map(self, latent: int, rank: int) -> bytes | None:
        """The uint8 per-token map of ``latent``'s ``rank``-th top image (``T`` bytes), or ``None``."""
        h = self.heap
        if h.maps is None or not bool(h.has_map[latent, rank]):
            return None
        return bytes(h.maps[latent, rank].numpy().tobytes())

    def finish(self) -> dict:
        out = {"n_top": self.n_top, "n_latents_with_images": int((self.heap.count() > 0).sum())}
        if self.heap.n_tokens is not None:
            out["tokens_per_image"] = self.heap.n_tokens
        return out


def patch_grid(n_tokens: int | None) -> dict | None:
    """The patch grid of ``n_tokens`` tokens per image: ``{"rows", "cols", "n_prefix"}`` or ``None``.

    The grid is the largest square ``g x g`` (``g >= 2``) such that the
    ``n_prefix = n_tokens - g * g`` leading tokens (CLS, registers) number at
    most :data:`MAX_PREFIX` (the token layout ``[CLS?] [registers] [patches]``
    of every supported family at a square input). ``None`` for one token (cls,
    mean) or a count no square grid explains.
    """
    if not n_tokens or n_tokens < 4:
        return None
    for prefix in range(0, min(MAX_PREFIX, n_tokens - 4) + 1):
        g = math.isqrt(n_tokens - prefix)
        if g >= 2 and g * g == n_tokens - prefix:
            return {"rows": g, "cols": g, "n_prefix": prefix}
    return None


def thumbnail(image, px: int = THUMB_PX) -> str:
    """The central square of a PIL image (what a shortest-edge resize and centre crop keeps), as a base64
    PNG of at most ``px`` x ``px`` pixels (a smaller image is kept at its size, never upsampled)."""
    im = image.convert("RGB")
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.crop((left, top, left + side, top + side))
    if side > px:
        im = im.resize((px, px), _lanczos())
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _lanczos():
    from PIL import Image

    return Image.Resampling.LANCZOS


def compare(id_acc: PicturesAccumulator, ood_acc: PicturesAccumulator, coverage_pair: dict, id_set, ood_set,
            n_shifted: int = N_SHIFTED, n_ood_only: int = N_OOD_ONLY) -> dict:
    """Thumbnails and per-patch maps of the top images on both sets for the most shifted and top OOD-only latents.

    Args:
        coverage_pair: the coverage suite's pair dict (``top_shifted``, ``top_ood_only``).
        id_set, ood_set: the :class:`~sae_audit.data.ImageSet` s the accumulators saw (random access
            by dataset index; ``None`` stores no thumbnails, indices only).
    Returns:
        ``{"thumbnail_px", "patch_grid": {"rows", "cols", "n_prefix"} | None, "no_map_reason"?,
        "latents": [{"latent", "why", "freq_id", "freq_ood", "log10_shift",
        "id": [{"image", "item", "activation", "png", "patch_map"?}], "ood": [...]}]}``.
        ``png`` is the image's central square (base64 PNG, ``None`` when it could not be read
        again); ``patch_map`` is base64 of ``n_prefix + rows * cols`` uint8 values, token ``t``'s
        activation being ``patch_map[t] / 255 * activation`` (absent when the image has no map).
    """
    chosen: list[tuple[dict, str]] = []
    seen = set()
    for key, why, limit in (("top_shifted", "shifted", n_shifted), ("top_ood_only", "OOD-only", n_ood_only)):
        for row in coverage_pair.get(key, [])[:limit]:
            if row["latent"] not in seen:
                seen.add(row["latent"])
                chosen.append((row, why))

    tokens = id_acc.heap.n_tokens or ood_acc.heap.n_tokens
    grid = patch_grid(tokens)
    cache: dict[tuple[int, int], str | None] = {}

    def pictures(acc: PicturesAccumulator, image_set, which: int, latent: int) -> list[dict]:
        items = []
        for rank, (index, value) in enumerate(acc.top(latent)):
            png = None
            if image_set is not None:
                if (which, index) not in cache:
                    try:
                        cache[(which, index)] = thumbnail(image_set.load(index))
                    except Exception:  # an image that became unreadable: show the index only
                        cache[(which, index)] = None
                png = cache[(which, index)]
            pic = {"image": index, "item": _item_id(image_set, index), "activation": round(value, 4), "png": png}
            tmap = acc.token_map(latent, rank) if grid is not None else None
            if tmap is not None:
                pic["patch_map"] = base64.b64encode(tmap).decode("ascii")
            items.append(pic)
        return items

    latents = []
    for row, why in chosen:
        j = row["latent"]
        latents.append({
            "latent": j, "why": why, "freq_id": row["freq_id"], "freq_ood": row["freq_ood"],
            "log10_shift": row["log10_shift"],
            "id": pictures(id_acc, id_set, 0, j), "ood": pictures(ood_acc, ood_set, 1, j),
        })
    out = {"thumbnail_px": THUMB_PX, "patch_grid": grid, "latents": latents}
    if grid is None:
        out["no_map_reason"] = (NO_MAP_REASON if (tokens or 1) <= 1 else
                                f"{tokens} tokens per image fit no square patch grid: no spatial map")
    return out


def _item_id(image_set, index: int) -> str:
    try:
        return str(image_set.item_id(index)) if image_set is not None else str(index)
    except Exception:
        return str(index)
