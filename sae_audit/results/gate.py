"""``--fail-on`` conditions: let an audit gate CI.

A condition is ``METRIC OP NUMBER`` with an optional image-set qualifier::

    fvu_gap>0.2              any SAE, any ID/OOD pair
    fvu_gap[digits]>=0.15    only the pair whose OOD set is ``digits``
    dead_fraction[fashion-mnist:test]>0.5
    shared_alive<0.8

``METRIC`` is any metric of the run, per dataset or per ID/OOD pair: a
coverage metric (:data:`sae_audit.results.metric_info.METRICS`) or one that a
suite of the run declared (found in the suite's output; see
:mod:`sae_audit.results.metric_info`); ``OP`` is one of ``> >= < <= == !=``;
``NUMBER`` is finite. A condition *holds* when the metric satisfies it for at least one
SAE (and set); missing values (``null``) never satisfy it. A pair metric's
qualifier names the OOD set of the pair. Conditions that could never hold (a
NaN threshold, an image set the audit does not have, a pair metric asked of
the ID set) are refused before the audit runs (:func:`check_conditions`).
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass, field

from sae_audit.errors import SaeAuditError

OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt}
_COND = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\[([^\]]+)\])?\s*(>=|<=|==|!=|>|<)\s*([-+0-9.eE]+|nan|inf)\s*$")


@dataclass
class Condition:
    text: str
    metric: str
    where: str | None
    op: str
    value: float
    matches: list[dict] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return bool(self.matches)

    def to_json(self) -> dict:
        return {"condition": self.text, "holds": self.holds, "matches": self.matches}


def parse_condition(text: str, metrics: dict | None = None) -> Condition:
    """Parse one ``--fail-on`` condition.

    ``metrics`` are the metrics it may name (``{name: MetricInfo}``; default:
    the coverage metrics; :func:`sae_audit.suites.known_metrics` adds the suites').

    Raises:
        SaeAuditError: the syntax is wrong, the metric is unknown (the message lists the known ones) or the
            number is not finite.
    """
    from sae_audit.results.metric_info import METRICS

    known = metrics or METRICS
    m = _COND.match(text)
    if not m:
        raise SaeAuditError(f"`fail_on` {text!r}: expected METRIC[SET] OP NUMBER, e.g. 'fvu_gap>0.2' or "
                            "'fvu[digits]>=0.5' (OP is one of > >= < <= == !=)", field="fail_on")
    metric, where, op, num = m.groups()
    if metric not in known:
        raise SaeAuditError(f"`fail_on` {text!r}: unknown metric {metric!r}; known: {', '.join(sorted(known))}",
                            field="fail_on")
    try:
        value = float(num)
    except ValueError:
        raise SaeAuditError(f"`fail_on` {text!r}: {num!r} is not a number", field="fail_on") from None
    if not math.isfinite(value):
        raise SaeAuditError(f"`fail_on` {text!r}: the threshold must be a finite number (a comparison with "
                            f"{num} never means what it says)", field="fail_on")
    return Condition(text.strip(), metric, where.strip() if where else None, op, value)


def check_conditions(conditions: list[Condition], id_name: str, set_names: list[str],
                     metrics: dict | None = None) -> None:
    """Refuse conditions that could never hold for an audit of these image sets.

    Args:
        id_name: the ID set's name; ``set_names``: every set's name (ID first).
        metrics: the run's metrics (``{name: MetricInfo}``; default the coverage metrics).

    Raises:
        SaeAuditError: a qualifier names a set the audit does not have, or a pair
            metric is qualified with the ID set (pairs are named by their OOD set).
    """
    from sae_audit.results.metric_info import METRICS

    known = metrics or METRICS
    for c in conditions:
        if c.where is None:
            continue
        if c.where not in set_names:
            raise SaeAuditError(f"`fail_on` {c.text!r}: no image set {c.where!r} in this audit (sets: "
                                f"{', '.join(set_names)})", field="fail_on")
        if known[c.metric].scope == "pair" and c.where == id_name:
            raise SaeAuditError(f"`fail_on` {c.text!r}: {c.metric} compares the ID set with an OOD set; qualify it "
                                f"with an OOD set ({', '.join(n for n in set_names if n != id_name)})",
                                field="fail_on")


def evaluate(conditions: list[Condition], results: dict) -> list[Condition]:
    """Fill each condition's ``matches`` from ``results``; returns the conditions.

    Raises:
        SaeAuditError: a qualifier names an image set the audit does not have.
    """
    from sae_audit.results.metric_info import document_metrics, is_number, metric_items

    known = document_metrics(results)  # the coverage metrics and the suites' of this document
    names = [d["name"] for d in results["datasets"]]
    unknown = [c for c in conditions if c.metric not in known]
    if unknown:
        raise SaeAuditError(f"`fail_on` {unknown[0].text!r}: this audit has no metric {unknown[0].metric!r} (did "
                            "its suite run?)", field="fail_on")
    check_conditions(conditions, next(d["name"] for d in results["datasets"] if d["role"] == "id"), names, known)
    for c in conditions:
        c.matches = []
        for s in results["saes"]:
            for name, id_name, v in metric_items(s, known[c.metric]):
                if c.where in (None, name) and is_number(v) and OPS[c.op](v, c.value):
                    where = name if id_name is None else f"{id_name} vs {name}"
                    c.matches.append({"sae": s["label"], "set": where, "value": v})
    return conditions
