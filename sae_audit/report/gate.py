"""``--fail-on`` conditions: let an audit gate CI.

A condition is ``METRIC OP NUMBER`` with an optional image-set qualifier::

    fvu_gap>0.2              any SAE, any ID/OOD pair
    fvu_gap[digits]>=0.15    only the pair whose OOD set is ``digits``
    dead_fraction[fashion-mnist:test]>0.5
    shared_alive<0.8

``METRIC`` is any key of :data:`sae_audit.report.metric_info.METRICS` (per
dataset or per ID/OOD pair); ``OP`` is one of ``> >= < <= == !=``. A condition
*holds* when the metric satisfies it for at least one SAE (and set); missing
values (``null``) never satisfy it.
"""

from __future__ import annotations

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


def parse_condition(text: str) -> Condition:
    """Parse one ``--fail-on`` condition.

    Raises:
        SaeAuditError: the syntax is wrong or the metric is unknown (the message lists the known ones).
    """
    from sae_audit.report.metric_info import METRICS

    m = _COND.match(text)
    if not m:
        raise SaeAuditError(f"--fail-on {text!r}: expected METRIC[SET] OP NUMBER, e.g. 'fvu_gap>0.2' or "
                            "'fvu[digits]>=0.5' (OP is one of > >= < <= == !=)")
    metric, where, op, num = m.groups()
    if metric not in METRICS:
        raise SaeAuditError(f"--fail-on {text!r}: unknown metric {metric!r}; known: {', '.join(sorted(METRICS))}")
    try:
        value = float(num)
    except ValueError:
        raise SaeAuditError(f"--fail-on {text!r}: {num!r} is not a number") from None
    return Condition(text.strip(), metric, where.strip() if where else None, op, value)


def evaluate(conditions: list[Condition], results: dict) -> list[Condition]:
    """Fill each condition's ``matches`` from ``results``; returns the conditions.

    Raises:
        SaeAuditError: a qualifier names an image set the audit does not have.
    """
    from sae_audit.report.metric_info import METRICS

    names = [d["name"] for d in results["datasets"]]
    for c in conditions:
        c.matches = []
        if c.where is not None and c.where not in names:
            raise SaeAuditError(f"--fail-on {c.text!r}: no image set {c.where!r} in this audit (sets: "
                                f"{', '.join(names)})")
        scope = METRICS[c.metric].scope
        for s in results["saes"]:
            if scope == "dataset":
                items = [(n, s["datasets"][n].get(c.metric)) for n in names if c.where in (None, n)]
            else:
                items = [(f"{p['id']} vs {p['ood']}", p.get(c.metric)) for p in s["pairs"]
                         if c.where in (None, p["ood"])]
            for where, v in items:
                if isinstance(v, (int, float)) and not isinstance(v, bool) and OPS[c.op](v, c.value):
                    c.matches.append({"sae": s["label"], "set": where, "value": v})
    return conditions
