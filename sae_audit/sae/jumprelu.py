"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction
Fidelity with JumpReLU Sparse Autoencoders", arXiv 2407.14435), read for auditing.

``z = relu(h) * (h > threshold)`` with a per-latent ``threshold [d_sae]``. This is
SAELens' ``jumprelu`` architecture, which is also how SAELens saves a BatchTopK
SAE for inference (Bussmann et al. 2024, arXiv 2412.06410). sae-audit does not
train JumpReLU SAEs.
"""

from __future__ import annotations

import torch
from torch import nn

from sae_audit.sae.base import SAE
from sae_audit.sae.codes import SparseCodes, codes_from_dense
from sae_audit.sae.config import SAEConfig


class JumpReLUSAE(SAE):
    """JumpReLU SAE: the parameters of :class:`~sae_audit.sae.base.SAE` plus
    ``threshold [d_sae]`` (float32, initialised to 0).

    ``config.k`` caps the latents kept per input (``k = d_sae``: no cap).
    """

    def __init__(self, config: SAEConfig, seed: int | None = 0):
        super().__init__(config, seed)
        self.threshold = nn.Parameter(torch.zeros(config.d_sae))

    @classmethod
    def extra_params(cls, config: SAEConfig) -> dict[str, tuple[int, ...]]:
        return {"threshold": (config.d_sae,)}

    def encode(self, x: torch.Tensor, k: int | None = None) -> SparseCodes:
        """Codes of ``x [N, d_in]``: every latent with ``h > threshold`` (and ``h > 0``), at most ``k``.

        Returns:
            :class:`SparseCodes` of width ``m <= k`` (see :func:`~sae_audit.sae.codes.codes_from_dense`).
        Raises:
            SaeAuditError: ``x`` is not ``[N, d_in]`` or ``k`` is not in ``[1, d_sae]``.
        """
        h, k = self._checked_pre_activations(x, k)
        return codes_from_dense(torch.relu(h) * (h > self.threshold).to(h.dtype), k)
