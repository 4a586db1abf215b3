"""Report sections of the audit suites (monosemanticity, purity, probing, k-robustness, OOD
detection, latent pictures), computed from the results document alone.

- :func:`suite_tables` -> :class:`~sae_audit.report.view.Table` s, SAEs side by side;
- :func:`suite_figures` -> ``(name, matplotlib figure, alt text)`` like the report's other figures;
- galleries of the latent pictures with their patch heatmaps: :mod:`sae_audit.report.galleries`.
"""

from __future__ import annotations

from sae_audit.report.galleries import report_galleries
from sae_audit.report.glance import model_name, name_of
from sae_audit.report.verdict import fmt_ci
from sae_audit.report.view import Table, fmt

_OOD_SCORES = [("fvu", "per-image FVU"), ("l0", "per-image L0"), ("effective_units", "effective units"),
               ("rarity", "latent rarity under the ID profile")]


def _names(results: dict) -> tuple[str, list[str]]:
    datasets = results["datasets"]
    return (next(d["name"] for d in datasets if d["role"] == "id"),
            [d["name"] for d in datasets if d["role"] == "ood"])


def _suite(s: dict, name: str) -> dict | None:
    return s.get("suites", {}).get(name)


def _cell(stats: dict | None, key: str, ci: bool = False, **kw) -> str:
    """A suite's value (with its 95% interval when ``ci``; ``[n/a]`` when the results have none)."""
    if stats is None:
        return "not run"
    if "skipped" in stats:
        return "skipped"
    if ci:
        return fmt_ci(stats.get(key), (stats.get("intervals") or {}).get(key), digits=kw.get("digits"))
    return fmt(stats.get(key), **kw)


def _pair_rows(saes: list[dict], suite: str, ood: str, keys) -> list[list[str]]:
    """Rows ``[label, value [CI], floor, shifted?] x SAE`` for a suite's pair metrics ``keys`` (``(key, label)``)."""
    rows = []
    for key, what in keys:
        row = [what]
        for s in saes:
            entry = _suite(s, suite) or {}
            p = next((p for p in entry.get("pairs", []) if p.get("ood") == ood), None)
            floor = entry.get("noise_floor") or {}
            if p is None:
                row += ["not run", "", ""]
                continue
            row.append(fmt_ci(p.get(key), (p.get("intervals") or {}).get(key)))
            row.append("unavailable" if "unavailable" in floor or not floor else
                       fmt_ci(floor.get(key), (floor.get("intervals") or {}).get(key)))
            flag = (p.get("shifted") or {}).get(key)
            row.append("n/a" if flag is None else "shifted" if flag else "no")
        rows.append(row)
    return rows


def _pair_header(saes: list[dict], first: str) -> list[str]:
    out = [first]
    for s in saes:
        out += [f"{s['label']}: value [95% CI]", f"{s['label']}: ID-vs-ID floor", f"{s['label']}: shifted?"]
    return out


def _notes(saes: list[dict], suite: str, sets: list[str]) -> str:
    notes = []
    for s in saes:
        entry = _suite(s, suite) or {}
        for name in sets:
            st = entry.get("datasets", {}).get(name, {})
            why = st.get("skipped") or st.get("reason")
            if why and why not in notes:
                notes.append(f"{name}: {why}")
    return "; ".join(notes)


