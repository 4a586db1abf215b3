"""Audit suites and their registry.

Every suite is an accumulator with ``accumulate(batch)``, ``merge(other)`` and
``finish() -> dict`` (:mod:`sae_audit.suites.base`). The coverage suite always
runs; the others are listed in :data:`SUITES` and chosen by name
(``sae-audit run --suite NAME``). The built-in plugin
(:mod:`sae_audit.builtin_plugin`) hands :data:`SUITES` to the plugin manager
through the ``sae_audit_register_suites`` hook, where plugins' suites join
them; :func:`resolve_suites` reads that merged registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from sae_audit.errors import SaeAuditError
from sae_audit.suites.base import Accumulator, SuiteBatch


@dataclass(frozen=True)
class SuiteContext:
    """What a suite factory gets to build one accumulator (one SAE, one image set).

    Attributes:
        sae: the :class:`~sae_audit.sae.TopKSAE` being audited.
        judge_name: the model whose pooled output gives judge embeddings.
        judge_width: ``d_e``, the width of those embeddings (``None`` when no judge runs).
        seed: the audit's seed.
    """

    sae: Any
    judge_name: str = ""
    judge_width: int | None = None
    seed: int = 0


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
        needs_labels: the suite is skipped (or an error under ``--strict``) on an unlabelled set.
        needs_embeddings: batches must carry judge embeddings.
    """

    name: str
    description: str
    factory: Callable[[SuiteContext], Accumulator]
    compare: Callable[[Any, Any, PairContext], dict] | None = None
    needs_labels: bool = False
    needs_embeddings: bool = False


SUITES: dict[str, SuiteInfo] = {}


def register_suite(info: SuiteInfo, replace: bool = False) -> SuiteInfo:
    """Add ``info`` to :data:`SUITES`.

    Raises:
        SaeAuditError: the name is taken (unless ``replace``), is ``all`` or ``coverage``, or is empty.
    """
    if not info.name or info.name in ("all", "coverage"):
        raise SaeAuditError(f"a suite cannot be named {info.name!r}")
    if info.name in SUITES and not replace:
        raise SaeAuditError(f"a suite named {info.name!r} is already registered")
    SUITES[info.name] = info
    return info


def available_suites() -> dict[str, SuiteInfo]:
    """Every runnable suite by name: the built-ins and plugins' (through the plugin manager), coverage excluded."""
    from sae_audit.plugins import get_plugin_manager

    return {name: reg.value for name, reg in get_plugin_manager().suites().items() if name != "coverage"}


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


def _builtin() -> None:
    from sae_audit.suites import k_robustness, monosemanticity, ood, pictures, probing, purity

    register_suite(SuiteInfo(
        "monosemanticity", "monosemanticity score per latent against judge embeddings (Pach et al. 2025)",
        lambda c: monosemanticity.MonosemanticityAccumulator(c.sae.d_sae, c.judge_width, c.judge_name),
        needs_embeddings=True))
    register_suite(SuiteInfo(
        "purity", "share of each latent's top-16 images in its most common class (labelled sets)",
        lambda c: purity.PurityAccumulator(c.sae.d_sae), needs_labels=True))
    register_suite(SuiteInfo(
        "probing", "held-out accuracy of a logistic regression on each image's top-m latents, m in 1,2,4,8,k",
        lambda c: probing.ProbingAccumulator(c.sae.d_sae, c.sae.k, seed=c.seed), needs_labels=True))
    register_suite(SuiteInfo(
        "k-robustness", "FVU and L0 with the inference budget swapped to k/4, k/2, k, 2k, 4k",
        lambda c: k_robustness.KRobustnessAccumulator(c.sae)))
    register_suite(SuiteInfo(
        "ood-detection", "AUROC of per-image FVU, L0, effective units and latent rarity for ID vs OOD",
        lambda c: ood.OODAccumulator(c.sae.d_sae, c.sae.d_in),
        compare=lambda a, b, ctx: ood.compare(a, b)))
    register_suite(SuiteInfo(
        "pictures", "thumbnails of the top images of the most shifted and OOD-only latents",
        lambda c: pictures.PicturesAccumulator(c.sae.d_sae),
        compare=lambda a, b, ctx: pictures.compare(a, b, ctx.coverage or {}, ctx.id_set, ctx.ood_set)))


_builtin()

__all__ = ["SUITES", "available_suites", "PairContext", "SuiteBatch", "SuiteContext", "SuiteInfo", "register_suite", "resolve_suites"]
