"""The report's first screen: is the dictionary covering these OOD sets, and where not?

:func:`verdict_table` is one compact table, SAEs x OOD sets, each cell the
verdict of :mod:`sae_audit.report.verdict` for that SAE and OOD set: how many
pair metrics are shifted beyond the ID-vs-ID noise floor (the rule of
:mod:`sae_audit.results.shift`, SPEC section 5), then the telling metrics
(FVU gap, JS divergence, shared alive, OOD-only latents, fidelity gap when the
suite ran), each as value [95% interval], its floor and whether it is shifted,
and the latents carrying the JS divergence. :func:`small_multiples` is one
figure, a panel per SAE and OOD set with every latent's firing frequency on the
ID set against the OOD set. :func:`glance_blocks` puts them first in the
summary; the verdict's sentences follow them.
"""

from __future__ import annotations

from sae_audit.report.verdict import fmt_ci, shift_rows
from sae_audit.report.view import Figure, Table
from sae_audit.results.metric_info import METRICS

#: The pair metrics each cell spells out (when the pair holds them), in order, with their short names.
GLANCE_METRICS = (("fvu_gap", "FVU gap"), ("js_divergence", "JS divergence"), ("shared_alive", "shared alive"),
                  ("n_ood_only", "OOD-only latents"), ("fidelity_gap", "fidelity gap"))


def model_name(results: dict) -> str:
    """How the report names the audited model: its ``display_name`` (hub id, ``model_name``, the card's
    recorded name), else the last part of a local path (a cache path is never shown as the name)."""
    model = results["model"]
    shown = model.get("display_name")
    if shown:
        return str(shown)
    name = str(model["name"]).rstrip("/")
    parts = name.split("/")
    looks_local = name.startswith((".", "/", "~")) or len(parts) > 2
    return parts[-1] if looks_local else name


def name_of(results: dict, name: str | None) -> str:
    """How the report names a model recorded elsewhere (an SAE's training model, the judge): the audited
    model's :func:`model_name` when it is that model, else the last part of a local path."""
    if not name:
        return "n/a"
    if str(name) == str(results["model"]["name"]):
        return model_name(results)
    return model_name({"model": {"name": str(name)}})


def _names(results: dict) -> tuple[str, list[str]]:
    datasets = results["datasets"]
    return (next(d["name"] for d in datasets if d["role"] == "id"),
            [d["name"] for d in datasets if d["role"] == "ood"])


def _pair(sae: dict, ood: str) -> dict:
    return next((p for p in sae["pairs"] if p["ood"] == ood), {})


def _shift_word(flag) -> str:
    return "n/a" if flag is None else ("SHIFTED" if flag else "not shifted")


def coverage_cell(row: dict) -> str:
    """One cell from a :func:`sae_audit.report.verdict.shift_rows` row: the verdict, then per metric of
    :data:`GLANCE_METRICS` ``label value [low, high] (floor value [low, high]): SHIFTED | not shifted | n/a``
    (``label value [low, high]`` alone when the floor is unavailable), then the latents carrying the JS
    divergence when something is shifted; parts joined by `` · ``."""
    n = len(row["metrics"])
    if "unavailable" in row["floor"]:
        head = "no verdict (no noise floor)"  # the reason is in the table's note
    elif not row["shifted"] and not row["not_shifted"]:
        head = "no verdict (no interval)"
    elif row["shifted"]:
        head = f"SHIFTED on {len(row['shifted'])} of {n} metrics"
    else:
        head = f"not shifted on any of {n} metrics" + (f" ({len(row['unavailable'])} without an interval)"
                                                         if row["unavailable"] else "")
    by_key = {c["key"]: c for c in row["metrics"]}
    parts = [head]
    for key, label in GLANCE_METRICS:
        c = by_key.get(key)
        if c is None:
            continue
        text = f"{label} {fmt_ci(c['value'], c['interval'], c['info'])}"
        if not c["floor_unavailable"]:  # without a floor the head already says there is no verdict
            text += (f" (floor {fmt_ci(c['floor_value'], c['floor_interval'], c['info'])}): "
                     f"{_shift_word(c['shifted'])}")
        parts.append(text)
    lat = [r for r in row["top_latents"] if r.get("share") is not None]
    if lat and row["shifted"]:
        parts.append("JS divergence carried by latents "
                     + ", ".join(f"{r['latent']} ({100 * r['share']:.0f}%)" for r in lat))
    return " · ".join(parts)


