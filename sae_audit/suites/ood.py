"""OOD detection from SAE signals: per-image scores and their AUROC per ID/OOD pair (SPEC section 4).

Per image (its finite tokens ``t``):

- ``fvu``: ``sum_t ||x_t - x_hat_t||^2 / (n_t * var_ID)``, the image's share of
  unexplained variance with the ID set's total variance per input
  ``var_ID = sum ||x - mean_ID(x)||^2 / N_ID`` as the common scale (one
  constant per pair, so the AUROC is that of the mean squared error);
- ``l0`` and ``effective_units``: means over the image's tokens;
- ``rarity``: mean over the image's firing (token, latent) entries of
  ``-log10(f_j + 1/T)``, the rarity of latent ``j`` under the ID
  firing-frequency profile ``f_j = c_j / T`` (``c_j`` tokens of the ID set on
  which ``j`` fires, ``T`` ID tokens). No image is scored against frequencies
  that include its own firings (SPEC section 5): an OOD image uses the ID
  counts, an ID image its *leave-one-out* counts ``f_j = (c_j - c_nj) / (T - t_n)``
  (and ``1 / (T - t_n)``), where ``c_nj`` and ``t_n`` are its own. In-sample
  frequencies would make the ID images' own rare latents look common and bias
  the AUROC above 0.5 on two halves of one distribution.

AUROC (OOD as the positive class; 0.5 = chance, below 0.5 = the score is
*lower* out of distribution) is the Mann-Whitney statistic of
:func:`sae_audit.metrics.auroc`. With bootstrap weights, each replicate's
AUROC weighs every image by its Poisson weight
(:func:`sae_audit.metrics.weighted_auroc`); the weights are regenerated from
the image ids (:mod:`sae_audit.suites.bootstrap`), so nothing per replicate is
stored.

Memory: a few floats per image plus each image's distinct firing latents with
their token counts (2 + 2 bytes each; 4 for counts above 32,767 tokens),
i.e. at most a third of the sparse codes' size (int64 index + float32 value
per token and latent).
"""

from __future__ import annotations

import torch

from sae_audit import metrics
from sae_audit.metrics import nan_to_none
from sae_audit.suites.base import SuiteBatch
from sae_audit.suites.common import Moments, check_same_bootstrap, interval_dict

SCORES = ("fvu", "l0", "effective_units", "rarity")


