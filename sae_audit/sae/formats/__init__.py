"""Readers for SAE files written by other libraries.

Each module exposes one :class:`~sae_audit.sae.io.FormatReader`
(``name``, ``detect(folder) -> bool``, ``read(folder) -> TopKSAE``); ``load_sae``
tries them in :data:`~sae_audit.sae.io.FORMAT_READERS` order after the native
format. A reader maps the library's semantics onto :class:`SAEConfig` exactly
(or refuses, naming what it cannot honour); it never loads approximately.

- :mod:`.saelens`: SAELens folders (``cfg.json`` + ``sae_weights.safetensors``);
- :mod:`.saev`: saev checkpoints (``sae.pt``: a JSON header line, then a state dict);
- :mod:`.sparsify`: EleutherAI sparsify folders (``cfg.json`` + ``sae.safetensors``).
"""

from __future__ import annotations

from sae_audit.sae.formats.common import hook_from_name
from sae_audit.sae.formats.saelens import READER as SAELENS_READER
from sae_audit.sae.formats.saev import READER as SAEV_READER
from sae_audit.sae.formats.sparsify import READER as SPARSIFY_READER

BUILTIN_READERS = [SAELENS_READER, SAEV_READER, SPARSIFY_READER]

__all__ = ["BUILTIN_READERS", "hook_from_name"]
