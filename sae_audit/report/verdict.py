"""The verdict at the top of every report: what is shifted beyond the noise floor, from the results alone.

:func:`shift_rows` gathers, per SAE and OOD set, every pair metric with its
95% interval, the ID-vs-ID noise floor and the ``shifted`` flag
(:mod:`sae_audit.results.shift`), the downstream fidelity gap and the latents
that carry most of the JS divergence. :func:`verdict` turns them into a few
plain sentences and :func:`sae_audit.report.glance.verdict_table` into the
report's first table (SAE x OOD set); ``sae-audit run --format json`` prints
the rows.
"""

from __future__ import annotations

from sae_audit.report.metric_verdict import suite_metric_verdict
from sae_audit.report.view import fmt
from sae_audit.results.metric_info import METRICS, MetricInfo, document_metrics
from sae_audit.results.shift import RULE

#: Pair metrics in the order the verdict names them (the most telling first).
ORDER = ("fvu_gap", "js_divergence", "fidelity_gap", "fidelity_kl_gap", "shared_alive", "spearman", "n_ood_only",
         "n_id_only", "auroc_fvu", "auroc_rarity", "auroc_output_distance", "auroc_l0", "auroc_effective_units")
#: Metrics named per pair in a sentence (the others are counted).
NAMED = 3
#: Latents named per pair.
TOP_LATENTS = 3


def names(results: dict) -> tuple[str, list[str]]:
    datasets = results["datasets"]
    return (next(d["name"] for d in datasets if d["role"] == "id"),
            [d["name"] for d in datasets if d["role"] == "ood"])


def fmt_interval(interval, info: MetricInfo | None = None, digits: int | None = None) -> str:
    """``[low, high]`` formatted like the metric, or ``[n/a]``."""
    if not isinstance(interval, list) or len(interval) != 2 or not all(isinstance(v, (int, float)) for v in interval):
        return "[n/a]"
    d = digits if digits is not None else (info.digits if info else 3)
    pct = info.pct if info else False
    return f"[{fmt(float(interval[0]), d, pct)}, {fmt(float(interval[1]), d, pct)}]"


def fmt_ci(value, interval, info: MetricInfo | None = None, digits: int | None = None) -> str:
    """``value [low, high]`` (``value [n/a]`` without an interval; ``n/a`` without a value)."""
    if value is None:
        return "n/a"
    d = digits if digits is not None else (info.digits if info else 3)
    pct = info.pct if info else False
    v = fmt(value, d, pct) if not isinstance(value, int) or isinstance(value, bool) else fmt(value)
    return f"{v} {fmt_interval(interval, info, digits)}"


def _floor_of(sae: dict, suite: str | None) -> dict:
    if suite is None:
        return sae.get("noise_floor") or {"unavailable": "no noise floor in these results"}
    entry = (sae.get("suites") or {}).get(suite) or {}
    return entry.get("noise_floor") or {"unavailable": f"no noise floor for suite {suite}"}


def _pair_dicts(sae: dict, ood: str) -> list[tuple[str | None, dict]]:
    out = [(None, p) for p in sae.get("pairs", []) if p.get("ood") == ood]
    for name, entry in (sae.get("suites") or {}).items():
        out += [(name, p) for p in entry.get("pairs") or [] if isinstance(p, dict) and p.get("ood") == ood]
    return out


def metric_cells(sae: dict, ood: str, metrics: dict | None = None) -> list[dict]:
    """Every pair metric with a shift rule for one SAE and OOD set: ``{key, label, info, value, interval,
    floor_value, floor_interval, floor_unavailable, shifted}``, in :data:`ORDER`.

    ``metrics``: the document's metrics (:func:`sae_audit.results.metric_info.document_metrics`;
    default the coverage metrics).
    """
    metrics = METRICS if metrics is None else metrics
    rows = []
    for suite, pair in _pair_dicts(sae, ood):
        floor = _floor_of(sae, suite)
        for key in pair:
            info = metrics.get(key)
            if info is None or info.scope != "pair" or info.shift is None or info.suite != suite:
                continue
            rows.append({
                "key": key, "label": info.label, "info": info, "suite": suite, "value": pair.get(key),
                "interval": (pair.get("intervals") or {}).get(key),
                "floor_value": floor.get(key), "floor_interval": (floor.get("intervals") or {}).get(key),
                "floor_unavailable": floor.get("unavailable"),
                "shifted": (pair.get("shifted") or {}).get(key),
            })
    rank = {k: i for i, k in enumerate(ORDER)}
    return sorted(rows, key=lambda r: rank.get(r["key"], len(ORDER)))


def shift_rows(results: dict) -> list[dict]:
    """Per SAE and OOD set: ``{sae, ood, shifted: [keys], not_shifted, unavailable, metrics: [cells],
    fidelity_gap: {value, interval, floor_value, floor_interval} | None, top_latents: [{latent, share}],
    js_latents_for_half, floor: {id, n_images} | {unavailable}}``."""
    _, ood_names = names(results)
    metrics = document_metrics(results)
    out = []
    for s in results["saes"]:
        floor = s.get("noise_floor") or {}
        for ood in ood_names:
            cells = metric_cells(s, ood, metrics)
            cov = next((p for p in s.get("pairs", []) if p.get("ood") == ood), {})
            fid = next((c for c in cells if c["key"] == "fidelity_gap"), None)
            out.append({
                "sae": s["label"], "ood": ood,
                "shifted": [c["key"] for c in cells if c["shifted"] is True],
                "not_shifted": [c["key"] for c in cells if c["shifted"] is False],
                "unavailable": [c["key"] for c in cells if c["shifted"] is None],
                "metrics": cells,
                "fidelity_gap": None if fid is None else {k: fid[k] for k in ("value", "interval", "floor_value",
                                                                              "floor_interval", "shifted")},
                "top_latents": [{"latent": r["latent"], "share": r.get("share")}
                                for r in (cov.get("js_top_latents") or [])[:TOP_LATENTS]],
                "js_latents_for_half": cov.get("js_latents_for_half"),
                "floor": ({"unavailable": floor["unavailable"]} if "unavailable" in floor or not floor
                          else {"id": floor.get("id"), "n_images": floor.get("n_images")}),
            })
    return out


