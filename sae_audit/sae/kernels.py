"""Sparse training kernels for Top-k SAEs: gradients that touch only the ``k`` selected latents.

A Top-k SAE's reconstruction reads ``k`` of ``d_sae`` latents per input, so its
gradients are sparse: with ``S`` the ``[B, d_sae]`` matrix holding ``k`` values per
row (at ``indices [B, k]``) and ``G = dL/dx_hat [B, d_in]``,

    x_hat    = S @ W_dec                 -> gather the k decoder rows (embedding_bag)
    dL/dW_dec = S^T @ G                  -> each latent sums the rows it was picked by
    dL/dS    = (G @ W_dec^T) at indices  -> k dot products per row (sampled matmul)

and the same for the encoder's selected pre-activations ``h_sel = gather(h, indices)``
(``dL/dW_enc^T = S_g^T @ x_in``). The dense formulation (``scatter(...) @ W_dec``, the
gradient of ``gather``) costs ``B * d_sae * d_in`` multiply-adds per product; these
cost ``B * k * d_in``. EleutherAI's sparsify decodes the same way (its
``eager_decode`` is an ``embedding_bag``); the transposed products here group the
``B * k`` entries by latent once (:class:`LatentGroups`, a CSR of ``S^T``) and
reduce each group with ``embedding_bag``, which is deterministic.

Every function takes and returns float32 tensors on any device (nothing is moved
to the CPU); the results equal the dense products up to float32 rounding
(``tests/train/test_fast_paths.py`` checks the gradients against the dense
formulation to 1e-5).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["LatentGroups", "gather_pre_activations", "sampled_rows_dot", "sparse_decode", "sparse_t_dense"]


@dataclass(frozen=True)
class LatentGroups:
    """The ``B * k`` entries of ``indices [B, k]`` grouped by latent (a CSR layout of ``S^T``).

    Attributes:
        order: ``[B*k]`` int64, positions into ``indices.flatten()`` sorted by latent
            (stable: within a latent, rows keep their order, so sums are deterministic).
        rows: ``[B*k]`` int64, the row (input) of each sorted entry.
        offsets: ``[d_sae]`` int64, where each latent's group starts in ``order``.
    """

    order: torch.Tensor
    rows: torch.Tensor
    offsets: torch.Tensor

    @classmethod
    def of(cls, indices: torch.Tensor, d_sae: int) -> "LatentGroups":
        """Group ``indices [B, k]`` (int64, values in ``[0, d_sae)``)."""
        flat = indices.reshape(-1)
        order = _stable_argsort(flat, d_sae)
        counts = torch.bincount(flat, minlength=d_sae)
        offsets = counts.cumsum(0) - counts
        rows = torch.div(order, indices.shape[1], rounding_mode="floor")
        return cls(order, rows, offsets)


def _stable_argsort(keys: torch.Tensor, n_keys: int) -> torch.Tensor:
    """Stable argsort of int64 ``keys`` in ``[0, n_keys)``: ``[N]`` int64, on ``keys``' device.

    On the CPU, NumPy's radix sort on 16-bit digits (one pass, or two for more than
    65,536 keys): torch's CPU sort took 0.3 s for 131,072 keys on a busy 2-core
    machine where this takes under 1 ms. Elsewhere ``torch.sort(stable=True)``.
    """
    if keys.device.type != "cpu":
        return torch.sort(keys, stable=True).indices
    import numpy as np

    k = keys.numpy()
    if n_keys <= 1 << 16:
        return torch.from_numpy(np.argsort(k.astype(np.uint16), kind="stable"))
    order = np.argsort((k & 0xFFFF).astype(np.uint16), kind="stable")
    order = order[np.argsort((k[order] >> 16).astype(np.uint16), kind="stable")]
    return torch.from_numpy(order)


def sparse_t_dense(groups: LatentGroups, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``S^T @ dense``: ``[d_sae, d]`` float, ``S`` the sparse ``[B, d_sae]`` with ``values [B, k]`` at the grouped indices.

    Row ``j`` is ``sum over (i, s) with indices[i, s] == j of values[i, s] * dense[i]``;
    latents never selected get zeros. ``dense`` is ``[B, d]``.
    """
    weights = values.reshape(-1)[groups.order].to(dense.dtype)
    return F.embedding_bag(groups.rows, dense, groups.offsets, per_sample_weights=weights, mode="sum")


