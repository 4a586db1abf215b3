"""sae-audit: audit vision foundation models with sparse autoencoders."""

from sae_audit.errors import SaeAuditError

__version__ = "0.1.0"

__all__ = ["SaeAuditError", "__version__"]
