"""Sparse codes: what ``SAE.encode`` returns instead of a dense matrix."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SparseCodes:
    """Top-k codes of ``N`` inputs.

    Attributes:
        indices: ``[N, k]`` int64, the latents kept for each input.
        values: ``[N, k]`` float, their activations (0 where the pre-activation
            was negative: the ReLU is applied after selection, so an entry can be
            selected yet silent).
        d_sae: number of latents, so the dense shape is known.
    """

    indices: torch.Tensor
    values: torch.Tensor
    d_sae: int

    def __len__(self) -> int:
        return self.indices.shape[0]

    @property
    def k(self) -> int:
        return self.indices.shape[1]

    def to_dense(self) -> torch.Tensor:
        """The dense ``[N, d_sae]`` code matrix (allocates it: use on small batches)."""
        dense = self.values.new_zeros(self.indices.shape[0], self.d_sae)
        return dense.scatter_(1, self.indices, self.values)

    def active(self) -> torch.Tensor:
        """``[N, k]`` bool: entries that really fire (value > 0)."""
        return self.values > 0

    def l0(self) -> torch.Tensor:
        """``[N]`` int64: number of firing latents per input."""
        return self.active().sum(dim=1)

    def top(self, m: int) -> "SparseCodes":
        """Keep each input's ``m`` largest activations (``m <= k``)."""
        m = min(m, self.k)
        vals, pos = self.values.topk(m, dim=1)
        return SparseCodes(self.indices.gather(1, pos), vals, self.d_sae)

    def to(self, device: torch.device | str) -> "SparseCodes":
        return SparseCodes(self.indices.to(device), self.values.to(device), self.d_sae)

    def __getitem__(self, item) -> "SparseCodes":
        return SparseCodes(self.indices[item], self.values[item], self.d_sae)


def codes_from_dense(z: torch.Tensor, k: int) -> SparseCodes:
    """Sparse codes of dense non-negative activations ``z [N, d_sae]``, at most ``k`` per input.

    Used by the architectures whose activation is dense (JumpReLU, ReLU). The
    codes keep every latent that fires; as :class:`SparseCodes` has one width per
    batch, the width ``m`` is the largest number of firing latents of any input in
    the batch, capped at ``k`` (and at least 1); narrower inputs are padded with
    zero values, which count as silent everywhere. With more than ``k`` firing
    latents an input keeps its ``k`` largest (the inference-budget swap of SPEC
    section 4).

    Args:
        z: ``[N, d_sae]`` float activations (``>= 0``; an entry fires when ``> 0``).
        k: the cap, ``1 <= k <= d_sae`` (the caller checks it).
    Returns:
        :class:`SparseCodes` with ``indices``/``values`` of shape ``[N, m]``.
    """
    width = int((z > 0).sum(dim=1).max()) if z.shape[0] else 1
    width = max(1, min(k, width))
    values, indices = z.topk(width, dim=1, sorted=False)
    return SparseCodes(indices, values, z.shape[1])
