"""``--fail-on`` conditions: let an audit gate CI.

A condition is ``METRIC OP NUMBER`` with an optional image-set qualifier and
an optional interval bound, or a ``shifted`` test::

    fvu_gap>0.2              any SAE, any ID/OOD pair
    fvu_gap[digits]>=0.15    only the pair whose OOD set is ``digits``
    dead_fraction[fashion-mnist:test]>0.5
    shared_alive<0.8
    fvu_gap.low>0.1          the lower bound of the 95% interval (``.high``: the upper);
    fvu_gap.low[digits]>0.1  also written ``fvu_gap[digits].low>0.1``
    auroc_rarity[digits]>0.7 a suite's metric (the suite must have run)
    shifted                  any pair metric of any pair is shifted beyond the noise floor
    shifted[digits]          any metric of the pair whose OOD set is ``digits``
    shifted.js_divergence[digits]   that metric only

``METRIC`` is any metric of the run, per dataset or per ID/OOD pair: a
coverage metric (:data:`sae_audit.results.metric_info.METRICS`) or one that a
suite of the run declared (see :mod:`sae_audit.results.metric_info`); ``OP`` is one of
``> >= < <= == !=``; ``NUMBER`` is finite. A condition *holds* when the metric
satisfies it for at least one SAE (and set); missing values (``null``, an
interval that is unavailable) never satisfy it. A pair metric's qualifier names
the OOD set of the pair. ``shifted`` follows the rule of
:mod:`sae_audit.results.shift`. Conditions that could never hold (a NaN
threshold, an image set the audit does not have, a pair metric asked of the ID
set, an interval bound or ``shifted`` with the bootstrap off) are refused
before the audit runs (:func:`check_conditions`).
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass, field

from sae_audit.errors import SaeAuditError

OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt}
_COND = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)(?:\.(low|high))?\s*(?:\[([^\]]+)\])?(?:\.(low|high))?\s*"
                   r"(>=|<=|==|!=|>|<)\s*([-+0-9.eE]+|nan|inf)\s*$")
_SHIFTED = re.compile(r"^\s*shifted(?:\.([A-Za-z_][A-Za-z0-9_]*))?\s*(?:\[([^\]]+)\])?\s*$")


@dataclass
class Condition:
    """One parsed condition. ``metric`` is ``None`` for ``shifted`` on any metric; ``bound`` is ``"low"``,
    ``"high"`` or ``None`` (the point value); ``op``/``value`` are ``None`` for ``shifted``."""

    text: str
    metric: str | None
    where: str | None
    op: str | None
    value: float | None
    bound: str | None = None
    shifted: bool = False
    matches: list[dict] = field(default_factory=list)

    @property
    def needs_intervals(self) -> bool:
        return self.shifted or self.bound is not None

    @property
    def holds(self) -> bool:
        return bool(self.matches)

    def to_json(self) -> dict:
        return {"condition": self.text, "holds": self.holds, "matches": self.matches}


def parse_condition(text: str, metrics: dict | None = None) -> Condition:
    """Parse one ``--fail-on`` condition (the grammar is in the module docstring).

    ``metrics`` are the metrics it may name (``{name: MetricInfo}``; default:
    the coverage metrics; :func:`sae_audit.suites.known_metrics` adds the suites').

    Raises:
        SaeAuditError: the syntax is wrong, the metric is unknown (the message lists the known ones), the
            number is not finite, or ``shifted`` names a metric without a shift rule.
    """
    from sae_audit.results.metric_info import METRICS

    METRICS = metrics or METRICS  # noqa: N806 - the metrics this condition may name
    sm = _SHIFTED.match(text)
    if sm:
        metric, where = sm.groups()
        if metric is not None:
            info = METRICS.get(metric)
            if info is None or info.scope != "pair" or info.shift is None:
                known = sorted(k for k, m in METRICS.items() if m.scope == "pair" and m.shift is not None)
                raise SaeAuditError(f"`fail_on` {text!r}: {metric!r} is not a pair metric with a noise floor; "
                                    f"shifted.METRIC takes one of {', '.join(known)}", field="fail_on")
        return Condition(text.strip(), metric, where.strip() if where else None, None, None, shifted=True)
    m = _COND.match(text)
    if not m:
        raise SaeAuditError(f"`fail_on` {text!r}: expected METRIC[SET] OP NUMBER, e.g. 'fvu_gap>0.2', "
                            "'fvu[digits]>=0.5' or 'fvu_gap.low[digits]>0.1' (OP is one of > >= < <= == !=), or "
                            "shifted[SET] / shifted.METRIC[SET]", field="fail_on")
    metric, bound1, where, bound2, op, num = m.groups()
    if bound1 and bound2:
        raise SaeAuditError(f"`fail_on` {text!r}: name the interval bound once (.low or .high)", field="fail_on")
    if metric not in METRICS:
        raise SaeAuditError(f"`fail_on` {text!r}: unknown metric {metric!r}; known: {', '.join(sorted(METRICS))}",
                            field="fail_on")
    try:
        value = float(num)
    except ValueError:
        raise SaeAuditError(f"`fail_on` {text!r}: {num!r} is not a number", field="fail_on") from None
    if not math.isfinite(value):
        raise SaeAuditError(f"`fail_on` {text!r}: the threshold must be a finite number (a comparison with "
                            f"{num} never means what it says)", field="fail_on")
    return Condition(text.strip(), metric, where.strip() if where else None, op, value, bound=bound1 or bound2)


def check_conditions(conditions: list[Condition], id_name: str, set_names: list[str],
                     metrics: dict | None = None, bootstrap: int | None = None) -> None:
    """Refuse conditions that could never hold for an audit of these image sets.

    Args:
        id_name: the ID set's name; ``set_names``: every set's name (ID first).
        metrics: the run's metrics (``{name: MetricInfo}``; default the coverage metrics).
        bootstrap: the audit's number of replicates, when known (0: intervals off).

    Raises:
        SaeAuditError: a qualifier names a set the audit does not have, a pair
            metric (or ``shifted``) is qualified with the ID set (pairs are named by
            their OOD set), or an interval bound or ``shifted`` is asked of an audit
            without a bootstrap.
    """
    from sae_audit.results.metric_info import METRICS

    METRICS = metrics or METRICS  # noqa: N806
    for c in conditions:
        if c.needs_intervals and bootstrap == 0:
            raise SaeAuditError(f"`fail_on` {c.text!r} needs intervals, but `bootstrap` is 0 (intervals off); "
                                "set `bootstrap` to a number of replicates (200 by default)", field="fail_on")
        if c.where is None:
            continue
        if c.where not in set_names:
            raise SaeAuditError(f"`fail_on` {c.text!r}: no image set {c.where!r} in this audit (sets: "
                                f"{', '.join(set_names)})", field="fail_on")
        pairwise = c.shifted or METRICS[c.metric].scope == "pair"
        if pairwise and c.where == id_name:
            what = "shifted" if c.shifted else c.metric
            raise SaeAuditError(f"`fail_on` {c.text!r}: {what} compares the ID set with an OOD set; qualify it "
                                f"with an OOD set ({', '.join(n for n in set_names if n != id_name)})",
                                field="fail_on")


def _pairs(s: dict) -> list[dict]:
    """Every pair dict of one SAE entry: coverage's, then each suite's."""
    out = list(s.get("pairs") or [])
    for entry in (s.get("suites") or {}).values():
        out += [p for p in entry.get("pairs") or [] if isinstance(p, dict)]
    return out


def _judged(results: dict, c: Condition) -> bool:
    """Whether some pair holds a shift verdict (``True``/``False``, not ``None``) that ``c`` asks about."""
    return any(isinstance(flag, bool) and c.metric in (None, key)
               for s in results["saes"] for p in _pairs(s) if c.where in (None, p.get("ood"))
               for key, flag in (p.get("shifted") or {}).items())


def evaluate(conditions: list[Condition], results: dict) -> list[Condition]:
    """Fill each condition's ``matches`` from ``results``; returns the conditions.

    A match is ``{"sae", "set", "value"}``; for ``shifted``, ``value`` is ``True`` and ``metrics`` lists
    the shifted metrics.

    Raises:
        SaeAuditError: a qualifier names an image set the audit does not have, the audit has no such
            metric (its suite did not run), or a ``shifted`` condition cannot be judged (no pair it asks
            about has a verdict: the noise floor was unavailable).
    """
    from sae_audit.results.metric_info import document_metrics, is_number, metric_intervals, metric_items

    known = document_metrics(results)  # the coverage metrics and the suites' of this document
    names = [d["name"] for d in results["datasets"]]
    unknown = [c for c in conditions if c.metric is not None and c.metric not in known]
    if unknown:
        raise SaeAuditError(f"`fail_on` {unknown[0].text!r}: this audit has no metric {unknown[0].metric!r} (did "
                            "its suite run?)", field="fail_on")
    check_conditions(conditions, next(d["name"] for d in results["datasets"] if d["role"] == "id"), names, known)
    for c in conditions:
        if c.shifted and not _judged(results, c):
            why = next((s["noise_floor"]["unavailable"] for s in results["saes"]
                        if isinstance(s.get("noise_floor"), dict) and s["noise_floor"].get("unavailable")),
                       "no pair carries a shift verdict")
            raise SaeAuditError(f"`fail_on` {c.text!r} cannot be judged: the noise floor is unavailable ({why})",
                                field="fail_on")
    for c in conditions:
        c.matches = []
        for s in results["saes"]:
            if c.shifted:
                by_set: dict[str, list[str]] = {}
                for p in _pairs(s):
                    if c.where not in (None, p.get("ood")):
                        continue
                    for key, flag in (p.get("shifted") or {}).items():
                        if flag is True and c.metric in (None, key):
                            by_set.setdefault(f"{p['id']} vs {p['ood']}", []).append(key)
                c.matches += [{"sae": s["label"], "set": where, "value": True, "metrics": keys}
                              for where, keys in by_set.items()]
                continue
            info = known[c.metric]
            for name, id_name, v in metric_items(s, info):
                if c.where not in (None, name):
                    continue
                if c.bound is not None:
                    interval, _ = metric_intervals(s, info, name)
                    v = interval[0 if c.bound == "low" else 1] if interval else None
                if is_number(v) and OPS[c.op](v, c.value):
                    where = name if id_name is None else f"{id_name} vs {name}"
                    c.matches.append({"sae": s["label"], "set": where, "value": v})
    return conditions
