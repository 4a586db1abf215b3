"""The audit-suite registry: suites from the ``sae_audit_register_suites`` hook.

The built-in plugin registers coverage (always run) and the built-in suites;
plugins add others. What a plugin registers is checked here, next to the code
that uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from sae_audit.errors import SaeAuditError
from sae_audit.plugin_manager import PluginError, Registration, RegistrationError, get_plugin_manager
from sae_audit.results.metric_info import METRICS, MetricInfo, check_metric
from sae_audit.suites.base import Accumulator

KIND = "suites"


@dataclass(frozen=True)
class SuiteContext:
    """What a suite factory gets to build one accumulator (one SAE, one image set).

    Attributes:
        sae: the SAE being audited (:class:`~sae_audit.sae.SAE`).
        judge_name: the model whose pooled output gives judge embeddings.
        judge_width: ``d_e``, the width of those embeddings (``None`` when no judge runs).
        seed: the audit's seed.
        image_set: the name of the image set the accumulator will see.
        bootstrap: the number of bootstrap replicates (0: off); the batches carry the weights.
    """

    sae: Any
    judge_name: str = ""
    judge_width: int | None = None
    seed: int = 0
    image_set: str = ""
    bootstrap: int = 0


@dataclass(frozen=True)
class PairContext:
    """What a suite's ``compare`` gets for one ID/OOD pair besides the two accumulators.

    Attributes:
        id_set, ood_set: the image sets (random access by dataset index), or ``None``.
        coverage: the coverage suite's pair dict (:func:`sae_audit.suites.coverage.compare`).
    """

    id_set: Any = None
    ood_set: Any = None
    coverage: dict | None = None


@dataclass(frozen=True)
class SuiteInfo:
    """One registered suite.

    Attributes:
        name: what ``--suite`` takes.
        description: one line for ``sae-audit suites``.
        factory: ``SuiteContext -> accumulator`` (a fresh one per SAE and image set).
        compare: optional ``(id_acc, ood_acc, PairContext) -> dict`` run per ID/OOD pair
            after both accumulators finished streaming.
        needs_labels: the suite is skipped (or an error under strict mode) on an unlabelled set.
        needs_embeddings: batches must carry judge embeddings.
        needs_outputs: batches must carry the model's outputs with the SAE spliced in
            (:class:`~sae_audit.models.splice.SpliceOutputs`; the fidelity suite).
        floor: ``compare`` is also run on two halves of the ID set (the noise floor,
            SPEC section 5); default: whenever there is a ``compare``.
        plugin: the plugin that registered it.
        metrics: the metrics the suite declared (:class:`~sae_audit.results.MetricInfo`
            with ``suite`` and ``plugin`` filled in): they join the results' ``metrics``
            table, ``--fail-on``, ``report diff``, the model card and the verdict.
    """

    name: str
    description: str
    factory: Callable[[SuiteContext], Accumulator]
    compare: Callable[[Any, Any, PairContext], dict] | None = None
    needs_labels: bool = False
    needs_embeddings: bool = False
    needs_outputs: bool = False
    floor: bool = False
    plugin: str = ""
    metrics: tuple[MetricInfo, ...] = ()


def _accept(name, factory, description, compare=None, needs_labels=False, needs_embeddings=False,
            needs_outputs=False, floor=None, metrics=()) -> tuple:
    """``register(name, factory, description, compare=None, needs_labels=False, needs_embeddings=False,
    needs_outputs=False, floor=None, metrics=())`` (see the hook's documentation)."""
    if name in ("all",):
        raise RegistrationError("a suite cannot be named 'all' (it selects every suite)")
    if not callable(factory):
        raise RegistrationError(f"factory must be callable, got {type(factory).__name__} {factory!r:.60}")
    if compare is not None and not callable(compare):
        raise RegistrationError(f"compare must be callable, got {type(compare).__name__} {compare!r:.60}")
    if not isinstance(description, str):
        raise RegistrationError(f"description must be a string, got {type(description).__name__}")
    if isinstance(metrics, MetricInfo) or not isinstance(metrics, (list, tuple)):
        raise RegistrationError(f"suite {name!r}: metrics must be a list of sae_audit.results.MetricInfo, got "
                                f"{type(metrics).__name__}")
    declared: list[MetricInfo] = []
    for m in metrics:
        try:
            check_metric(m)
        except ValueError as exc:
            raise RegistrationError(f"suite {name!r}: {exc}") from None
        if m.key in METRICS:
            raise RegistrationError(f"suite {name!r}: metric {m.key!r} is a coverage metric of sae-audit; name "
                                    "yours differently (e.g. prefix it with the suite's name)")
        if m.scope == "pair" and compare is None:
            raise RegistrationError(f"suite {name!r}: metric {m.key!r} is per pair, but the suite has no compare")
        if any(d.key == m.key for d in declared):
            raise RegistrationError(f"suite {name!r} declares metric {m.key!r} twice")
        declared.append(replace(m, suite=name))
    floor = compare is not None if floor is None else bool(floor) and compare is not None
    return name, (factory, compare, bool(needs_labels), bool(needs_embeddings), bool(needs_outputs), floor,
                  tuple(declared)), description, ()


def suite_registrations() -> list[Registration]:
    """Every registered suite, coverage first.

    Raises:
        sae_audit.plugin_manager.PluginError: two plugins register the same suite name.
    """
    return get_plugin_manager().registrations(KIND, _accept)


def _info(r: Registration) -> SuiteInfo:
    factory, compare, needs_labels, needs_embeddings, needs_outputs, floor, metrics = r.value
    return SuiteInfo(r.name, r.description, factory, compare, needs_labels, needs_embeddings, needs_outputs, floor,
                     plugin=r.plugin, metrics=tuple(replace(m, plugin=r.plugin) for m in metrics))


def available_suites() -> dict[str, SuiteInfo]:
    """Every runnable suite by name: the built-ins and plugins', coverage excluded (it always runs).

    Raises:
        sae_audit.plugin_manager.PluginError: two plugins register the same suite name, or
            two suites declare the same metric name (the message names both plugins).
    """
    suites = {r.name: _info(r) for r in suite_registrations() if r.name != "coverage"}
    seen: dict[str, SuiteInfo] = {}
    for info in suites.values():
        for m in info.metrics:
            other = seen.get(m.key)
            if other is not None:
                manager = get_plugin_manager()
                raise PluginError(f"metric {m.key!r} is declared twice: by suite {other.name!r} of "
                                  f"{manager.who(other.plugin)} and by suite {info.name!r} of "
                                  f"{manager.who(info.plugin)}; uninstall one, or leave one out with "
                                  "SAE_AUDIT_LOAD_PLUGINS=<the plugins to load>")
            seen[m.key] = info
    return suites


def known_metrics(suites=None) -> dict[str, MetricInfo]:
    """The coverage metrics and the metrics of the registered suites (of those named in ``suites``, when given).

    Raises:
        sae_audit.plugin_manager.PluginError: as :func:`available_suites`.
    """
    out = dict(METRICS)
    for info in available_suites().values():
        if suites is None or info.name in suites:
            out.update({m.key: m for m in info.metrics})
    return out


def resolve_suites(names) -> list[SuiteInfo]:
    """The :class:`SuiteInfo` s for ``names`` (``"all"`` = every registered suite; ``coverage`` is implicit).

    Raises:
        SaeAuditError: an unknown name (the message lists the known ones).
    """
    known = available_suites()
    out: dict[str, SuiteInfo] = {}
    for name in names or ():
        if name == "all":
            out.update(known)
        elif name == "coverage":
            continue
        elif name in known:
            out[name] = known[name]
        else:
            raise SaeAuditError(f"unknown suite {name!r}; known: all, coverage, {', '.join(known)}")
    return list(out.values())
