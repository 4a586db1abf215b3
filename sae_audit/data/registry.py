"""The image-set registry: named sets and set families from the ``sae_audit_register_image_sets`` hook.

The built-in plugin registers the sets that Debian and PyPI packages ship
(:mod:`sae_audit.data.demo`); plugins add named sets and families (a family
is a prefix, e.g. ``corrupt``, whose factory receives the rest of the spec).
What a plugin registers is checked here, next to the code that uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sae_audit.data.base import ImageSet
from sae_audit.plugin_manager import PluginError, Registration, RegistrationError, get_plugin_manager

KIND = "image_sets"


@dataclass(frozen=True)
class ImageSetEntry:
    """What the registry holds for one name: the factory and whether the name is a family prefix."""

    factory: Callable[..., ImageSet]
    family: bool = False


def _accept(name, factory, description, family=False) -> tuple:
    """``register(name, factory, description, family=False)`` (see the hook's documentation)."""
    if not callable(factory):
        raise RegistrationError(f"factory must be callable, got {type(factory).__name__} {factory!r:.60}")
    if not isinstance(description, str):
        raise RegistrationError(f"description must be a string, got {type(description).__name__}")
    if family and isinstance(name, str) and ":" in name:
        raise RegistrationError(f"image-set family prefix {name!r} must not contain ':'")
    return name, ImageSetEntry(factory, bool(family)), description, ()


def image_sets() -> dict[str, Registration]:
    """Named image sets and families by name (built-in first); ``value`` is an :class:`ImageSetEntry`.

    Raises:
        PluginError: two plugins register the same name.
    """
    return {r.name: r for r in get_plugin_manager().registrations(KIND, _accept)}


def named_set_descriptions() -> dict[str, str]:
    """Every registered named set and family (``<prefix>:...``) -> its one-line description.

    Raises:
        PluginError: two plugins register the same name.
    """
    return {(f"{r.name}:..." if r.value.family else r.name): r.description for r in image_sets().values()}


def list_named_sets() -> list[str]:
    """The names accepted by :func:`sae_audit.data.open_image_set` besides paths: built-in sets,
    then plugins'. Image-set families (such as ``corrupt``) are listed as ``<prefix>:...``."""
    return list(named_set_descriptions())


def open_registered(spec: str) -> ImageSet | None:
    """The image set a registered name or family builds for ``spec``, or ``None`` if none matches.

    Raises:
        PluginError: the factory raised something other than
            :class:`~sae_audit.errors.SaeAuditError` or returned something that is
            not an :class:`~sae_audit.data.ImageSet` (the message names the plugin).
        SaeAuditError: the factory's own error (bad spec, missing package).
    """
    sets = image_sets()
    r = sets.get(spec)
    if r is not None and not r.value.family:
        args: tuple = ()
    else:
        prefix, sep, rest = spec.partition(":")
        r = sets.get(prefix) if sep else None
        if r is None or not r.value.family:
            return None
        args = (rest,)
    manager = get_plugin_manager()
    result = manager.guarded(r.plugin, f"the image-set factory of {r.name!r} (sae_audit_register_image_sets)",
                             r.value.factory, *args)
    if not isinstance(result, ImageSet):
        raise PluginError(
            f"{manager.who(r.plugin)}: the factory of image set {r.name!r} returned "
            f"{type(result).__name__}, expected a sae_audit.data.ImageSet"
        )
    if getattr(result, "registered_by", None) is None:
        result.registered_by = r.plugin  # provenance: the plugins that took part (see ImageSet)
    return result