def sampled_rows_dot(a: torch.Tensor, indices: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``(a @ table^T)`` at ``(i, indices[i, s])``: ``[B, k]``, without the dense ``[B, d_sae]`` product.

    Args:
        a: ``[B, d]`` float.
        indices: ``[B, k]`` int64 rows of ``table``.
        table: ``[d_sae, d]`` float (a decoder, or a transposed encoder).

    Uses ``torch.sparse.sampled_addmm`` (an SDDMM on CPU and CUDA); where that is
    not available for the dtype or device, a blocked gather-and-dot.
    """
    B, k = indices.shape
    if B == 0:
        return a.new_zeros(0, k)
    if a.dtype in (torch.float32, torch.float64):
        try:
            crow = torch.arange(0, B * k + 1, k, device=a.device, dtype=torch.int64)
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                mask = torch.sparse_csr_tensor(crow, indices.reshape(-1), a.new_zeros(B * k),
                                               (B, table.shape[0]), check_invariants=False)
            return torch.sparse.sampled_addmm(mask, a, table.t().to(a.dtype)).values().view(B, k)
        except (RuntimeError, NotImplementedError):  # pragma: no cover - a backend without SDDMM
            pass
    out = a.new_empty(B, k)
    step = max(1, (1 << 22) // max(1, k * table.shape[1]))
    for i in range(0, B, step):
        out[i:i + step] = torch.einsum("bkd,bd->bk", F.embedding(indices[i:i + step], table).to(a.dtype),
                                       a[i:i + step])
    return out


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, indices, values, W_dec, groups):
        ctx.save_for_backward(indices, values, W_dec)
        ctx.groups = groups
        return F.embedding_bag(indices, W_dec, per_sample_weights=values.to(W_dec.dtype), mode="sum")

    @staticmethod
    def backward(ctx, grad_out):
        indices, values, W_dec = ctx.saved_tensors
        grad_out = grad_out.to(W_dec.dtype).contiguous()
        grad_values = grad_W = None
        if ctx.needs_input_grad[1]:
            grad_values = sampled_rows_dot(grad_out, indices, W_dec).to(values.dtype)
        if ctx.needs_input_grad[2]:
            groups = ctx.groups if ctx.groups is not None else LatentGroups.of(indices, W_dec.shape[0])
            grad_W = sparse_t_dense(groups, values, grad_out)
        return None, grad_values, grad_W, None


def sparse_decode(indices: torch.Tensor, values: torch.Tensor, W_dec: torch.Tensor,
                  groups: LatentGroups | None = None) -> torch.Tensor:
    """``S @ W_dec`` (no ``b_dec``): ``[B, d_in]``, with sparse gradients for ``values`` and ``W_dec``.

    Args:
        indices: ``[B, k]`` int64 latents.
        values: ``[B, k]`` float activations (differentiable).
        W_dec: ``[d_sae, d_in]`` float (differentiable).
        groups: :class:`LatentGroups` of ``indices``, when the caller has it already.
    """
    return _SparseDecode.apply(indices, values, W_dec, groups)


class _GatherPreActivations(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_dec, indices, h, groups):
        x_in = x if b_dec is None else x - b_dec
        if h.dtype == W_enc.dtype:
            out = h.gather(1, indices)
        else:  # h was computed in lower precision to select; the values are recomputed exactly
            out = sampled_rows_dot(x_in.to(W_enc.dtype), indices, W_enc.t()) + b_enc[indices]
        ctx.save_for_backward(x_in, W_enc, indices)
        ctx.groups = groups
        ctx.has_b_dec = b_dec is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        x_in, W_enc, indices = ctx.saved_tensors
        grad = grad.to(W_enc.dtype).contiguous()
        d_sae = W_enc.shape[1]
        grad_x = grad_W = grad_b_enc = grad_b_dec = None
        if ctx.needs_input_grad[1]:
            groups = ctx.groups if ctx.groups is not None else LatentGroups.of(indices, d_sae)
            grad_W = sparse_t_dense(groups, grad, x_in.to(W_enc.dtype)).t()
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            grad_b_enc = torch.zeros(d_sae, dtype=W_enc.dtype, device=W_enc.device).index_add_(
                0, indices.reshape(-1), grad.reshape(-1))
            if ctx.has_b_dec and ctx.needs_input_grad[3]:
                # x_in = x - b_dec, so dL/db_dec = -sum_i dL/dx_in_i = -W_enc @ dL/db_enc.
                grad_b_dec = -(W_enc @ grad_b_enc)
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(indices, W_enc.t().contiguous(), per_sample_weights=grad, mode="sum")
        return (grad_x, grad_W, grad_b_enc if ctx.needs_input_grad[2] else None, grad_b_dec,
                None, None, None)


def gather_pre_activations(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor | None,
                           indices: torch.Tensor, h: torch.Tensor,
                           groups: LatentGroups | None = None) -> torch.Tensor:
    """The selected pre-activations ``h[i, indices[i, s]]``, ``[B, k]``, with gradients only through them.

    ``h = (x - b_dec) @ W_enc + b_enc`` (``b_dec`` omitted when ``None``) must have been
    computed by the caller without autograd (to choose ``indices``); when ``h`` is in
    a lower precision than ``W_enc`` (bf16 autocast), the selected values are
    recomputed exactly in ``W_enc``'s dtype, so only the *selection* saw bf16.

    Gradients: ``W_enc`` (``[d_in, d_sae]``, only the selected columns get non-zero
    entries), ``b_enc``, ``b_dec`` (``-W_enc @ dL/db_enc``) and ``x`` when they
    require it.

    Args:
        x: ``[B, d_in]`` float encoder input (normalised).
        W_enc, b_enc, b_dec: the SAE's parameters.
        indices: ``[B, k]`` int64 selected latents.
        h: ``[B, d_sae]`` the detached pre-activations.
        groups: :class:`LatentGroups` of ``indices``, when the caller has it already.
    """
    return _GatherPreActivations.apply(x, W_enc, b_enc, b_dec, indices, h, groups)
