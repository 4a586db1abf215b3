"""Audit suites and their registry.

Every suite is an accumulator with ``accumulate(batch)``, ``merge(other)`` and
``finish() -> dict`` (:mod:`sae_audit.suites.base`). The coverage suite always
runs; the others are chosen by name (``sae-audit run --suite NAME``). Suites
come from the ``sae_audit_register_suites`` hook: the built-in plugin
registers the ones in this package, plugins add theirs
(:mod:`sae_audit.suites.registry`).
"""

from sae_audit.results.metric_info import MetricInfo
from sae_audit.suites.base import Accumulator, ImageCodes, SuiteBatch
from sae_audit.suites.registry import (
    PairContext,
    SuiteContext,
    SuiteInfo,
    available_suites,
    known_metrics,
    resolve_suites,
    suite_registrations,
)

__all__ = [
    "Accumulator", "ImageCodes", "MetricInfo", "PairContext", "SuiteBatch", "SuiteContext", "SuiteInfo",
    "available_suites", "known_metrics", "resolve_suites", "suite_registrations",
]
