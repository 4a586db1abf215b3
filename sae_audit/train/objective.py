"""The training objective of a Top-k SAE: loss, dead-latent counters, decoder constraint, ``b_dec`` init.

Follows Gao et al. 2024 ("Scaling and evaluating sparse autoencoders", arXiv
2406.04093) for the normalised MSE, AuxK on dead latents, the unit-norm decoder
with the parallel gradient removed and ``b_dec`` at the geometric median, and
Jacquier, Vakalopoulou and Hosseini 2026 ("Beyond the Hard Budget", arXiv
2606.27321) for the off-support L1 and L1/L2-ratio regularisers. The formulas are
in ``shared/SPEC.md`` sections 1-2; the terms are the plain functions of
:mod:`sae_audit.sae.losses`.

The SAE module (:class:`~sae_audit.sae.TopKSAE`) holds only what inference needs;
everything training adds lives here. One optimiser step::

    out = objective.loss(sae.normalise_input(x))
    opt.zero_grad(); out.loss.backward()
    objective.project_decoder_grad()
    opt.step()
    objective.normalise_decoder()
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sae_audit.sae import kernels, losses
from sae_audit.sae.codes import SparseCodes
from sae_audit.sae.topk import TopKSAE


@dataclass
class LossOutput:
    """Terms of one training step and the batch's codes.

    Attributes:
        loss: 0-dim float tensor, the total (differentiable).
        nmse, auxk, off_l1, ratio: 0-dim float tensors, the detached terms (0 when
            a term's weight is 0).
        codes: the batch's Top-k codes (detached; ``[B, k]``).
    """

    loss: torch.Tensor
    nmse: torch.Tensor
    auxk: torch.Tensor
    off_l1: torch.Tensor
    ratio: torch.Tensor
    codes: SparseCodes


def geometric_median(points: torch.Tensor, max_iter: int = 100, rtol: float = 1e-6) -> torch.Tensor:
    """Geometric median of ``points [n, d]`` (float) by Weiszfeld iterations, from the mean: ``[d]``.

    Stops after ``max_iter`` iterations or once a step moves the estimate by less
    than ``rtol`` times its norm. Distances are clamped at 1e-8, so a point on the
    estimate does not divide by zero.
    """
    point = points.mean(dim=0)
    for _ in range(max_iter):
        dist = (points - point).norm(dim=1).clamp_min(1e-8)
        w = 1.0 / dist
        new = (w[:, None] * points).sum(dim=0) / w.sum()
        if (new - point).norm() < rtol * (point.norm() + 1e-12):
            return new
        point = new
    return point


class TopKObjective:
    """Trains a :class:`~sae_audit.sae.TopKSAE`: owns ``data_mean`` and the dead-latent counters.

    Args:
        sae: the SAE being trained (its ``config`` gives ``k``, ``aux_alpha``,
            ``k_aux``, ``dead_after``, ``lambda_off`` and ``lambda_ratio``).
        data_mean: ``[d_in]`` float32 mean of the *normalised* training inputs (the
            NMSE denominator uses it, SPEC section 1); on the SAE's device.

    Attributes:
        tokens_since_fired: ``[d_sae]`` int64, training vectors seen since each latent
            last fired (a latent fires on an input when it is selected with a value > 0);
            on the SAE's device. Checkpoints save it under this name.

    Raises:
        TypeError: ``sae`` is not a Top-k SAE (JumpReLU and ReLU SAEs are read for
            auditing, not trained here).
    """

    def __init__(self, sae: TopKSAE, data_mean: torch.Tensor):
        if not isinstance(sae, TopKSAE) or sae.config.architecture != "topk":
            raise TypeError(f"TopKObjective trains Top-k SAEs, got {type(sae).__name__} "
                            f"({sae.config.architecture!r})")
        self.sae = sae
        self.data_mean = data_mean
        self.tokens_since_fired = torch.zeros(sae.d_sae, dtype=torch.long, device=sae.W_dec.device)
        self._h_buffer: torch.Tensor | None = None

    def dead_mask(self) -> torch.Tensor:
        """``[d_sae]`` bool: latents silent for at least ``config.dead_after`` training vectors."""
        return self.tokens_since_fired >= self.sae.config.dead_after

    def loss(self, x_norm: torch.Tensor, fired_sync=None, n_rows: int | None = None) -> LossOutput:
        """Total loss ``NMSE + alpha*AuxK + lambda_off*R_off + lambda_ratio*R_ratio`` on a batch.

        - NMSE: :func:`~sae_audit.sae.losses.normalised_mse` against ``data_mean``;
        - AuxK: :func:`~sae_audit.sae.losses.auxk_loss` of the detached residual with the
          ``k_aux`` largest pre-activations among dead latents (counters *after* this
          batch), computed only when ``aux_alpha > 0``;
        - R_off, R_ratio: :func:`~sae_audit.sae.losses.off_support_l1` and
          :func:`~sae_audit.sae.losses.l1_l2_ratio` on the batch-active latents,
          computed only when their lambda is > 0.

        The value is the dense formulation's; the gradients are computed sparsely
        (:mod:`sae_audit.sae.kernels`): the decoder gathers the ``k`` selected rows and,
        without the regularisers, only the selected pre-activations carry gradient
        (``tests/train/test_fast_paths.py`` checks them against the dense gradients to 1e-5).

        Args:
            x_norm: ``[B, d_in]`` float32 inputs, already normalised
                (:meth:`SAE.normalise_input <sae_audit.sae.base.SAE.normalise_input>`).
                May run under ``torch.autocast``.
            fired_sync: data-parallel training only: maps this shard's ``[d_sae]`` bool
                fired mask to the whole batch's (an all-reduce across ranks).
            n_rows: data-parallel training only: the whole batch's rows (default ``B``).
        Returns:
            :class:`LossOutput`.
        Side effect:
            updates :attr:`tokens_since_fired` (adds ``B`` or ``n_rows``, zeroes the latents that fired).
        """
        sae, cfg = self.sae, self.sae.config
        regularised = cfg.lambda_off > 0 or cfg.lambda_ratio > 0
        b_dec = sae.b_dec if cfg.apply_b_dec_to_input else None
        if regularised:
            # The regularisers read relu(h) on every batch-active latent, so h keeps a
            # dense gradient; b_dec's part of it is -W_enc @ sum_i dL/dh_i, taken without
            # the [B, d_in] input gradient a plain (x - b_dec) @ W_enc would compute.
            h = self._dense_pre_activations(x_norm)
            with torch.no_grad():
                indices = h.topk(cfg.k, dim=1, sorted=False).indices
            groups = kernels.LatentGroups.of(indices, cfg.d_sae)
            z = torch.relu(h.gather(1, indices).float())
        else:
            with torch.no_grad():
                h = self._selection_pre_activations(x_norm, b_dec)
                indices = h.topk(cfg.k, dim=1, sorted=False).indices
            groups = kernels.LatentGroups.of(indices, cfg.d_sae)
            z = torch.relu(kernels.gather_pre_activations(x_norm, sae.W_enc, sae.b_enc, b_dec, indices, h, groups))
        # Sparse decoder: gather the k decoder rows (B*k*d_in multiply-adds, not B*d_sae*d_in).
        x_hat = kernels.sparse_decode(indices, z, sae.W_dec, groups) + sae.b_dec
        x_norm = x_norm.float()
        nmse = losses.normalised_mse(x_norm, x_hat, self.data_mean)

        with torch.no_grad():
            fired = torch.zeros(cfg.d_sae, device=z.device).index_add_(
                0, indices.reshape(-1), (z > 0).float().reshape(-1)) > 0
            if fired_sync is not None:
                fired = fired_sync(fired)
            self.tokens_since_fired += x_norm.shape[0] if n_rows is None else n_rows
            self.tokens_since_fired.masked_fill_(fired, 0)
        zero = z.new_zeros(())
        auxk = zero
        if cfg.aux_alpha > 0:
            auxk = self._auxk(x_norm, b_dec, h, (x_norm - x_hat).detach())
        off = losses.off_support_l1(h, indices) if cfg.lambda_off > 0 else zero
        ratio = losses.l1_l2_ratio(h, indices) if cfg.lambda_ratio > 0 else zero
        loss = nmse + cfg.aux_alpha * auxk + cfg.lambda_off * off + cfg.lambda_ratio * ratio
        return LossOutput(loss, nmse.detach(), auxk.detach(), off.detach(), ratio.detach(),
                          SparseCodes(indices.detach(), z.detach(), cfg.d_sae))

    def _selection_pre_activations(self, x_norm: torch.Tensor, b_dec: torch.Tensor | None) -> torch.Tensor:
        """``h [B, d_sae]`` without autograd, bias fused into the matmul (bf16 under bf16 autocast).

        In float32 it is written into a buffer kept from step to step: a fresh
        ``[B, d_sae]`` matrix (400 MB at B 4096, d_sae 24576) is new memory from the
        system at every step, and touching its pages cost about a tenth of the step.
        Nothing holds ``h`` past the step that computed it.
        """
        sae = self.sae
        x_in = x_norm if b_dec is None else x_norm - b_dec
        if torch.is_autocast_enabled(x_in.device.type):
            return torch.addmm(sae.b_enc, x_in, sae.W_enc)
        B = x_in.shape[0]
        buf = self._h_buffer
        if buf is None or buf.shape[0] < B or buf.dtype != sae.W_enc.dtype or buf.device != sae.W_enc.device:
            buf = self._h_buffer = torch.empty(B, sae.d_sae, dtype=sae.W_enc.dtype, device=sae.W_enc.device)
        return torch.addmm(sae.b_enc, x_in.to(sae.W_enc.dtype), sae.W_enc, out=buf[:B])

    def _dense_pre_activations(self, x_norm: torch.Tensor) -> torch.Tensor:
        """``h = (x_norm - b_dec) @ W_enc + b_enc`` with a dense gradient for ``W_enc``, ``b_enc``, ``b_dec``.

        The value is computed exactly as written; ``b_dec`` enters the graph through
        ``b_enc - (b_dec - b_dec.detach()) @ W_enc``, whose value is ``b_enc`` and
        whose gradient is the one ``(x_norm - b_dec) @ W_enc`` gives ``b_dec``.
        """
        sae = self.sae
        if not sae.config.apply_b_dec_to_input:
            return torch.addmm(sae.b_enc, x_norm, sae.W_enc)
        b_dec = sae.b_dec
        bias = sae.b_enc - (b_dec - b_dec.detach()) @ sae.W_enc
        return torch.addmm(bias, x_norm - b_dec.detach(), sae.W_enc)

    def _auxk(self, x_norm: torch.Tensor, b_dec: torch.Tensor | None, h: torch.Tensor,
              error: torch.Tensor) -> torch.Tensor:
        """AuxK (:func:`~sae_audit.sae.losses.auxk_loss`) with sparse gradients: only the chosen dead latents."""
        sae, cfg = self.sae, self.sae.config
        dead = self.dead_mask()
        n_dead = int(dead.sum())
        k_aux = min(cfg.k_aux_effective, n_dead)
        if k_aux <= 0:
            return x_norm.new_zeros(())
        with torch.no_grad():
            aux_idx = h.detach().masked_fill(~dead, float("-inf")).topk(k_aux, dim=1).indices
        groups = kernels.LatentGroups.of(aux_idx, cfg.d_sae)
        if h.requires_grad:
            aux_vals = h.gather(1, aux_idx).float()
        else:
            aux_vals = kernels.gather_pre_activations(x_norm, sae.W_enc, sae.b_enc, b_dec, aux_idx, h, groups)
        e_hat = kernels.sparse_decode(aux_idx, torch.relu(aux_vals), sae.W_dec, groups)
        return losses.auxk_from_estimate(error, e_hat)

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove from ``W_dec.grad`` the component parallel to each (unit-norm) decoder row.

        ``grad_j -= (grad_j . W_dec_j) W_dec_j`` (Gao et al. 2024); call between
        ``backward()`` and the optimiser step. No-op without a gradient.
        """
        W = self.sae.W_dec
        if W.grad is None:
            return
        W.grad.addcmul_(torch.linalg.vecdot(W.grad, W, dim=1).unsqueeze(1), W, value=-1.0)

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Renormalise every row of ``W_dec`` to unit L2 norm (norms clamped at 1e-12); call after the step."""
        W = self.sae.W_dec
        W /= W.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def init_b_dec(self, sample_norm: torch.Tensor, method: str = "geometric_median") -> None:
        """Set ``b_dec`` from a ``[n, d_in]`` sample of normalised activations.

        Args:
            method: ``geometric_median`` (:func:`geometric_median`, Gao et al. 2024) or ``mean``.
        Raises:
            ValueError: an unknown ``method``.
        """
        if method == "geometric_median":
            point = geometric_median(sample_norm)
        elif method == "mean":
            point = sample_norm.mean(dim=0)
        else:
            raise ValueError(f"unknown b_dec init {method!r}")
        self.sae.b_dec.copy_(point)
