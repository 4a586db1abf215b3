"""Readers for SAE files written by other libraries.

Each module exposes ``detect(folder) -> bool`` and ``read(folder) -> SAE``; the
built-in plugin registers them (``sae_audit_register_sae_formats``) after the
native format, and :func:`sae_audit.sae.load_sae` tries them in that order. A
reader maps the library's semantics onto :class:`~sae_audit.sae.SAEConfig`
exactly (or refuses, naming what it cannot honour); it never loads approximately.

- :mod:`.saelens`: SAELens folders (``cfg.json`` + ``sae_weights.safetensors``);
- :mod:`.saev`: saev checkpoints (``sae.pt``: a JSON header line, then a state dict);
- :mod:`.sparsify`: EleutherAI sparsify folders (``cfg.json`` + ``sae.safetensors``).
"""

from __future__ import annotations

from sae_audit.sae.formats.common import hook_from_name

__all__ = ["hook_from_name"]
