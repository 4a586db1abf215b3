"""The shape every audit suite shares.

A suite's accumulator sees one batch at a time (``accumulate``), can absorb
another accumulator of the same kind that saw a disjoint part of the data
(``merge``; used for sharded datasets and multiple processes), and reduces to
a JSON-ready dict (``finish``). Accumulators keep streaming sums and counts,
never the dense ``[N, d_sae]`` code matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

import torch

from sae_audit.sae import SparseCodes

if TYPE_CHECKING:
    from sae_audit.models.splice import SpliceOutputs
    from sae_audit.suites.bootstrap import Bootstrap


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


@dataclass(frozen=True)
class SuiteBatch:
    """What a suite sees for one batch of one dataset under one SAE.

    Attributes:
        x: ``[N, d_in]`` float32 activations (model units), finite rows only.
        codes: sparse codes of ``x`` (``[N, k]`` indices and values).
        x_hat: ``[N, d_in]`` float32 reconstruction.
        image_index: ``[N]`` int64, the dataset index of the image each row came from.
        labels: ``[N]`` int64 class of that image (-1 when unlabeled).
        n_nonfinite: rows of this batch dropped because ``x`` had NaN/inf.
        images: ``[B]`` int64 dataset indices of the batch's images (including an
            image whose every token was dropped as non-finite); ``None``: the
            distinct values of ``image_index``.
        image_labels: ``[B]`` int64 class of each of ``images`` (-1 when unlabeled).
        embeddings: ``[B, d_e]`` float32 judge embeddings of ``images`` (the
            monosemanticity suite's ``e_n``), or ``None`` when no suite asked for them.
        bootstrap: the image set's Poisson bootstrap
            (:class:`~sae_audit.suites.bootstrap.Bootstrap`), or ``None`` when it is off.
        weights: ``[R, B]`` float64 bootstrap weights of ``images`` when the caller
            computed them once for every SAE (else :attr:`image_weights` derives them).
        outputs: the model's output with and without the SAE spliced in, per image of
            ``images`` (:class:`~sae_audit.models.splice.SpliceOutputs`), or ``None`` when
            no suite asked for them (the fidelity suite does).
        nonfinite_index: ``[n_nonfinite]`` int64 image index of each dropped row (so that
            :meth:`subset` can count them per half), or ``None``.

    All tokens of one image travel in the same batch (per-image suites take the
    maximum of a latent over the image's tokens: :attr:`image_codes`).
    """

    x: torch.Tensor
    codes: SparseCodes
    x_hat: torch.Tensor
    image_index: torch.Tensor
    labels: torch.Tensor
    n_nonfinite: int = 0
    images: torch.Tensor | None = None
    image_labels: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None
    bootstrap: "Bootstrap | None" = None
    weights: torch.Tensor | None = None
    outputs: "SpliceOutputs | None" = None
    nonfinite_index: torch.Tensor | None = None

    @cached_property
    def image_codes(self) -> ImageCodes:
        """The batch pooled per image (computed once per batch, shared by every suite that reads it)."""
        return pool_per_image(self)

    @cached_property
    def image_weights(self) -> torch.Tensor | None:
        """``[R, B]`` float64 Poisson(1) weights of :attr:`ImageCodes.images` (``None``: bootstrap off)."""
        if self.weights is not None:
            return self.weights
        if self.bootstrap is None:
            return None
        return self.bootstrap.weights(self.image_codes.images)

    @cached_property
    def x_moments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x64 [N, d_in], c [d_in], xc [N, d_in], sq [N])`` float64: ``x``, its batch mean, the rows
        centred on it and their squared norms (the moments the coverage suite streams, Chan et al.).

        Depends on ``x`` only: the audit computes it once per batch and hands it to every SAE
        reading the same activations (:meth:`share_x_statistics`).
        """
        x = self.x.double()
        c = x.mean(dim=0) if x.shape[0] else torch.zeros(x.shape[1], dtype=torch.float64)
        xc = x - c
        return x, c, xc, xc.pow(2).sum(dim=1)

    @cached_property
    def x_replicate_moments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """``(n [R], mean [R, d_in], m2 [R])`` float64: the batch's count, mean and sum of squared deviations
        of ``x`` on each bootstrap replicate (rows weighted by their image's weight); ``None`` without
        a bootstrap. Depends on ``x`` and the images only (shared as :attr:`x_moments`)."""
        w = self.image_weights
        if w is None or self.x.shape[0] == 0:
            return None
        _, c, xc, sq = self.x_moments
        return replicate_batch_moments(w, c, xc, sq, self.image_codes.row, len(self.image_codes.images))

    def share_x_statistics(self, other: "SuiteBatch") -> None:
        """Adopt the ``x``-only statistics ``other`` has computed (:attr:`x_moments`,
        :attr:`x_replicate_moments`): ``other`` must hold the same activations, images and weights
        (another SAE at the same hook point, same batch), so no work is done twice per batch."""
        for key in ("x_moments", "x_replicate_moments"):
            if key in other.__dict__:
                self.__dict__[key] = other.__dict__[key]

    def subset(self, keep: torch.Tensor) -> "SuiteBatch":
        """The batch restricted to the images where ``keep`` (``[B]`` bool over :attr:`ImageCodes.images`) holds.

        Tokens, codes, labels, embeddings, outputs and bootstrap weights follow their image.
        """
        ic = self.image_codes
        keep = keep.bool()
        tok = keep[ic.row] if ic.row.numel() else torch.zeros(0, dtype=torch.bool)
        n_bad = self.n_nonfinite
        if self.nonfinite_index is not None:
            kept_ids = ic.images[keep]
            n_bad = int(torch.isin(self.nonfinite_index, kept_ids).sum())
        codes = SparseCodes(self.codes.indices[tok], self.codes.values[tok], self.codes.d_sae)
        w = self.image_weights
        new_row = (torch.cumsum(keep.long(), 0) - 1)[ic.row[tok]] if tok.numel() else ic.row[tok]
        pooled = ImageCodes(ic.images[keep], ic.labels[keep], ic.max_acts[keep], ic.n_tokens[keep], new_row)
        out = SuiteBatch(
            self.x[tok], codes, self.x_hat[tok], self.image_index[tok], self.labels[tok], n_nonfinite=n_bad,
            images=ic.images[keep], image_labels=ic.labels[keep],
            embeddings=self.embeddings[keep] if self.embeddings is not None else None,
            bootstrap=self.bootstrap, weights=w[:, keep] if w is not None else None,
            outputs=self.outputs.subset(keep) if self.outputs is not None else None,
            nonfinite_index=(self.nonfinite_index[torch.isin(self.nonfinite_index, ic.images[keep])]
                             if self.nonfinite_index is not None else None),
        )
        out.__dict__["image_codes"] = pooled  # the pooled codes of the kept images, not recomputed
        return out


def pool_per_image(batch: "SuiteBatch") -> ImageCodes:
    """Pool a batch's token codes per image: each latent's maximum over the image's tokens."""
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


def replicate_batch_moments(w: torch.Tensor, c: torch.Tensor, xc: torch.Tensor, sq_rows: torch.Tensor,
                            row: torch.Tensor, n_images: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch's moments on ``R`` bootstrap replicates: ``(n [R], mean [R, d], m2 [R])`` float64.

    Args:
        w: ``[R, n_images]`` float64 Poisson weights of the batch's images.
        c: ``[d]`` the batch mean; ``xc``: ``[N, d]`` rows centred on it; ``sq_rows``: ``[N]`` their
            squared norms (all float64).
        row: ``[N]`` int64, the image (row of ``w``'s columns) of each row.

    Rows are summed per image and weighted with one ``[R, B] @ [B, d]`` product each.
    """
    counts = torch.bincount(row, minlength=n_images).double()
    sx = torch.zeros(n_images, xc.shape[1], dtype=torch.float64).index_add_(0, row, xc)
    sq = torch.zeros(n_images, dtype=torch.float64).index_add_(0, row, sq_rows)
    n_b = w @ counts
    s_b = w @ sx
    safe = torch.where(n_b > 0, n_b, torch.ones_like(n_b))
    mean_b = c + s_b / safe[:, None]
    m2_b = (w @ sq - s_b.pow(2).sum(dim=1) / safe).clamp_min(0.0)
    return n_b, mean_b, m2_b


class Accumulator(Protocol):
    def accumulate(self, batch: SuiteBatch) -> None: ...

    def merge(self, other: "Accumulator") -> None: ...

    def finish(self) -> dict: ...
