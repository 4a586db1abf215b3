"""What each metric of the results document means: label, direction, formatting, where it lives.

``results.json`` carries this table under ``metrics`` so a reader (a person, a
dashboard, ``sae-audit report diff``, a ``--fail-on`` condition) knows whether
a larger value is better, and where to find it, without reading the code.

Two kinds of metric:

- the coverage metrics (:data:`METRICS`), in every audit: a per-set metric
  ``key`` is ``saes[i].datasets[SET][key]``, a per-pair one
  ``saes[i].pairs[j][key]``;
- the metrics a suite declares when it registers (``register(...,
  metrics=[MetricInfo(...)])``, see the ``sae_audit_register_suites`` hook):
  ``suite`` names the suite and ``path`` the keys inside the suite's output,
  so a per-set value is ``saes[i].suites[SUITE].datasets[SET][path...]`` and a
  per-pair one ``saes[i].suites[SUITE].pairs[j][path...]``. The table of a
  results document lists the suite metrics of the suites that ran, so the
  document alone is enough to gate on them or diff them, with or without the
  plugin installed (:func:`document_metrics`, :func:`metric_items`).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace

#: A metric name: what ``--fail-on`` takes (no dots, no brackets: the condition grammar uses them).
METRIC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SCOPES = ("dataset", "pair")


@dataclass(frozen=True)
class MetricInfo:
    """One metric.

    Attributes:
        key: the metric's name, unique in a run (``--fail-on`` and ``report diff`` use it):
            letters, digits and ``_``, not starting with a digit.
        label: short human-readable name for tables.
        higher_is_better: ``True``/``False``, or ``None`` when the metric is
            descriptive (neither direction is better, e.g. an input count).
        scope: ``"dataset"`` (one value per image set) or ``"pair"`` (one value
            per ID/OOD pair, filed under the OOD set).
        description: one sentence.
        pct: format as a percentage.
        digits: decimals when formatting.
        in_report: shown in the report's metric tables.
        suite: the suite whose output holds the value; ``None`` for the coverage metrics.
        path: the keys leading to the value inside the suite's per-set (or
            per-pair) output dict; default ``(key,)``. Ignored without ``suite``.
        interval: the keys leading to the value's 95% interval ``[low, high]``
            in the same dict, when the suite computes one (SPEC section 5).
        floor: for a pair metric, the keys leading to the noise floor's 95%
            interval ``[low, high]`` (the metric between two halves of the ID set).
        plugin: the plugin that registered the suite (set by the host).
        shift: for pair metrics, the direction in which a pair is *shifted* beyond
            the noise floor (SPEC section 5): ``1`` its interval lies above the
            floor's, ``-1`` below it, ``0`` either way (an AUROC moves away from
            chance in both directions), ``None`` no shift rule.
    """

    key: str
    label: str
    higher_is_better: bool | None
    scope: str
    description: str = ""
    pct: bool = False
    digits: int = 3
    in_report: bool = True
    suite: str | None = None
    path: tuple[str, ...] | None = None
    interval: tuple[str, ...] | None = None
    floor: tuple[str, ...] | None = None
    plugin: str | None = None
    shift: int | None = None

    def __post_init__(self) -> None:
        for name in ("path", "interval", "floor"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
            elif value is not None:
                object.__setattr__(self, name, tuple(value))

    @property
    def where(self) -> tuple[str, ...]:
        """The keys leading to the value inside a per-set or per-pair dict (``path`` or ``(key,)``)."""
        return self.path or (self.key,)

    def to_json(self) -> dict:
        d = asdict(self)
        out = {k: d[k] for k in ("label", "higher_is_better", "scope", "description")}
        if self.suite is not None:
            out.update(suite=self.suite, path=list(self.where), plugin=self.plugin, pct=self.pct, digits=self.digits)
        if self.shift is not None:
            out["shift"] = self.shift
        out.update({k: list(getattr(self, k)) for k in ("interval", "floor") if getattr(self, k)})
        return out


def check_metric(info) -> MetricInfo:
    """``info`` when it is a well-formed :class:`MetricInfo`; ``ValueError`` saying what is wrong otherwise."""
    if not isinstance(info, MetricInfo):
        raise ValueError(f"a metric must be a sae_audit.results.MetricInfo, got {type(info).__name__} {info!r:.60}")
    if not isinstance(info.key, str) or not METRIC_NAME.match(info.key):
        raise ValueError(f"metric name {info.key!r} must be letters, digits and '_' (not starting with a digit): "
                         "it is what --fail-on conditions name")
    if info.scope not in SCOPES:
        raise ValueError(f"metric {info.key!r}: scope must be 'dataset' or 'pair', got {info.scope!r}")
    if not isinstance(info.label, str) or not info.label.strip():
        raise ValueError(f"metric {info.key!r}: label must be a non-empty string")
    if info.higher_is_better not in (True, False, None):
        raise ValueError(f"metric {info.key!r}: higher_is_better must be True, False or None, "
                         f"got {info.higher_is_better!r}")
    if not isinstance(info.description, str):
        raise ValueError(f"metric {info.key!r}: description must be a string")
    for name in ("path", "interval", "floor"):
        keys = getattr(info, name)
        if keys is not None and (not keys or not all(isinstance(p, str) and p for p in keys)):
            raise ValueError(f"metric {info.key!r}: {name} must be a key or a non-empty sequence of keys (strings), "
                             f"got {keys!r}")
    if info.floor is not None and info.scope != "pair":
        raise ValueError(f"metric {info.key!r}: only a pair metric has a noise floor")
    if info.shift not in (None, -1, 0, 1):
        raise ValueError(f"metric {info.key!r}: shift must be 1, -1, 0 or None, got {info.shift!r}")
    if info.shift is not None and info.scope != "pair":
        raise ValueError(f"metric {info.key!r}: only a pair metric is shifted beyond the noise floor")
    return info


METRICS: dict[str, MetricInfo] = {}


def register_metric(info: MetricInfo) -> MetricInfo:
    """Add (or replace) a coverage metric's metadata; returns it. Raises ``ValueError`` (:func:`check_metric`).

    Suites declare their metrics when they register instead (``register(..., metrics=[...])``).
    """
    METRICS[check_metric(info).key] = info
    return info


for _m in [
    MetricInfo("fvu", "FVU", False, "dataset", "fraction of variance unexplained, about the dataset mean"),
    MetricInfo("explained_variance", "explained variance", True, "dataset", "1 - FVU"),
    MetricInfo("cosine", "cosine(x, x̂)", True, "dataset", "mean cosine similarity of input and reconstruction"),
    MetricInfo("relative_mse", "relative MSE", False, "dataset", "mean ||x - x̂||² / ||x||²"),
    MetricInfo("alive_fraction", "alive latents", True, "dataset", "share of latents that fire at least once",
               pct=True),
    MetricInfo("dead_fraction", "dead latents", False, "dataset", "share of latents that never fire", pct=True),
    MetricInfo("dense_fraction", "dense latents (f > threshold)", False, "dataset",
               "share of latents firing on more than the dense threshold of inputs", pct=True),
    MetricInfo("l0_mean", "L0 (mean)", None, "dataset", "mean number of non-zero latents per input", digits=2),
    MetricInfo("effective_units_mean", "effective units (mean)", None, "dataset",
               "mean (||z||₁/||z||₂)² per input", digits=2),
    MetricInfo("n_inputs", "inputs (tokens)", None, "dataset", "inputs the SAE read", interval=()),
    MetricInfo("n_nonfinite", "non-finite inputs dropped", False, "dataset", "inputs with NaN or inf, skipped",
               interval=()),
    MetricInfo("fvu_gap", "FVU gap (OOD − ID)", False, "pair",
               "FVU on the OOD set minus FVU on the ID set: OOD variance the dictionary fails to cover", shift=1),
    MetricInfo("shared_alive", "shared alive (of ID alive)", True, "pair",
               "|alive_ID ∩ alive_OOD| / |alive_ID|", pct=True, shift=-1),
    MetricInfo("n_ood_only", "OOD-only latents", None, "pair", "latents alive on OOD and dead on ID", digits=1,
               shift=1),
    MetricInfo("n_id_only", "ID-only latents", None, "pair", "latents alive on ID and dead on OOD", digits=1,
               shift=1),
    MetricInfo("js_divergence", "JS divergence of frequencies (bits)", False, "pair",
               "Jensen-Shannon divergence (base 2) of the normalised frequency profiles", shift=1),
    MetricInfo("spearman", "Spearman ρ of frequencies", True, "pair",
               "rank correlation of the ID and OOD frequency profiles", shift=-1),
]:
    # Where the interval and the floor are: beside the value, in one shape for every metric (SPEC section 5).
    if _m.interval is None:
        _m = replace(_m, interval=("intervals", _m.key))
    elif not _m.interval:  # a descriptive count: no interval
        _m = replace(_m, interval=None)
    if _m.scope == "pair" and _m.shift is not None:
        _m = replace(_m, floor=("floor", _m.key))
    register_metric(_m)


def metrics_table() -> dict[str, dict]:
    """The ``metrics`` block of a results document."""
    return {k: m.to_json() for k, m in METRICS.items()}


def metrics_of(scope: str) -> list[MetricInfo]:
    """The coverage metrics of ``scope`` shown in the report's tables."""
    return [m for m in METRICS.values() if m.scope == scope and m.in_report]


