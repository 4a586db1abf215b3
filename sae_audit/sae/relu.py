"""Standard ReLU SAE, ``z = relu(h)`` (SAELens' ``standard`` architecture, saev's ``Relu``),
read for auditing; sae-audit does not train ReLU SAEs.
"""

from __future__ import annotations

import torch

from sae_audit.sae.base import SAE
from sae_audit.sae.codes import SparseCodes, codes_from_dense


class ReLUSAE(SAE):
    """ReLU SAE with the parameters of :class:`~sae_audit.sae.base.SAE`.

    ``config.k`` caps the latents kept per input (``k = d_sae``: no cap).
    """

    def encode(self, x: torch.Tensor, k: int | None = None) -> SparseCodes:
        """Codes of ``x [N, d_in]``: every latent with ``h > 0``, at most ``k`` per input.

        Returns:
            :class:`SparseCodes` of width ``m <= k`` (see :func:`~sae_audit.sae.codes.codes_from_dense`).
        Raises:
            SaeAuditError: ``x`` is not ``[N, d_in]`` or ``k`` is not in ``[1, d_sae]``.
        """
        h, k = self._checked_pre_activations(x, k)
        return codes_from_dense(torch.relu(h), k)
