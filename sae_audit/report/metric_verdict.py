"""The verdict's sentences about the metrics suites declare (built-in suites' and plugins' alike).

A suite that declares metrics with a direction (``higher_is_better`` not
``None``; see the ``sae_audit_register_suites`` hook) gets one sentence per
metric in the report's summary and the model card: per-pair metrics per OOD
set, per-set metrics from the ID set to each OOD set, every SAE side by side,
with the 95% interval and the ID-vs-ID noise floor when the suite computes
them, and which SAE does best when there are several. Everything is read from
the results document (its ``metrics`` table says where each value lives).
"""

from __future__ import annotations

from sae_audit.plugin_manager import BUILTIN
from sae_audit.report.view import fmt
from sae_audit.results.metric_info import MetricInfo, document_metrics, is_number, metric_intervals, metric_items
from sae_audit.results.shift import is_shifted


def shifted(interval, floor, info: MetricInfo) -> bool:
    """Whether ``interval`` lies beyond ``floor`` (both ``[low, high]``) in the metric's bad direction (SPEC 5):
    :func:`sae_audit.results.shift.is_shifted` with the metric's ``shift``, or its direction when it has none."""
    direction = info.shift if info.shift is not None else (
        None if info.higher_is_better is None else (-1 if info.higher_is_better else 1))
    return bool(is_shifted(interval, floor, direction))


def _value(sae: dict, info: MetricInfo, name: str):
    v = next((v for n, _, v in metric_items(sae, info) if n == name), None)
    return v if is_number(v) else None


def _shown(sae: dict, info: MetricInfo, name: str) -> str:
    v = _value(sae, info, name)
    text = fmt(v, info.digits, info.pct)
    interval, floor = metric_intervals(sae, info, name)
    if v is not None and interval is not None:
        text += f" [{fmt(interval[0], info.digits, info.pct)}, {fmt(interval[1], info.digits, info.pct)}]"
    if v is not None and floor is not None:
        text += (f", ID-vs-ID floor [{fmt(floor[0], info.digits, info.pct)}, {fmt(floor[1], info.digits, info.pct)}]"
                 + (", shifted beyond the floor" if shifted(interval, floor, info) else ""))
    return text


def _best(saes: list[dict], info: MetricInfo, name: str) -> str | None:
    values = [(_value(s, info, name), s["label"]) for s in saes]
    values = [(v, label) for v, label in values if v is not None]
    if len(saes) < 2 or not values:
        return None
    return (max if info.higher_is_better else min)(values, key=lambda x: x[0])[1]


def suite_metric_verdict(results: dict) -> list[str]:
    """One plain sentence per suite metric with a direction (none when no such suite ran).

    Pair metrics with a shift rule are left out: the verdict's shift sentences and table already say them.
    """
    metrics = [m for m in document_metrics(results).values()
               if m.suite and m.higher_is_better is not None and not (m.scope == "pair" and m.shift is not None)]
    if not metrics:
        return []
    id_name = next(d["name"] for d in results["datasets"] if d["role"] == "id")
    oods = [d["name"] for d in results["datasets"] if d["role"] == "ood"]
    saes = results["saes"]
    lines = []
    for m in metrics:
        origin = f"suite {m.suite}" + (f" of plugin {m.plugin}" if m.plugin and m.plugin != BUILTIN else "")
        head = f"{m.label} ({'higher' if m.higher_is_better else 'lower'} is better; {origin})"
        parts = []
        for ood in oods:
            if m.scope == "pair":
                per_sae = [f"{s['label']} {_shown(s, m, ood)}" for s in saes]
            else:
                per_sae = [f"{s['label']} {_shown(s, m, id_name)} → {_shown(s, m, ood)}" for s in saes]
            best = _best(saes, m, ood)
            parts.append(f"{id_name} (ID) → {ood} (OOD): " + "; ".join(per_sae) + (f" (best: {best})" if best else ""))
        lines.append(f"{head}: " + ". ".join(parts) + ".")
    return lines
