"""The shape every audit suite shares.

A suite's accumulator sees one batch at a time (``accumulate``), can absorb
another accumulator of the same kind that saw a disjoint part of the data
(``merge``; used for sharded datasets and multiple processes), and reduces to
a JSON-ready dict (``finish``). Accumulators keep streaming sums and counts,
never the dense ``[N, d_sae]`` code matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from sae_audit.sae import SparseCodes


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

    All tokens of one image travel in the same batch (per-image suites take the
    maximum of a latent over the image's tokens).
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


class Accumulator(Protocol):
    def accumulate(self, batch: SuiteBatch) -> None: ...

    def merge(self, other: "Accumulator") -> None: ...

    def finish(self) -> dict: ...