def verdict_table(results: dict) -> Table:
    """SAE x OOD set: is each OOD set shifted beyond the noise floor for each SAE (the report's first table).

    Every number comes from :func:`sae_audit.report.verdict.shift_rows` (values, 95% intervals, floors and
    ``shifted`` flags as the results document holds them); nothing is recomputed here.

    Returns:
        A :class:`Table`: one row per SAE (its ID FVU with its interval, then one :func:`coverage_cell` per
        OOD set).
    """
    id_name, ood_names = _names(results)
    cells = {(r["sae"], r["ood"]): r for r in shift_rows(results)}
    rows = []
    for s in results["saes"]:
        d = s["datasets"][id_name]
        rows.append([s["label"], fmt_ci(d.get("fvu"), (d.get("intervals") or {}).get("fvu"), METRICS["fvu"])]
                    + [coverage_cell(cells[(s["label"], ood)]) for ood in ood_names])
    reasons = sorted({r["floor"]["unavailable"] for r in cells.values() if "unavailable" in r["floor"]})
    why = "".join(f"No noise floor: {r}. " for r in reasons)
    return Table(
        "At a glance: shift beyond the noise floor",  # short: it must fit a phone's width; the note explains
        ["SAE", f"FVU on {id_name} (ID) [95% interval]"] + [f"{ood} (OOD)" for ood in ood_names], rows,
        note=why + "Verdict: shift beyond the ID-vs-ID noise floor per SAE and OOD set, each metric as value "
             "[95% interval] beside its floor (the same metric between two disjoint halves of the ID set). "
             "A metric is SHIFTED when its 95% interval lies entirely beyond its floor's in its bad direction "
             "(the rule is under the verdict below). FVU gap = FVU_OOD − FVU_ID (lower is better), JS divergence "
             "of the latents' firing frequencies in bits (lower is better), shared alive = share of the ID-alive "
             "latents that also fire on the OOD set (higher is better), OOD-only = latents that fire only out of "
             "distribution, fidelity gap = fidelity_ID − fidelity_OOD (lower is better). Counts of the alive set (shared alive, "
             "OOD-only) and the JS divergence are biased by resampling (a resample holds fewer distinct images, so "
             "fewer latents fire): their interval can sit beside the value rather than around it; the floor is "
             "biased the same way, so the verdict compares interval with interval. Every metric per pair is "
             "under “ID vs OOD coverage”.")


def _wrap(text: str, width: int = 26) -> str:
    from sae_audit.report.plots import _t, wrap

    return _t(wrap(text, width))


def draw_small_multiples(results: dict):
    """A grid of log-log scatter panels, one per SAE and OOD set (matplotlib figure).

    Rows are SAEs and columns OOD sets, as in :func:`verdict_table`; when there are more
    SAEs than OOD sets the grid is turned (rows are OOD sets) so it stays wider than tall.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    from sae_audit.report.plots import COLOURS

    id_name, ood_names = _names(results)
    saes = results["saes"]
    turned = len(saes) > len(ood_names)
    n_r, n_c = (len(ood_names), len(saes)) if turned else (len(saes), len(ood_names))
    panel = 2.3 if n_c > 2 else 3.0
    fig, axes = plt.subplots(n_r, n_c, figsize=(panel * n_c + 0.6, panel * n_r + 0.5), dpi=100, squeeze=False,
                             sharex=True, sharey=True, layout="constrained")
    floor = 1e-7
    for si, s in enumerate(saes):
        f_id = np.maximum(np.asarray(s["datasets"][id_name]["frequencies"], dtype=float), floor)
        for oi, ood in enumerate(ood_names):
            r, c = (oi, si) if turned else (si, oi)
            ax = axes[r][c]
            f_ood = np.maximum(np.asarray(s["datasets"][ood]["frequencies"], dtype=float), floor)
            ax.scatter(f_id, f_ood, s=3, alpha=0.35, color=COLOURS[0], linewidths=0, rasterized=True)
            ax.plot([floor, 1], [floor, 1], color="#444", linewidth=0.8, linestyle="--")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.spines[["top", "right"]].set_visible(False)
            ax.tick_params(labelsize=7)
            pair = _pair(s, ood)
            gap = pair.get("fvu_gap")
            flag = (pair.get("shifted") or {}).get("fvu_gap")
            sub = f"FVU gap {'n/a' if gap is None else f'{gap:+.3f}'}" + (" (shifted)" if flag else "")
            col_name, row_name = (s["label"], ood) if turned else (ood, s["label"])
            ax.set_title((_wrap(col_name) + "\n" if r == 0 else "") + sub, fontsize=8)
            if c == 0:
                ax.set_ylabel(_wrap(row_name, 22) + ("\nf on this OOD set" if turned else "\nf on OOD set"),
                              fontsize=8)
            if r == n_r - 1:
                ax.set_xlabel(_wrap(f"f on {id_name} (ID)", 30), fontsize=8)
    return fig


def small_multiples(results: dict) -> Figure:
    id_name, ood_names = _names(results)
    labels = [s["label"] for s in results["saes"]]
    return Figure(
        "glance-frequencies",
        f"Small multiples, one panel per SAE ({', '.join(labels)}) and OOD set ({', '.join(ood_names)}), "
        f"{'SAEs in columns' if len(labels) > len(ood_names) else 'SAEs in rows'}: each dot is a latent, its firing frequency on {id_name} (x) against the OOD set "
        "(y), log-log, never-firing latents pinned at 1e-7; each panel's title gives the FVU gap, marked (shifted) "
        "when it is shifted beyond the noise floor; the dashed diagonal is equal frequency. Dots far from "
        "it are latents the OOD set uses differently; a column of dots on the left edge is OOD-only latents.",
        lambda: draw_small_multiples(results),
    )


def glance_blocks(results: dict) -> list:
    """The summary's first blocks: the verdict table, then the small multiples."""
    return [verdict_table(results), small_multiples(results)]


__all__ = ["GLANCE_METRICS", "coverage_cell", "draw_small_multiples", "glance_blocks", "model_name", "name_of",
           "small_multiples",
           "verdict_table"]