def metric_from_json(key: str, entry: dict) -> MetricInfo:
    """A :class:`MetricInfo` from one entry of a results document's ``metrics`` table.

    A coverage metric keeps this sae-audit's formatting (percentages, digits);
    a suite metric takes everything from the entry.
    """
    known = METRICS.get(key)
    if known is not None and not entry.get("suite"):
        return known
    keys = {k: tuple(entry[k]) if entry.get(k) else None for k in ("path", "interval", "floor")}
    return MetricInfo(key, str(entry.get("label") or key), entry.get("higher_is_better"),
                      entry.get("scope", "dataset"), str(entry.get("description") or ""),
                      pct=bool(entry.get("pct", False)), digits=int(entry.get("digits", 3)),
                      suite=entry.get("suite"), plugin=entry.get("plugin"), shift=entry.get("shift"), **keys)


def document_metrics(results: dict) -> dict[str, MetricInfo]:
    """Every metric a results document holds: the coverage metrics, then the suite metrics of its table."""
    out = dict(METRICS)
    for key, entry in (results.get("metrics") or {}).items():
        if isinstance(entry, dict) and entry.get("suite"):
            out[key] = metric_from_json(key, entry)
    return out


def _dig(value, path: tuple[str, ...]):
    for p in path:
        if not isinstance(value, dict):
            return None
        value = value.get(p)
    return value


