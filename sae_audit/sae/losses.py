"""Training losses and regularisers, as plain functions sharing one signature style.

All of them take float tensors and return a 0-dim tensor (differentiable where
the inputs are); :class:`sae_audit.train.objective.TopKObjective` combines them
into the training loss. Formulas follow ``shared/SPEC.md`` sections 1 and 2:

- :func:`normalised_mse` and :func:`auxk_loss`: Gao et al. 2024, arXiv 2406.04093.
- :func:`off_support_l1` and :func:`l1_l2_ratio`: Jacquier, Vakalopoulou and
  Hosseini 2026, arXiv 2606.27321 ("Beyond the Hard Budget"). The abstract does
  not give the normalisation of the off-support term; we use the mean over the
  batch of the per-sample sum (SPEC section 2) and record the lambdas in the
  SAE config.
"""

from __future__ import annotations

import torch

RATIO_EPS = 1e-8


def normalised_mse(x: torch.Tensor, x_hat: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``sum_i ||x_i - x_hat_i||^2 / sum_i ||x_i - mean||^2``.

    Args:
        x, x_hat: ``[B, d_in]``.
        mean: ``[d_in]``, the *dataset* mean (not zero and not the batch mean),
            so the value is the fraction of the data's variance left unexplained.

    The ratio of batch sums (rather than the mean of per-sample ratios) keeps
    inputs that sit close to the mean from dominating the loss.
    """
    num = (x - x_hat).pow(2).sum()
    den = (x - mean).pow(2).sum().clamp_min(torch.finfo(x.dtype).tiny)
    return num / den


def _active_relu(pre_acts: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``relu(h)`` with every column outside the batch-active set A zeroed: ``[B, d_sae]``.

    Zeros change neither an L1 nor an L2 norm, so sums over this matrix are sums
    over A without gathering its columns.
    """
    active = torch.zeros(pre_acts.shape[1], dtype=pre_acts.dtype, device=pre_acts.device)
    active[indices.reshape(-1)] = 1.0
    return torch.relu(pre_acts) * active


def off_support_l1(pre_acts: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Off-support L1 (arXiv 2606.27321): ``mean_i sum_{j in A, j not in S_i} relu(h_ij)``.

    Penalises the batch-active latents that were *not* selected for an input,
    widening the gap between the k-th and (k+1)-th pre-activation. Latents
    outside A get no penalty (they receive no reconstruction gradient, and
    penalising them would push them towards death).

    Computed as ``sum_{j in A} relu(h_ij) - sum_{j in S_i} relu(h_ij)`` (S_i is a
    subset of A).

    Args:
        pre_acts: ``[B, d_sae]`` pre-activations h (before Top-k).
        indices: ``[B, k]`` Top-k indices S_i.
    """
    on_active = _active_relu(pre_acts, indices).sum(dim=1)
    on_support = torch.relu(pre_acts.gather(1, indices)).sum(dim=1)
    return (on_active - on_support).mean()


def l1_l2_ratio(pre_acts: torch.Tensor, indices: torch.Tensor, eps: float = RATIO_EPS) -> torch.Tensor:
    """L1/L2 ratio (arXiv 2606.27321): ``mean_i ||p_i||_1 / (||p_i||_2 + eps)``, ``p = relu(h)[:, A]``.

    Scale-invariant; its square is the effective number of units of the input.
    Computed over all batch-active latents, selected or not.

    Args:
        pre_acts: ``[B, d_sae]`` pre-activations h.
        indices: ``[B, k]`` Top-k indices (they define A).
    """
    p = _active_relu(pre_acts, indices)
    return (p.sum(dim=1) / (p.norm(dim=1) + eps)).mean()


def auxk_loss(
    pre_acts: torch.Tensor,
    error: torch.Tensor,
    dead: torch.Tensor,
    W_dec: torch.Tensor,
    k_aux: int,
) -> torch.Tensor:
    """AuxK (Gao et al. 2024): reconstruct the residual with the top ``k_aux`` dead latents.

    ``||e - e_hat||^2 / ||e||^2`` summed over the batch, where ``e = x - x_hat``
    (detached by the caller) and ``e_hat`` decodes the ReLU of the ``k_aux``
    largest pre-activations *among dead latents* without ``b_dec``.

    Args:
        pre_acts: ``[B, d_sae]``.
        error: ``[B, d_in]``, detached residual.
        dead: ``[d_sae]`` bool.
        W_dec: ``[d_sae, d_in]``.
        k_aux: budget; clipped to the number of dead latents.
    Returns:
        0-dim tensor; exactly 0 when no latent is dead.
    """
    n_dead = int(dead.sum())
    if n_dead == 0 or k_aux <= 0:
        return pre_acts.new_zeros(())
    masked = pre_acts.masked_fill(~dead, float("-inf"))
    vals, idx = masked.topk(min(k_aux, n_dead), dim=1)
    e_hat = torch.nn.functional.embedding_bag(
        idx, W_dec, per_sample_weights=torch.relu(vals), mode="sum"
    )
    return auxk_from_estimate(error, e_hat)


def auxk_from_estimate(error: torch.Tensor, e_hat: torch.Tensor) -> torch.Tensor:
    """The AuxK ratio ``sum ||e - e_hat||^2 / sum ||e||^2`` of a residual ``error`` and its estimate ``e_hat``.

    Both ``[B, d_in]``; :func:`auxk_loss` builds ``e_hat`` from the dead latents, the
    training objective from sparse gradients (:mod:`sae_audit.sae.kernels`).
    """
    den = error.pow(2).sum().clamp_min(torch.finfo(error.dtype).tiny)
    return (error - e_hat).pow(2).sum() / den

