"""What an audit is asked to do: :class:`AuditRequest` (by name) and :class:`AuditSettings` (how it streams)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from sae_audit.data import ImageOptions
from sae_audit.errors import SaeAuditError
from sae_audit.models import ModelSpec
from sae_audit.models.hookpoint import TOKEN_SETS
from sae_audit.options import option
from sae_audit.results.gate import Condition, parse_condition

#: Bounds of ``AuditSettings.bootstrap`` (besides 0, off): fewer than 20 replicates cannot place the
#: 2.5th and 97.5th percentiles apart from the extremes; above 10,000 the memory (R x d_sae per image
#: set) and time grow for no gain in a 95% interval.
MIN_BOOTSTRAP, MAX_BOOTSTRAP = 20, 10_000


@dataclass(frozen=True)
class AuditSettings:
    """How the streaming pass runs.

    Raises:
        SaeAuditError: ``dense_threshold`` outside [0, 1]; ``bootstrap`` not 0 and not between
            :data:`MIN_BOOTSTRAP` and :data:`MAX_BOOTSTRAP`.
    """

    images: ImageOptions = field(default_factory=ImageOptions)
    dense_threshold: float = option(0.1, metavar="F",
                                    help="a latent firing on more than F of the inputs counts as dense")
    bootstrap: int = option(200, metavar="R",
                            help="Poisson-bootstrap replicates behind every metric's 95-percent interval and the "
                                 "noise-floor verdict (0 turns intervals off; memory about R x d_sae numbers per "
                                 "image set)")

    def __post_init__(self) -> None:
        r = self.bootstrap
        if isinstance(r, bool) or not isinstance(r, int) or not (r == 0 or MIN_BOOTSTRAP <= r <= MAX_BOOTSTRAP):
            raise SaeAuditError(
                f"`bootstrap` is 0 (intervals off) or a number of replicates from {MIN_BOOTSTRAP} to {MAX_BOOTSTRAP}, "
                f"got {r!r}" + (" (fewer cannot place a 2.5th and a 97.5th percentile)" if isinstance(r, int) and
                                0 < r < MIN_BOOTSTRAP else ""), field="bootstrap")
        t = self.dense_threshold
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0 <= t <= 1:
            raise SaeAuditError(f"`dense_threshold` is a fraction of inputs between 0 and 1, got {t!r}",
                                field="dense_threshold")

    @property
    def batch_size(self) -> int:
        return self.images.batch_size

    def as_json(self) -> dict:
        """The ``settings`` block of the results document (flat)."""
        return {**asdict(self.images), "dense_threshold": self.dense_threshold, "bootstrap": self.bootstrap}


@dataclass(frozen=True, kw_only=True)
class AuditRequest:
    """Everything one audit needs, by name: what ``sae-audit run`` builds from its flags.

    Raises:
        SaeAuditError: no SAE or OOD set, the same image set twice, a token set
            that does not exist (the message names the field).
    """

    model: ModelSpec
    saes: tuple[str, ...] = option(help="SAE folder, hub id or hub_id/subfolder (several SAEs are shown side by "
                                        "side)", metavar="SAE")
    id_set: str = option(help="in-distribution image set: a named set (see `sae-audit sets`), a folder or an IDX "
                              "file", metavar="SET")
    ood_sets: tuple[str, ...] = option(help="out-of-distribution image set(s)", metavar="SET")
    settings: AuditSettings = field(default_factory=AuditSettings)
    hook: str | None = option(None, metavar="block.L", help="hook point for SAEs whose config records none")
    tokens: str | None = option(None, choices=TOKEN_SETS, help="token set for SAEs whose config records none")
    suites: tuple[str, ...] = option((), metavar="NAME",
                                     help="audit suites to run besides coverage (`all` for every one; "
                                          "`sae-audit suites` lists them)")
    judge: str | None = option(None, metavar="MODEL",
                               help="model whose pooled output gives the monosemanticity suite's judge embeddings "
                                    "(default: the audited model)")
    fail_on: tuple[str, ...] = option(
        (), metavar="COND",
        help="conditions to gate on, e.g. 'fvu_gap>0.2', 'fvu[digits]>=0.5', 'shared_alive<0.8' (any metric of "
             "results.json), 'fvu_gap.low[digits]>0.1' (a bound of its 95 percent interval), 'shifted' or "
             "'shifted.js_divergence[digits]' (beyond the ID-vs-ID noise floor); checked against the image sets "
             "before the audit runs")

    def __post_init__(self) -> None:
        for name in ("saes", "ood_sets", "suites", "fail_on"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise SaeAuditError(f"`{name}` must be a sequence of strings, got {value!r}", field=name)
            object.__setattr__(self, name, tuple(value))
        if not self.saes:
            raise SaeAuditError("no SAE to audit: pass at least one `saes`", field="saes")
        if not self.ood_sets:
            raise SaeAuditError("no OOD image set: pass at least one `ood_sets`", field="ood_sets")
        names = [self.id_set, *self.ood_sets]
        if len(set(names)) != len(names):
            raise SaeAuditError(f"every image set must differ: `id_set` and `ood_sets` were given {names}",
                                field="ood_sets")
        if self.tokens is not None and self.tokens not in TOKEN_SETS:
            raise SaeAuditError(f"`tokens` must be one of {', '.join(TOKEN_SETS)}, got {self.tokens!r}",
                                field="tokens")
        for c in self.conditions():  # a typo fails here, before any work
            if c.needs_intervals and self.settings.bootstrap == 0:
                raise SaeAuditError(f"`fail_on` {c.text!r} needs intervals, but `bootstrap` is 0 (intervals off)",
                                    field="fail_on")

    def input_paths(self) -> list[str]:
        """The local files and folders this audit reads (model, SAEs, image sets, judge): outputs must not hold them."""
        names = [self.model.name, *self.saes, self.id_set, *self.ood_sets, self.judge]
        return [n for n in names if n is not None and os.path.lexists(os.path.expanduser(n))]

    def image_folders(self) -> list[str]:
        """The image-set folders this audit reads (outputs must not lie inside them)."""
        return [n for n in (self.id_set, *self.ood_sets) if os.path.isdir(os.path.expanduser(n))]

    def conditions(self) -> list[Condition]:
        """The parsed ``fail_on`` conditions (:func:`sae_audit.results.gate.parse_condition`): on the
        coverage metrics and every registered suite's (:func:`sae_audit.suites.known_metrics`)."""
        if not self.fail_on:
            return []
        from sae_audit.suites import known_metrics

        metrics = known_metrics()
        return [parse_condition(c, metrics) for c in self.fail_on]
