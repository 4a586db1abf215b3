"""Top-k sparse autoencoder, plain and regularised.

Follows Gao et al. 2024 ("Scaling and evaluating sparse autoencoders",
arXiv 2406.04093) for the Top-k activation, the unit-norm decoder, tied
initialisation and AuxK, and Jacquier et al. 2026 (arXiv 2606.27321) for the
off-support L1 and L1/L2-ratio regularisers. The formulas are in
``shared/SPEC.md`` sections 1-2.

Inputs are in the model's units; when ``config.normalisation == "scalar"`` the
SAE multiplies inputs by ``config.norm_scale`` before encoding and divides its
reconstruction by it again, so callers never see normalised units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sae_audit.errors import SaeAuditError
from sae_audit.sae import losses
from sae_audit.sae.codes import SparseCodes
from sae_audit.sae.config import SAEConfig


@dataclass
class LossOutput:
    """Terms of one training step (0-dim tensors) and the batch's codes."""

    loss: torch.Tensor
    nmse: torch.Tensor
    auxk: torch.Tensor
    off_l1: torch.Tensor
    ratio: torch.Tensor
    codes: SparseCodes


class TopKSAE(nn.Module):
    """Top-k SAE with parameters ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``,
    ``W_dec [d_sae, d_in]``, ``b_dec [d_in]`` (float32).

    ``h = (x - b_dec) @ W_enc + b_enc``; keep the ``k`` largest entries of each
    row, apply ReLU *after* selection; ``x_hat = z @ W_dec + b_dec``.
    """

    def __init__(self, config: SAEConfig, seed: int | None = 0):
        super().__init__()
        self.config = config
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        W_dec = torch.randn(config.d_sae, config.d_in, generator=gen)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.T.clone().contiguous())  # tied init
        self.b_enc = nn.Parameter(torch.zeros(config.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(config.d_in))
        # Training-only state: tokens seen since each latent last fired.
        self.register_buffer(
            "tokens_since_fired", torch.zeros(config.d_sae, dtype=torch.long), persistent=False
        )

    # ------------------------------------------------------------------ basics
    @property
    def d_in(self) -> int:
        return self.config.d_in

    @property
    def d_sae(self) -> int:
        return self.config.d_sae

    @property
    def k(self) -> int:
        return self.config.k

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise SaeAuditError(
                f"SAE expects activations of shape [N, {self.d_in}] (d_in={self.d_in}), "
                f"got {list(x.shape)}: the SAE was trained on another layer width"
            )
        return x.to(device=self.W_enc.device, dtype=self.W_enc.dtype)

    def _resolve_k(self, k: int | None) -> int:
        k = self.k if k is None else int(k)
        if not 1 <= k <= self.d_sae:
            raise SaeAuditError(f"inference budget k={k} must be between 1 and d_sae={self.d_sae}")
        return k

    def normalise_input(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.config.norm_scale if self.config.normalisation == "scalar" else x

    def denormalise_output(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.config.norm_scale if self.config.normalisation == "scalar" else x

    # ------------------------------------------------------------------ inference
    def pre_activations(self, x_norm: torch.Tensor) -> torch.Tensor:
        """``[N, d_sae]`` pre-activations of *normalised* inputs ``[N, d_in]``."""
        if not self.config.apply_b_dec_to_input:
            return x_norm @ self.W_enc + self.b_enc
        return (x_norm - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor, k: int | None = None) -> SparseCodes:
        """Sparse Top-k codes of ``x [N, d_in]`` (model units, any float dtype).

        Args:
            k: inference-time budget overriding ``config.k`` (SPEC section 1).
        Returns:
            :class:`SparseCodes` with ``indices``/``values`` of shape ``[N, k]``.
        Raises:
            SaeAuditError: ``x`` is not ``[N, d_in]`` or ``k`` is out of range.
        """
        x = self._check_input(x)
        k = self._resolve_k(k)
        h = self.pre_activations(self.normalise_input(x))
        values, indices = h.topk(k, dim=1, sorted=False)
        return SparseCodes(indices, torch.relu(values) if self.config.topk_relu else values, self.d_sae)

    def decode(self, codes: SparseCodes | torch.Tensor) -> torch.Tensor:
        """Reconstruction ``[N, d_in]`` in model units from sparse codes or a dense ``[N, d_sae]`` tensor."""
        if isinstance(codes, SparseCodes):
            if codes.d_sae != self.d_sae:
                raise SaeAuditError(f"codes have d_sae={codes.d_sae}, this SAE has {self.d_sae}")
            x_hat = torch.nn.functional.embedding_bag(
                codes.indices.to(self.W_dec.device),
                self.W_dec,
                per_sample_weights=codes.values.to(self.W_dec.dtype),
                mode="sum",
            )
        else:
            if codes.ndim != 2 or codes.shape[1] != self.d_sae:
                raise SaeAuditError(f"dense codes must be [N, {self.d_sae}], got {list(codes.shape)}")
            x_hat = codes.to(self.W_dec.dtype) @ self.W_dec
        return self.denormalise_output(x_hat + self.b_dec)

    def forward(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """``decode(encode(x, k))``: ``[N, d_in]``."""
        return self.decode(self.encode(x, k))

    # ------------------------------------------------------------------ training
    def dead_mask(self) -> torch.Tensor:
        """``[d_sae]`` bool: latents silent for at least ``config.dead_after`` training tokens."""
        return self.tokens_since_fired >= self.config.dead_after

    def training_loss(self, x_norm: torch.Tensor, data_mean: torch.Tensor) -> LossOutput:
        """Total loss ``NMSE + alpha*AuxK + lambda_off*R_off + lambda_ratio*R_ratio`` on a batch.

        Args:
            x_norm: ``[B, d_in]`` float32 inputs, already normalised
                (:meth:`normalise_input`).
            data_mean: ``[d_in]`` dataset mean of the normalised inputs (the NMSE
                denominator uses it, SPEC section 1).
        Side effect: updates the dead-latent counters.
        """
        cfg = self.config
        h = self.pre_activations(x_norm)
        values, indices = h.topk(cfg.k, dim=1, sorted=False)
        z = torch.relu(values)
        # A dense [B, d_sae] product is faster on CPU and GPU than a sparse
        # gather for training-size batches (and backward is a plain matmul).
        x_hat = torch.zeros_like(h).scatter(1, indices, z) @ self.W_dec + self.b_dec
        nmse = losses.normalised_mse(x_norm, x_hat, data_mean)

        with torch.no_grad():
            fired = torch.zeros(cfg.d_sae, device=h.device).index_add_(0, indices.reshape(-1), (z > 0).float().reshape(-1)) > 0
            self.tokens_since_fired += x_norm.shape[0]
            self.tokens_since_fired.masked_fill_(fired, 0)
        zero = h.new_zeros(())
        auxk = zero
        if cfg.aux_alpha > 0:
            auxk = losses.auxk_loss(h, (x_norm - x_hat).detach(), self.dead_mask(), self.W_dec, cfg.k_aux_effective)
        off = losses.off_support_l1(h, indices) if cfg.lambda_off > 0 else zero
        ratio = losses.l1_l2_ratio(h, indices) if cfg.lambda_ratio > 0 else zero
        loss = nmse + cfg.aux_alpha * auxk + cfg.lambda_off * off + cfg.lambda_ratio * ratio
        return LossOutput(loss, nmse.detach(), auxk.detach(), off.detach(), ratio.detach(),
                          SparseCodes(indices.detach(), z.detach(), cfg.d_sae))

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project out the gradient component parallel to each (unit-norm) decoder row."""
        if self.W_dec.grad is None:
            return
        W = self.W_dec
        W.grad -= (W.grad * W).sum(dim=1, keepdim=True) * W

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Renormalise every row of ``W_dec`` to unit L2 norm."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def save_pretrained(self, out_dir, readme: str | None = None, overwrite: bool = False, metrics: dict | None = None):
        """Save in the native folder format (see :func:`sae_audit.sae.io.save_sae`).

        Writes a model card (README.md) with the plugins' card metadata, the config
        and ``metrics`` as YAML metadata (:func:`sae_audit.sae.card.model_card`, as
        ``sae-audit train`` does) unless ``readme`` is given.
        """
        from sae_audit.sae.card import model_card
        from sae_audit.sae.io import save_sae

        return save_sae(self, out_dir, readme=readme if readme is not None else model_card(self.config, metrics),
                        overwrite=overwrite)

    def push_to_hub(self, repo_id: str, subfolder: str | None = None, create_pr: bool = False, **kwargs):
        """Upload to the Hugging Face hub (see :func:`sae_audit.sae.hub.push_to_hub`)."""
        from sae_audit.sae.hub import push_to_hub

        return push_to_hub(self, repo_id, subfolder=subfolder, create_pr=create_pr, **kwargs)

    @torch.no_grad()
    def init_b_dec(self, sample_norm: torch.Tensor, method: str = "geometric_median") -> None:
        """Initialise ``b_dec`` from a ``[n, d_in]`` sample of normalised activations.

        ``geometric_median`` uses Weiszfeld iterations (Gao et al. 2024); ``mean`` the mean.
        """
        point = sample_norm.mean(dim=0)
        if method == "geometric_median":
            for _ in range(100):
                dist = (sample_norm - point).norm(dim=1).clamp_min(1e-8)
                w = 1.0 / dist
                new = (w[:, None] * sample_norm).sum(dim=0) / w.sum()
                if (new - point).norm() < 1e-6 * (point.norm() + 1e-12):
                    point = new
                    break
                point = new
        elif method != "mean":
            raise ValueError(f"unknown b_dec init {method!r}")
        self.b_dec.copy_(point)
