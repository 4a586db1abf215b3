"""sae-audit: audit vision foundation models with sparse autoencoders.

The main entry points are importable from the top level (lazily, so that
``import sae_audit`` stays cheap):

- :func:`load_vision_model`, :func:`capture`, :func:`select_tokens`, :class:`HookPoint`
- :func:`load_sae`, :class:`TopKSAE`, :class:`SAEConfig`, :class:`SparseCodes`
- :func:`open_image_set`
- :func:`run_audit`
"""

from __future__ import annotations

import importlib

from sae_audit.errors import SaeAuditError

__version__ = "0.1.0"

_LAZY = {
    "load_vision_model": "sae_audit.models",
    "capture": "sae_audit.models",
    "select_tokens": "sae_audit.models",
    "HookPoint": "sae_audit.models",
    "VisionModel": "sae_audit.models",
    "load_sae": "sae_audit.sae",
    "save_sae": "sae_audit.sae",
    "TopKSAE": "sae_audit.sae",
    "SAEConfig": "sae_audit.sae",
    "SparseCodes": "sae_audit.sae",
    "open_image_set": "sae_audit.data",
    "run_audit": "sae_audit.audit",
    "AuditConfig": "sae_audit.audit",
}

__all__ = ["SaeAuditError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sae_audit' has no attribute {name!r}")
