"""Audit suites: one module per suite, all with the accumulate/merge/finish shape.

:data:`SUITES` holds the suites sae-audit ships; :func:`register_suite` adds
one. The built-in plugin (:mod:`sae_audit.builtin_plugin`) hands them to the
plugin manager through the ``sae_audit_register_suites`` hook, where plugins'
suites join them (see :meth:`sae_audit.plugins.PluginManager.suites`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from sae_audit.errors import SaeAuditError


class SuiteSpec(NamedTuple):
    """A suite: its name, the factory of its accumulator, and a one-line description."""

    name: str
    factory: Callable
    description: str


#: The built-in suites by name.
SUITES: dict[str, SuiteSpec] = {}


def register_suite(name: str, factory: Callable, description: str) -> SuiteSpec:
    """Add a built-in suite to :data:`SUITES`.

    Raises:
        SaeAuditError: ``name`` is already taken.
    """
    if name in SUITES:
        raise SaeAuditError(f"suite {name!r} is already registered")
    SUITES[name] = spec = SuiteSpec(name, factory, description)
    return spec


def _register_builtin() -> None:
    from sae_audit.suites.coverage import CoverageAccumulator

    register_suite(
        "coverage",
        CoverageAccumulator,
        "firing frequencies, alive/dead/dense latents, L0, effective units and reconstruction, ID vs OOD",
    )


_register_builtin()
