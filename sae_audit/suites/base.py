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


class Accumulator(Protocol):
    def accumulate(self, batch: SuiteBatch) -> None: ...

    def merge(self, other: "Accumulator") -> None: ...

    def finish(self) -> dict: ...