def suite_tables(results: dict) -> list[Table]:
    """One or more tables per suite that ran (empty when none did)."""
    saes = results["saes"]
    if not any(s.get("suites") for s in saes):
        return []
    id_name, ood_names = _names(results)
    sets = [id_name] + ood_names
    labels = [s["label"] for s in saes]
    ran = lambda suite: any(_suite(s, suite) for s in saes)  # noqa: E731
    tables = []
    if ran("monosemanticity"):
        rows = []
        for name in sets:
            for key, what in (("ms_mean", "mean"), ("ms_median", "median"), ("ms_p90", "p90")):
                rows.append([f"{name}: MS {what}"] + [
                    _cell((_suite(s, "monosemanticity") or {}).get("datasets", {}).get(name), key, ci=True)
                    for s in saes])
            rows.append([f"{name}: latents scored"] + [
                _cell((_suite(s, "monosemanticity") or {}).get("datasets", {}).get(name), "n_scored") for s in saes])
        judge = results.get("settings", {}).get("judge")
        judge = f"{model_name(results)} (the audited model)" if judge in (None, results["model"]["name"]) \
            else name_of(results, judge)
        tables.append(Table(
            "Monosemanticity score over scored latents, value [95% interval] (higher: a latent's top images look "
            "alike)",
            ["metric"] + labels, rows,
            note="; ".join(filter(None, [f"judge: {judge}", _notes(saes, "monosemanticity", sets)]))))
    if ran("purity"):
        rows = [[f"{name}: purity {what}"] + [
            _cell((_suite(s, "purity") or {}).get("datasets", {}).get(name), key, ci=True) for s in saes]
            for name in sets for key, what in (("purity_mean", "mean"), ("purity_median", "median"))]
        tables.append(Table("Class purity of each latent's top-16 images, value [95% interval]", ["metric"] + labels,
                            rows,
                            note=_notes(saes, "purity", sets)))
    if ran("probing"):
        rows = []
        for name in sets:
            stats = [(_suite(s, "probing") or {}).get("datasets", {}).get(name) for s in saes]
            budgets = next((st["budgets"] for st in stats if st and "budgets" in st), [])
            for b, m in enumerate(budgets):
                rows.append([f"{name}: top-{m} latents"] + [
                    "skipped" if st is None or "skipped" in st else
                    fmt_ci((st.get("accuracy") or [None] * 99)[b],
                           ((st.get("intervals") or {}).get("accuracy") or [None] * 99)[b])
                    for st in stats])
            if budgets:
                rows.append([f"{name}: majority class"] + [_cell(st, "chance", ci=True) for st in stats])
        tables.append(Table("Linear-probe accuracy on held-out images with each image's top-m latents, value "
                            "[95% interval over the held-out images]",
                            ["probe"] + labels, rows, note=_notes(saes, "probing", sets)))
    if ran("k-robustness"):
        for name in sets:
            stats = [(_suite(s, "k-robustness") or {}).get("datasets", {}).get(name) for s in saes]
            rows = []
            for b in range(max((len(st["budgets"]) for st in stats if st and "budgets" in st), default=0)):
                rows.append(["k' = " + " / ".join(sorted({str(st["budgets"][b]) for st in stats if st}))] + [
                    f"{fmt(st['fvu'][b])} (L0 {fmt(st['l0_mean'][b], 1)}"
                    + (f", MS {fmt(st['ms_mean'][b])}" if st.get("ms_mean") else "") + ")"
                    if st else "not run" for st in stats])
            with_ms = any(st and st.get("ms_mean") for st in stats)
            tables.append(Table(f"k-robustness on {name}: FVU (L0{', mean MS' if with_ms else ''}) with inference "
                                "budget k'", ["budget"] + labels,
                                rows, note=_notes(saes, "k-robustness", [name])))
    if ran("ood-detection"):
        for ood in ood_names:
            pairs = [next((p for p in (_suite(s, "ood-detection") or {}).get("pairs", []) if p["ood"] == ood), None)
                     for s in saes]
            rows = _pair_rows(saes, "ood-detection", ood, [(f"auroc_{k}", f"AUROC: {w}") for k, w in _OOD_SCORES])
            tables.append(Table(f"OOD detection, {id_name} (ID) vs {ood} (OOD): AUROC per image "
                                "(0.5 chance; below 0.5: the score is lower out of distribution)",
                                _pair_header(saes, "score"), rows,
                                note="; ".join(p["reason"] for p in pairs if p and p.get("reason"))))
    if ran("fidelity"):
        rows = []
        keys = [("fidelity", "fidelity (1: output untouched, 0: as bad as mean ablation)"),
                ("cosine", "cos(y, y_sae)"), ("cosine_ablation", "cos(y, y_ablate)"),
                ("kl", "KL(y ‖ y_sae) of the logits (nats)"), ("kl_ablation", "KL(y ‖ y_ablate) (nats)"),
                ("fidelity_kl", "fidelity, KL of the logits"), ("top1_agreement", "top-1 agreement, SAE spliced in"),
                ("top1_agreement_ablation", "top-1 agreement, mean ablation")]
        with_logits = any(((_suite(s, "fidelity") or {}).get("datasets", {}).get(id_name) or {}).get("logits")
                          for s in saes)
        for name in sets:
            for key, what in keys if with_logits else keys[:3]:
                rows.append([f"{name}: {what}"] + [
                    _cell((_suite(s, "fidelity") or {}).get("datasets", {}).get(name), key, ci=True) for s in saes])
        tables.append(Table("Downstream fidelity: the model's output with the SAE's reconstruction spliced in at the "
                            "hook, against mean ablation, value [95% interval]", ["metric"] + labels, rows,
                            note=_notes(saes, "fidelity", sets)))
        for ood in ood_names:
            pair_keys = [("fidelity_gap", "fidelity gap (ID − OOD)")]
            if with_logits:
                pair_keys.append(("fidelity_kl_gap", "fidelity gap, KL of the logits"))
            pair_keys.append(("auroc_output_distance", "AUROC of the per-image output distance d(y, y_sae)"))
            tables.append(Table(f"Downstream fidelity, {id_name} (ID) vs {ood} (OOD)", _pair_header(saes, "metric"),
                                _pair_rows(saes, "fidelity", ood, pair_keys)))
    return tables


