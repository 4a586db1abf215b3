"""The SAE-format registry: readers from the ``sae_audit_register_sae_formats`` hook.

The built-in plugin registers the native format, then SAELens, saev and
sparsify (:mod:`sae_audit.sae.formats`); plugins add others.
:func:`sae_audit.sae.load_sae` tries them in this order. What a plugin
registers is checked here, next to the code that uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from sae_audit.plugin_manager import RegistrationError, get_plugin_manager

KIND = "sae_formats"


class FormatReader(NamedTuple):
    """One SAE file format: ``detect(folder) -> bool`` (cheap, must not raise) and
    ``read(folder) -> SAE`` (raises :class:`~sae_audit.errors.SaeAuditError` for a folder it cannot read).

    ``plugin`` names the plugin that registered it (for error messages).
    """

    name: str
    detect: Callable[[Path], bool]
    read: Callable[[Path], Any]
    plugin: str = ""


def _accept(name, detect, read) -> tuple:
    """``register(name, detect, read)`` (see the hook's documentation)."""
    for what, fn in (("detect", detect), ("read", read)):
        if not callable(fn):
            raise RegistrationError(f"{what} must be callable, got {type(fn).__name__} {fn!r:.60}")
    return name, (detect, read), "", ()


def sae_formats() -> list[FormatReader]:
    """Every registered reader, in the order :func:`~sae_audit.sae.load_sae` tries them (built-in first).

    Raises:
        sae_audit.plugin_manager.PluginError: two plugins register the same format name.
    """
    return [FormatReader(r.name, *r.value, plugin=r.plugin)
            for r in get_plugin_manager().registrations(KIND, _accept)]


def read_sae_folder(folder: Path):
    """Read ``folder`` with the first reader whose ``detect`` accepts it; ``None`` when none does.

    Raises:
        sae_audit.plugin_manager.PluginError: a plugin's ``detect`` or ``read``
            failed with something other than a user error (names the plugin and the hook).
        SaeAuditError: the reader's own message for a folder it cannot read.
    """
    manager = get_plugin_manager()
    hook = "sae_audit_register_sae_formats"
    for reader in sae_formats():
        if manager.guarded(reader.plugin, f"the detect function of SAE format {reader.name!r} ({hook})",
                           reader.detect, folder):
            sae = manager.guarded(reader.plugin, f"the read function of SAE format {reader.name!r} ({hook})",
                                  reader.read, folder)
            try:
                sae.read_by = reader.plugin  # provenance: the plugins that took part in an audit
            except AttributeError:  # pragma: no cover - an object that takes no attribute
                pass
            return sae
    return None
