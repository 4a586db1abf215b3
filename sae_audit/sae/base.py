"""The SAE base class every architecture shares: parameters, encode/decode, normalisation, saving.

Parameters (float32, SPEC section "Notation"): ``W_enc [d_in, d_sae]``,
``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``. An architecture
(:mod:`~sae_audit.sae.topk`, :mod:`~sae_audit.sae.jumprelu`,
:mod:`~sae_audit.sae.relu`) adds its own parameters and defines
:meth:`SAE.encode`; decoding is shared:

    h     = (x - b_dec) @ W_enc + b_enc        (b_dec subtracted only if config.apply_b_dec_to_input)
    z     = architecture's activation of h      (sparse: SparseCodes)
    x_hat = z @ W_dec + b_dec

Inputs and outputs are in the model's units; with ``config.normalisation ==
"scalar"`` inputs are multiplied by ``config.norm_scale`` before encoding and
reconstructions divided by it again.

The classes hold no training state: the Top-k training objective (loss, dead-latent
counters, decoder constraint, ``b_dec`` initialisation) is
:class:`sae_audit.train.objective.TopKObjective`.

Native folder format, written by :meth:`SAE.save_pretrained` (and
:func:`sae_audit.sae.io.save_sae`)::

    SAE_DIR/
      config.json          SAEConfig as JSON (with schema_version)
      model.safetensors    every parameter, float32 (W_enc, b_enc, W_dec, b_dec, + e.g. threshold)
      README.md            model card (optional for save_sae)
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from sae_audit.errors import SaeAuditError
from sae_audit.outputs import OutputFolder
from sae_audit.sae.codes import SparseCodes
from sae_audit.sae.config import SAEConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"



class SAE(nn.Module, abc.ABC):
    """Base of every SAE architecture.

    Args:
        config: the :class:`~sae_audit.sae.SAEConfig`.
        seed: seeds the initialisation (``None``: torch's global generator; use it
            when the weights are overwritten right away, e.g. when loading).

    Initialisation (Gao et al. 2024, arXiv 2406.04093): rows of ``W_dec`` drawn from
    a standard normal and scaled to unit L2 norm, ``W_enc = W_dec.T`` ("tied init"),
    ``b_enc = b_dec = 0``. All float32.
    """

    def __init__(self, config: SAEConfig, seed: int | None = 0):
        super().__init__()
        self.config = config
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        W_dec = torch.randn(config.d_sae, config.d_in, generator=gen)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        # Registration order (W_dec, W_enc, b_enc, b_dec) fixes the optimiser's
        # parameter order, which checkpoints record: keep it.
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.T.clone().contiguous())  # tied init
        self.b_enc = nn.Parameter(torch.zeros(config.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(config.d_in))

    @classmethod
    def extra_params(cls, config: SAEConfig) -> dict[str, tuple[int, ...]]:
        """Parameters beyond ``W_enc, b_enc, W_dec, b_dec`` this architecture stores, with shapes."""
        return {}

    # ------------------------------------------------------------------ basics
    @property
    def d_in(self) -> int:
        return self.config.d_in

    @property
    def d_sae(self) -> int:
        return self.config.d_sae

    @property
    def k(self) -> int:
        """The training-time budget ``config.k`` (the cap on latents kept per input)."""
        return self.config.k

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as ``[N, d_in]`` in the parameters' dtype and device.

        Raises:
            SaeAuditError: ``x`` is not two-dimensional with ``d_in`` columns.
        """
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise SaeAuditError(
                f"SAE expects activations of shape [N, {self.d_in}] (d_in={self.d_in}), "
                f"got {list(x.shape)}: the SAE was trained on another layer width"
            )
        return x.to(device=self.W_enc.device, dtype=self.W_enc.dtype)

    def _resolve_k(self, k: int | None) -> int:
        """``k`` (default ``config.k``) as an int in ``[1, d_sae]``.

        Raises:
            SaeAuditError: ``k`` is out of range.
        """
        k = self.k if k is None else int(k)
        if not 1 <= k <= self.d_sae:
            raise SaeAuditError(f"inference budget k={k} must be between 1 and d_sae={self.d_sae}")
        return k

    def normalise_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x * norm_scale`` under ``"scalar"`` normalisation, else ``x`` (any shape)."""
        return x * self.config.norm_scale if self.config.normalisation == "scalar" else x

    def denormalise_output(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalise_input`."""
        return x / self.config.norm_scale if self.config.normalisation == "scalar" else x

    # ------------------------------------------------------------------ inference
    def pre_activations(self, x_norm: torch.Tensor) -> torch.Tensor:
        """``h = (x_norm - b_dec) @ W_enc + b_enc``: ``[N, d_sae]`` from *normalised* ``[N, d_in]``.

        ``b_dec`` is subtracted only when ``config.apply_b_dec_to_input`` (SPEC section 1;
        SAELens' option of the same name).
        """
        if not self.config.apply_b_dec_to_input:
            return x_norm @ self.W_enc + self.b_enc
        return (x_norm - self.b_dec) @ self.W_enc + self.b_enc

    def _checked_pre_activations(self, x: torch.Tensor, k: int | None) -> tuple[torch.Tensor, int]:
        """Check ``x`` and ``k``, normalise, and return ``(h [N, d_sae], k)``."""
        x = self._check_input(x)
        k = self._resolve_k(k)
        return self.pre_activations(self.normalise_input(x)), k

    @abc.abstractmethod
    def encode(self, x: torch.Tensor, k: int | None = None) -> SparseCodes:
        """Sparse codes of ``x [N, d_in]`` (model units, any float dtype).

        Args:
            k: inference-time budget (latents kept per input) overriding
                ``config.k`` (SPEC section 1, "inference-time budget").
        Returns:
            :class:`SparseCodes` with float32 ``values`` and int64 ``indices`` of
            shape ``[N, m]``, ``m <= k``.
        Raises:
            SaeAuditError: ``x`` is not ``[N, d_in]`` or ``k`` is not in ``[1, d_sae]``.
        """

    def decode(self, codes: SparseCodes | torch.Tensor) -> torch.Tensor:
        """Reconstruction ``x_hat = z @ W_dec + b_dec``, ``[N, d_in]`` float32, in model units.

        Args:
            codes: :class:`SparseCodes` (decoded with ``embedding_bag``, never densified)
                or a dense ``[N, d_sae]`` tensor.
        Raises:
            SaeAuditError: the codes' ``d_sae`` (or dense width) is not this SAE's.
        """
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
        """``decode(encode(x, k))``: ``[N, d_in]`` float32 (raises as :meth:`encode`)."""
        return self.decode(self.encode(x, k))

    # ------------------------------------------------------------------ saving
    def model_card(self, metrics: Mapping[str, Any] | None = None) -> str:
        """The README.md text :meth:`save_pretrained` writes by default: :func:`sae_audit.sae.card.model_card`,
        the builder ``sae-audit train`` uses too.

        Raises:
            sae_audit.plugin_manager.PluginError: a plugin's ``sae_audit_card_metadata`` hook failed.
        """
        from sae_audit.sae.card import model_card

        return model_card(self.config, metrics)

    def save_pretrained(
        self,
        out_dir: str | os.PathLike,
        readme: str | None = None,
        overwrite: bool = False,
        metrics: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write this SAE to ``out_dir`` in the native format, with a model card.

        Args:
            readme: the whole README.md text; default :meth:`model_card` with
                ``metrics`` (front matter: every plugin's card metadata, the whole
                config as ``sae_config``, ``metrics``).
            overwrite: replace a non-empty ``out_dir``.
            metrics: measured numbers for the card, e.g. ``{"heldout_fvu": 0.21}``.
        Returns:
            ``out_dir`` as a :class:`~pathlib.Path`.
        Raises:
            SaeAuditError: ``out_dir`` exists, is not empty, and ``overwrite`` is False.
        """
        return self.write_folder(out_dir, readme=readme if readme is not None else self.model_card(metrics),
                                 overwrite=overwrite)

    def push_to_hub(self, repo_id: str, subfolder: str | None = None, create_pr: bool = False, **kwargs):
        """Upload to the Hugging Face hub: :func:`sae_audit.sae.hub.push_to_hub` (same arguments)."""
        from sae_audit.sae.hub import push_to_hub

        return push_to_hub(self, repo_id, subfolder=subfolder, create_pr=create_pr, **kwargs)

    def write_files(self, folder: str | os.PathLike, readme: str | None = None) -> Path:
        """Write ``config.json``, ``model.safetensors`` (and ``README.md`` if given) into ``folder`` as they are.

        Every parameter (``state_dict``) is stored as contiguous float32 on the CPU.
        Used on a staging folder (:meth:`write_folder`); creates ``folder`` if missing.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)  # an SAE folder is meant to be shared
        (folder / CONFIG_NAME).write_text(self.config.to_json() + "\n")
        tensors = {n: t.detach().to("cpu", torch.float32).contiguous() for n, t in self.state_dict().items()}
        save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "sae-audit"})
        if readme is not None:
            (folder / "README.md").write_text(readme)
        for f in (folder / CONFIG_NAME, folder / WEIGHTS_NAME, folder / "README.md"):
            if f.is_file():
                f.chmod(0o644)
        return folder

    def write_folder(self, out_dir: str | os.PathLike, readme: str | None = None, overwrite: bool = False) -> Path:
        """Write :meth:`write_files` to ``out_dir`` as a whole (:class:`sae_audit.outputs.OutputFolder`).

        The files are written into a staging folder and swapped in, so an
        interrupted save never leaves a half-written SAE, and ``overwrite``
        replaces only files an earlier sae-audit save wrote there.

        Raises:
            SaeAuditError: ``out_dir`` exists, is not empty, and ``overwrite`` is
                false; another process writes it; or a file in the way was not
                written by sae-audit.
        """
        with OutputFolder(out_dir, overwrite=overwrite) as folder:
            self.write_files(folder.stage(), readme)
            folder.commit()
        return Path(out_dir)
