"""The report's first screen: is the dictionary covering these OOD sets, and where not?

:func:`verdict_table` is one compact table, SAEs x OOD sets, each cell the
coverage of that set by that SAE; :func:`small_multiples` is one figure, a
panel per SAE and OOD set with every latent's firing frequency on the ID set
against the OOD set. :func:`glance_blocks` puts them first in the summary.

The table is built from the point values the results document holds today.
It takes a ``mark`` function so the verdict of the bootstrap intervals and
the ID-vs-ID noise floor (SPEC section 5) can put its shift marks and
intervals into the same cells without changing the layout.
"""

from __future__ import annotations

from typing import Callable

from sae_audit.report.view import Figure, Table, fmt

#: ``mark(sae entry, pair dict) -> str``: text put before a cell's values (e.g. a shift mark), "" for none.
Mark = Callable[[dict, dict], str]


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


def coverage_cell(sae: dict, pair: dict, mark: Mark | None = None) -> str:
    """One cell: ``[mark] FVU gap +x · shared y% · n OOD-only``."""
    gap = pair.get("fvu_gap")
    gap_text = "n/a" if gap is None else f"{gap:+.3f}"
    text = (f"FVU gap {gap_text} · shared {fmt(pair.get('shared_alive'), pct=True)} · "
            f"{fmt(pair.get('n_ood_only'))} OOD-only")
    prefix = mark(sae, pair) if mark is not None else ""
    return f"{prefix} {text}".strip()


def verdict_table(results: dict, mark: Mark | None = None) -> Table:
    """SAE x OOD set: how each SAE's dictionary covers each OOD set (the report's first table).

    Args:
        mark: optional ``(sae entry, pair) -> str`` put before each cell's values (the slot for
            shift marks and intervals).
    Returns:
        A :class:`Table`: one row per SAE (its ID FVU, then one cell per OOD set).
    """
    id_name, ood_names = _names(results)
    rows = []
    for s in results["saes"]:
        rows.append([s["label"], fmt(s["datasets"][id_name].get("fvu"))]
                    + [coverage_cell(s, _pair(s, ood), mark) for ood in ood_names])
    return Table(
        "At a glance: how each SAE's dictionary covers each OOD set",
        ["SAE", f"FVU on {id_name} (ID)"] + [f"{ood} (OOD)" for ood in ood_names], rows,
        note="Per cell: FVU gap = FVU_OOD − FVU_ID (lower is better: OOD variance the dictionary fails to "
             "reconstruct), shared alive = share of the ID-alive latents that also fire on the OOD set (higher is "
             "better), OOD-only = latents that fire only out of distribution. Point values of this audit; every "
             "metric per set is under “ID vs OOD coverage”.")


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
            gap = _pair(s, ood).get("fvu_gap")
            sub = f"FVU gap {'n/a' if gap is None else f'{gap:+.3f}'}"
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
        "(y), log-log, never-firing latents pinned at 1e-7; the dashed diagonal is equal frequency. Dots far from "
        "it are latents the OOD set uses differently; a column of dots on the left edge is OOD-only latents.",
        lambda: draw_small_multiples(results),
    )


def glance_blocks(results: dict, mark: Mark | None = None) -> list:
    """The summary's first blocks: the verdict table, then the small multiples."""
    return [verdict_table(results, mark), small_multiples(results)]


__all__ = ["Mark", "coverage_cell", "draw_small_multiples", "glance_blocks", "model_name", "name_of",
           "small_multiples",
           "verdict_table"]
