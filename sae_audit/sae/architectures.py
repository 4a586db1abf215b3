"""The SAE architectures sae-audit knows, by ``SAEConfig.architecture`` name.

- ``topk``: :class:`~sae_audit.sae.topk.TopKSAE` (trained and audited);
- ``jumprelu``: :class:`~sae_audit.sae.jumprelu.JumpReLUSAE` and
- ``relu``: :class:`~sae_audit.sae.relu.ReLUSAE` (read from other libraries for auditing).

The map is fixed; the names are also listed in
:data:`sae_audit.sae.config.ARCHITECTURES`, which validates configs.
"""

from __future__ import annotations

from types import MappingProxyType

from sae_audit.sae.base import SAE
from sae_audit.sae.config import SAEConfig
from sae_audit.sae.jumprelu import JumpReLUSAE
from sae_audit.sae.relu import ReLUSAE
from sae_audit.sae.topk import TopKSAE

ARCHITECTURE_CLASSES: MappingProxyType[str, type[SAE]] = MappingProxyType(
    {"topk": TopKSAE, "jumprelu": JumpReLUSAE, "relu": ReLUSAE}
)


def build_sae(config: SAEConfig, seed: int | None = 0) -> SAE:
    """A freshly initialised SAE of ``config.architecture`` (see :class:`~sae_audit.sae.base.SAE`).

    ``config`` is already validated, so its architecture is one of
    :data:`ARCHITECTURE_CLASSES`.
    """
    return ARCHITECTURE_CLASSES[config.architecture](config, seed=seed)


def extra_params(config: SAEConfig) -> dict[str, tuple[int, ...]]:
    """Parameters beyond ``W_enc, b_enc, W_dec, b_dec`` that ``config``'s architecture stores, with shapes."""
    return ARCHITECTURE_CLASSES[config.architecture].extra_params(config)