class OODAccumulator:
    """Per-image reconstruction error, L0, effective units and firing latents of one set."""

    def __init__(self, d_sae: int, d_in: int):
        self.d_sae = d_sae
        self.moments = Moments(d_in)
        self.fire_counts = torch.zeros(d_sae, dtype=torch.long)
        self.chunks: list[dict] = []
        self.bootstrap = None
        # 2 bytes per stored (image, latent) pair for dictionaries of up to 32,767 latents.
        self._latent_dtype = torch.int16 if d_sae <= 32767 else torch.int32

    @torch.no_grad()
    def accumulate(self, batch: SuiteBatch) -> None:
        ic = batch.image_codes
        if not len(ic.images):
            return
        if batch.bootstrap is not None:
            check_same_bootstrap(self.bootstrap, batch.bootstrap)
            self.bootstrap = batch.bootstrap
        b = len(ic.images)
        x, x_hat = batch.x.double(), batch.x_hat.double()
        self.moments.add(x)
        row = ic.row
        active = batch.codes.values > 0
        err = torch.zeros(b, dtype=torch.float64).index_add_(0, row, (x - x_hat).pow(2).sum(dim=1))
        l0 = torch.zeros(b, dtype=torch.float64).index_add_(0, row, active.sum(dim=1).double())
        eu = torch.zeros(b, dtype=torch.float64).index_add_(
            0, row, metrics.effective_units(batch.codes.values.double()))
        lat = batch.codes.indices[active]
        self.fire_counts += torch.bincount(lat, minlength=self.d_sae)
        # Distinct (image, latent) pairs with the number of tokens on which the latent fires.
        keys = row[:, None].expand_as(active)[active] * self.d_sae + lat
        uniq, counts = torch.unique(keys, return_counts=True)
        img_row = uniq // self.d_sae
        self.chunks.append({
            "images": ic.images.clone(),
            "n_tokens": ic.n_tokens.to(torch.int32),
            "sse": err, "l0": l0, "eu": eu,
            "offsets": torch.bincount(img_row, minlength=b).to(torch.int32),
            "latents": (uniq % self.d_sae).to(self._latent_dtype),
            "counts": counts.to(torch.int16 if counts.numel() == 0 or int(counts.max()) <= 32767 else torch.int32),
        })

    def merge(self, other: "OODAccumulator") -> None:
        check_same_bootstrap(self.bootstrap, other.bootstrap)
        self.bootstrap = self.bootstrap or other.bootstrap
        self.moments.merge(other.moments)
        self.fire_counts += other.fire_counts
        self.chunks += other.chunks

    @property
    def n_tokens(self) -> int:
        return self.moments.n

    def image_scores(self, reference: "OODAccumulator") -> dict[str, torch.Tensor]:
        """``{score: [n_images] float64}`` for this set, scaled and weighted by ``reference`` (the ID set).

        Images are in ascending dataset-index order. Scores of an image with no
        finite token are NaN. When ``reference`` is this accumulator, each image's
        rarity uses leave-one-out frequencies (its own firings and tokens removed).
        """
        if not self.chunks:
            return {s: torch.zeros(0, dtype=torch.float64) for s in SCORES} | {"images": torch.zeros(0, dtype=torch.long)}
        n_ref = max(reference.n_tokens, 1)
        var_ref = reference.moments.m2 / n_ref if reference.n_tokens >= 2 else float("nan")
        loo = reference is self
        c_ref = reference.fire_counts.double()
        rarity_j = -(c_ref / n_ref + 1.0 / n_ref).log10()
        parts = {s: [] for s in SCORES}
        images = []
        for c in self.chunks:
            nt = c["n_tokens"].double()
            safe = nt.clamp_min(1)
            nan = torch.full_like(nt, float("nan"))
            images.append(c["images"])
            parts["fvu"].append(torch.where(nt > 0, c["sse"] / safe / var_ref, nan))
            parts["l0"].append(torch.where(nt > 0, c["l0"] / safe, nan))
            parts["effective_units"].append(torch.where(nt > 0, c["eu"] / safe, nan))
            row = torch.repeat_interleave(torch.arange(len(nt)), c["offsets"].long())
            w = c["counts"].double()
            lat = c["latents"].long()
            if loo:  # leave-one-out: f_j = (c_j - c_nj) / (T - t_n), smoothed by 1 / (T - t_n)
                rest = (n_ref - nt[row]).clamp_min(1.0)
                rar = -((c_ref[lat] - w).clamp_min(0.0) / rest + 1.0 / rest).log10()
            else:
                rar = rarity_j[lat]
            num = torch.zeros(len(nt), dtype=torch.float64).index_add_(0, row, w * rar)
            den = torch.zeros(len(nt), dtype=torch.float64).index_add_(0, row, w)
            parts["rarity"].append(torch.where(den > 0, num / den.clamp_min(1e-300), nan))
        images_t = torch.cat(images)
        order = torch.argsort(images_t, stable=True)
        out = {s: torch.cat(v)[order] for s, v in parts.items()}
        out["images"] = images_t[order]
        return out

    def finish(self) -> dict:
        own = self.image_scores(self)
        n = int(own["images"].numel())
        out = {"n_images": n, "n_inputs": self.n_tokens}
        for s in SCORES:
            v = own[s][torch.isfinite(own[s])]
            out[f"{s}_mean"] = nan_to_none(float(v.mean())) if v.numel() else None
        return out


def compare(id_acc: OODAccumulator, ood_acc: OODAccumulator) -> dict:
    """AUROC of ID vs OOD for every per-image score, and the scores' means on both sides.

    With bootstrap weights on both sides, ``intervals`` holds ``{"auroc_<score>": [low, high]}``:
    replicate ``r`` weighs ID image ``n`` by ``w_nr`` and OOD image ``m`` by ``v_mr``.
    """
    s_id = id_acc.image_scores(id_acc)
    s_ood = ood_acc.image_scores(id_acc)
    out: dict = {"n_id_images": int(s_id["images"].numel()), "n_ood_images": int(s_ood["images"].numel())}
    w_id, w_ood = _weights(id_acc, s_id["images"]), _weights(ood_acc, s_ood["images"])
    reasons, reps = [], {}
    for s in SCORES:
        a, b = s_id[s], s_ood[s]
        value = metrics.auroc(a, b)
        out[f"auroc_{s}"] = nan_to_none(value)
        fa, fb = a[torch.isfinite(a)], b[torch.isfinite(b)]
        out[f"{s}_id_mean"] = nan_to_none(float(fa.mean())) if fa.numel() else None
        out[f"{s}_ood_mean"] = nan_to_none(float(fb.mean())) if fb.numel() else None
        if value != value:
            reasons.append(f"{s}: no finite score on one side")
        if w_id is not None and w_ood is not None:
            reps[f"auroc_{s}"] = metrics.weighted_auroc(a, b, w_id, w_ood)
    if reps:
        out["intervals"] = interval_dict(reps)
    if reasons:
        out["reason"] = "; ".join(reasons)
    return out


def _weights(acc: OODAccumulator, images: torch.Tensor) -> torch.Tensor | None:
    """``[R, n]`` bootstrap weights of ``images`` (``None`` without a bootstrap)."""
    return acc.bootstrap.weights(images) if acc.bootstrap is not None else None