def _places(sae: dict, info: MetricInfo) -> list[tuple[str, str | None, dict]]:
    """``(set, id_set, dict holding the value)`` for each place metric ``info`` has a value in one SAE entry."""
    if info.suite is None:
        if info.scope == "dataset":
            return [(name, None, d or {}) for name, d in sae.get("datasets", {}).items()]
        return [(p["ood"], p.get("id"), p) for p in sae.get("pairs", [])]
    suite = (sae.get("suites") or {}).get(info.suite) or {}
    if info.scope == "dataset":
        return [(name, None, d if isinstance(d, dict) else {}) for name, d in (suite.get("datasets") or {}).items()]
    return [(p.get("ood"), p.get("id"), p) for p in suite.get("pairs") or [] if isinstance(p, dict)]


def metric_items(sae: dict, info: MetricInfo) -> list[tuple[str, str | None, object]]:
    """The values of metric ``info`` for one SAE entry of a results document.

    Returns ``(set, id_set, value)`` triples: for a per-set metric one per
    image set (``id_set`` is ``None``), for a per-pair metric one per ID/OOD
    pair (``set`` is the OOD set). ``value`` is what the document holds there
    (``None`` when missing, or when the suite was skipped on that set).
    """
    return [(name, id_name, _dig(d, info.where)) for name, id_name, d in _places(sae, info)]


def metric_intervals(sae: dict, info: MetricInfo, name: str) -> tuple[list | None, list | None]:
    """``(interval, floor)`` of metric ``info`` on set (or pair with OOD set) ``name``: each a ``[low, high]``
    list of numbers, or ``None`` when the metric declares none or the document lacks it."""
    for n, _, d in _places(sae, info):
        if n == name:
            got = [_dig(d, keys) if keys else None for keys in (info.interval, info.floor)]
            return tuple(g if isinstance(g, list) and len(g) == 2 and all(is_number(x) for x in g) else None
                         for g in got)  # type: ignore[return-value]
    return None, None


def is_number(value) -> bool:
    """A real number a metric can hold (``bool`` is not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
