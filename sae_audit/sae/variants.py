"""SAE architectures other than Top-k, for auditing SAEs trained elsewhere.

Both share :class:`~sae_audit.sae.topk.TopKSAE`'s parameters and interface
(``encode(x, k=None) -> SparseCodes``, ``decode(codes)``), so every audit suite
runs on them unchanged. They are inference-only: ``sae-audit train`` trains
Top-k SAEs.

- :class:`JumpReLUSAE`: ``z = relu(h) * (h > threshold)`` with a per-latent
  ``threshold [d_sae]`` (Rajamanoharan et al. 2024, arXiv 2407.14435; SAELens'
  ``jumprelu``, which is also how SAELens saves a BatchTopK SAE for inference,
  Bussmann et al. 2024, arXiv 2412.06410).
- :class:`ReLUSAE`: ``z = relu(h)`` (the "standard" SAE of SAELens, saev's ``Relu``).

Here ``h`` is :meth:`TopKSAE.pre_activations`. The codes of an input keep
every latent that fires; as :class:`SparseCodes` has one width per batch, the
width is the largest number of firing latents of any input in the batch (the
others are padded with zero values, which count as silent everywhere). An
explicit ``k`` keeps only each input's ``k`` largest activations (the
inference-budget swap of SPEC section 4).
"""

from __future__ import annotations

import torch
from torch import nn

from sae_audit.sae.codes import SparseCodes
from sae_audit.sae.config import SAEConfig
from sae_audit.sae.topk import TopKSAE


class _DenseActivationSAE(TopKSAE):
    def activations(self, h: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, x: torch.Tensor, k: int | None = None) -> SparseCodes:
        """Sparse codes of ``x [N, d_in]``: ``indices``/``values`` ``[N, m]``.

        ``m`` is the most latents firing on any input of the batch (at least 1),
        capped by ``k`` (default ``config.k``).

        Raises:
            SaeAuditError: ``x`` is not ``[N, d_in]`` or ``k`` is out of range.
        """
        x = self._check_input(x)
        k = self._resolve_k(k)
        z = self.activations(self.pre_activations(self.normalise_input(x)))
        width = int((z > 0).sum(dim=1).max()) if z.shape[0] else 1
        width = max(1, min(k, width))
        values, indices = z.topk(width, dim=1, sorted=False)
        return SparseCodes(indices, values, self.d_sae)

    def training_loss(self, *args, **kwargs):
        raise NotImplementedError(f"{self.config.architecture} SAEs are read for auditing only; train a Top-k SAE")


class JumpReLUSAE(_DenseActivationSAE):
    """JumpReLU SAE: parameters of :class:`TopKSAE` plus ``threshold [d_sae]`` (float32)."""

    def __init__(self, config: SAEConfig, seed: int | None = 0):
        super().__init__(config, seed)
        self.threshold = nn.Parameter(torch.zeros(config.d_sae))

    def activations(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(h) * (h > self.threshold).to(h.dtype)


class ReLUSAE(_DenseActivationSAE):
    """Standard ReLU SAE: ``z = relu(h)``."""

    def activations(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(h)


def build_sae(config: SAEConfig, seed: int | None = 0) -> TopKSAE:
    """A fresh SAE module of ``config.architecture`` (``topk``, ``jumprelu`` or ``relu``)."""
    cls = {"topk": TopKSAE, "jumprelu": JumpReLUSAE, "relu": ReLUSAE}[config.architecture]
    return cls(config, seed=seed)


def extra_params(config: SAEConfig) -> dict[str, tuple[int, ...]]:
    """Parameters beyond ``W_enc, b_enc, W_dec, b_dec`` that an architecture stores, with shapes."""
    return {"threshold": (config.d_sae,)} if config.architecture == "jumprelu" else {}