def _cell_text(c: dict) -> str:
    info = c["info"]
    return (f"{info.label} {fmt_ci(c['value'], c['interval'], info)} vs floor "
            f"{fmt_ci(c['floor_value'], c['floor_interval'], info)}")


def _latents_text(row: dict) -> str:
    lat = [r for r in row["top_latents"] if r.get("share") is not None]
    if not lat:
        return ""
    share = sum(r["share"] for r in lat)
    half = row.get("js_latents_for_half")
    more = f"; half of it takes {half} latent{'s' if half != 1 else ''}" if half else ""
    return (f"latent{'s' if len(lat) > 1 else ''} {', '.join(str(r['latent']) for r in lat)} carry "
            f"{100 * share:.0f}% of the JS divergence{more}")


def verdict(results: dict) -> list[str]:
    """A few plain sentences: per OOD set and SAE, what is shifted beyond the noise floor, the fidelity gap,
    and the latents behind the shift; then the rule."""
    id_name, ood_names = names(results)
    rows = shift_rows(results)
    lines = []
    upgraded = results.get("upgraded_from")
    if upgraded is not None and upgraded < 2:
        lines.append(f"These results were written by an sae-audit without intervals or a noise floor (results "
                     f"schema {upgraded}): no metric can be judged against chance; re-run the audit for a verdict.")
    elif results.get("settings", {}).get("bootstrap") == 0:
        lines.append("Intervals were turned off (bootstrap 0): no metric can be judged against the noise floor.")
    for ood in ood_names:
        parts = []
        for row in (r for r in rows if r["ood"] == ood):
            n_total = len(row["metrics"])
            if "unavailable" in row["floor"]:
                text = f"{row['sae']}: no verdict (noise floor unavailable: {row['floor']['unavailable']})"
            elif row["shifted"]:
                cells = [c for c in row["metrics"] if c["shifted"] is True]
                named = "; ".join(_cell_text(c) for c in cells[:NAMED])
                more = f"; and {len(cells) - NAMED} more" if len(cells) > NAMED else ""
                text = f"{row['sae']}: shifted beyond the noise floor on {len(cells)} of {n_total} metrics ({named}{more})"
            else:
                known = len(row["not_shifted"])
                text = (f"{row['sae']}: not shifted beyond the noise floor on any metric"
                        + (f" ({len(row['unavailable'])} of {n_total} without an interval)" if row["unavailable"]
                           and known else ""))
            fid = row["fidelity_gap"]
            if fid is not None and not (row["shifted"] and "fidelity_gap" in row["shifted"][:NAMED]):
                text += (f"; downstream fidelity gap {fmt_ci(fid['value'], fid['interval'])} "
                         f"(floor {fmt_ci(fid['floor_value'], fid['floor_interval'])})")
            lat = _latents_text(row)
            if lat and row["shifted"]:
                text += f"; {lat}"
            parts.append(text)
        best = _best_gap(results, ood)
        lines.append(f"{id_name} (ID) → {ood} (OOD): " + ". ".join(parts) + "." + (f" {best}" if best else ""))
    lines += suite_metric_verdict(results)  # the per-set metrics suites declare (plugins' included)
    floor = next((s.get("noise_floor") for s in results["saes"] if "id" in (s.get("noise_floor") or {})), None)
    if floor:
        a, b = (floor.get("n_images") or [None, None])[:2]
        lines.append(f"Noise floor: the same metrics between two disjoint halves of {id_name} ({a} and {b} images). "
                     + RULE)
    return lines


def _best_gap(results: dict, ood: str) -> str:
    """With several SAEs: which has the smallest FVU gap on ``ood``, and whether the intervals tell them apart."""
    cands = []
    for s in results["saes"]:
        p = next((p for p in s.get("pairs", []) if p.get("ood") == ood), None)
        if p is not None and p.get("fvu_gap") is not None:
            cands.append((p["fvu_gap"], s["label"], (p.get("intervals") or {}).get("fvu_gap")))
    if len(cands) < 2:
        return ""
    cands.sort(key=lambda c: c[0])
    best, rest = cands[0], cands[1:]
    info = METRICS["fvu_gap"]
    others = "; ".join(f"{lab} {fmt_ci(v, iv, info)}" for v, lab, iv in rest)
    if best[2] is not None and all(iv is not None for _, _, iv in rest):
        apart = all(best[2][1] < iv[0] for _, _, iv in rest)
        said = "its interval lies below every other SAE's" if apart else \
            "but the intervals overlap, so the data do not tell the SAEs apart on it"
    else:
        said = "intervals unavailable"
    return f"Smallest FVU gap: {best[1]} {fmt_ci(best[0], best[2], info)} (vs {others}); {said}."


def summary_json(results: dict) -> list[dict]:
    """:func:`shift_rows` without the per-metric detail's labels: what ``--format json`` prints."""
    out = []
    for row in shift_rows(results):
        r = dict(row)
        r["metrics"] = {c["key"]: {k: c[k] for k in ("value", "interval", "floor_value", "floor_interval", "shifted")}
                        for c in row["metrics"]}
        out.append(r)
    return out