def _curves(curves, title: str, xlabel: str, ylabel: str, vline=None, hline=None):
    """A log2-x line plot: ``curves`` are ``(style index, label, xs, ys)``; ys may hold ``None``.

    ``vline``/``hline``: optional ``(position, label)`` reference lines. Colour
    and line style both follow the style index (colour is never the only cue).
    """
    import matplotlib.pyplot as plt
    import numpy as np

    from sae_audit.report.plots import COLOURS, STYLES

    from sae_audit.report.plots import legend_below

    fig, ax = plt.subplots(figsize=(5.2, 3.8), dpi=100, layout="constrained")
    for j, label, xs, ys in curves:
        y = np.array([np.nan if v is None else v for v in ys], dtype=float)
        ax.plot(xs, y, marker="o", color=COLOURS[j % len(COLOURS)], linestyle=STYLES[j % len(STYLES)], label=label)
    if vline is not None:
        ax.axvline(vline[0], color="#444", linewidth=0.8, linestyle=":", label=vline[1])
    if hline is not None:
        ax.axhline(hline[0], color="#444", linewidth=0.8, linestyle=":", label=hline[1])
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    legend_below(fig, ax, len(curves) + (vline is not None) + (hline is not None))
    return fig


def suite_figures(results: dict):
    """``(name, figure, alt text)`` for the k-robustness curves and the probing accuracy."""
    id_name, ood_names = _names(results)
    sets = [id_name] + ood_names
    for i, s in enumerate(results["saes"]):
        kr = _suite(s, "k-robustness")
        if kr:
            curves = [(j, name, kr["datasets"][name]["budgets"], kr["datasets"][name]["fvu"])
                      for j, name in enumerate(sets) if kr["datasets"].get(name)]
            fig = _curves(curves, f"k-robustness: {s['label']}", "inference budget k'", "FVU",
                          vline=(s["config"]["k"], "training k"))
            yield (f"k-robustness-{i}", fig,
                   f"FVU of {s['label']} on each image set when the inference budget k' replaces the training "
                   f"k = {s['config']['k']}; a flatter curve degrades more gracefully.")
    for name in sets:
        found = []
        for s in results["saes"]:
            st = (_suite(s, "probing") or {}).get("datasets", {}).get(name)
            if st and "accuracy" in st and any(a is not None for a in st["accuracy"]):
                found.append((s["label"], st))
        if not found:
            continue
        curves = [(j, label, st["budgets"], st["accuracy"]) for j, (label, st) in enumerate(found)]
        chance = found[0][1].get("chance")
        fig = _curves(curves, f"Linear probing on {name}", "latents kept per image (m)", "held-out accuracy",
                      hline=(chance, "majority class") if chance is not None else None)
        yield (f"probing-{_slug(name)}", fig,
               f"Held-out accuracy of a logistic regression on each {name} image's top-m latents, per SAE.")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in str(text)).strip("-")[:40] or "set"


def plotted(table: Table) -> bool:
    """Whether a suite table repeats a figure of :func:`suite_figures` (the report folds it away)."""
    return table.caption.startswith(("Linear-probe accuracy", "k-robustness on"))


def sections(results: dict) -> list:
    """The suites' report sections (the hook :mod:`sae_audit.report.view` looks for).

    "Audit suites": the figures above, then the tables that no figure shows, SAEs side by side,
    then the tables of the plotted values folded away;
    "Latent pictures": per SAE and ID/OOD pair, one gallery per shifted or
    OOD-only latent with its top ID images first and top OOD images after.
    """
    from sae_audit.report.view import Details, Figure, Section

    out = []
    tables = suite_tables(results)
    blocks: list = [Figure(name, alt, lambda fig=fig: fig) for name, fig, alt in suite_figures(results)]
    blocks += [t for t in tables if not plotted(t)]
    folded = [t for t in tables if plotted(t)]
    if folded:
        blocks.append(Details("The plotted values as tables (k-robustness, linear probing)", folded))
    if blocks:
        out.append(Section("suites", "Audit suites", blocks))
    groups = report_galleries(results)
    if groups:
        out.append(Section("pictures", "Latent pictures", groups))
    return out
