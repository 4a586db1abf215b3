"""Top-k SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", arXiv 2406.04093).

SPEC section 1:

    h     = (x - b_dec) @ W_enc + b_enc        # pre-activations [B, d_sae]
    S_i   = indices of the k largest entries of h_i
    z_ij  = relu(h_ij) if j in S_i else 0       # ReLU applied after selection
    x_hat = z @ W_dec + b_dec

The regularised variants of arXiv 2606.27321 (off-support L1, L1/L2 ratio) are the
same module; they differ only in the training objective
(:class:`sae_audit.train.objective.TopKObjective`) and in the lambdas their config
records.
"""

from __future__ import annotations

import torch

from sae_audit.sae.base import SAE
from sae_audit.sae.codes import SparseCodes


class TopKSAE(SAE):
    """Top-k SAE with parameters ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``,
    ``W_dec [d_sae, d_in]``, ``b_dec [d_in]`` (float32; see :class:`~sae_audit.sae.base.SAE`).

    Config flags honoured: ``apply_b_dec_to_input`` (subtract ``b_dec`` before
    encoding) and ``topk_relu`` (``False`` keeps the raw selected values, as saev's
    TopK activation does).
    """

    def encode(self, x: torch.Tensor, k: int | None = None) -> SparseCodes:
        """Top-k codes of ``x [N, d_in]`` (model units, any float dtype).

        Args:
            k: inference-time budget overriding ``config.k`` (SPEC section 1).
        Returns:
            :class:`SparseCodes` with ``indices`` (int64) and ``values`` (float32)
            of shape ``[N, k]``; a selected latent with a negative pre-activation
            has value 0 (ReLU after selection).
        Raises:
            SaeAuditError: ``x`` is not ``[N, d_in]`` or ``k`` is not in ``[1, d_sae]``.
        """
        h, k = self._checked_pre_activations(x, k)
        values, indices = h.topk(k, dim=1, sorted=False)
        return SparseCodes(indices, torch.relu(values) if self.config.topk_relu else values, self.d_sae)
