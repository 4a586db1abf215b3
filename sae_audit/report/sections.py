"""The report's built-in sections and the whole view, from the results document alone.

:func:`build_view` lays the report out: summary (the verdict), the SAEs,
ID vs OOD coverage, reconstruction, the audit suites' sections
(:mod:`sae_audit.report.suite_sections`), shifted latents, plugins' sections
(:mod:`sae_audit.report.plugin_sections`), then method and provenance.
"""

from __future__ import annotations

import math
from typing import Callable

from sae_audit.report import suite_sections
from sae_audit.report.metric_verdict import suite_metric_verdict
from sae_audit.results.metric_info import metrics_of
from sae_audit.report.plugin_sections import plugin_sections
from sae_audit.report.view import Bullets, Details, Figure, Section, Table, View, direction, fmt, fmt_metric

# Extra section builders (functions ``results -> list[Section]``), placed after "Reconstruction";
# plugins add sections through the ``sae_audit_register_report_sections`` hook instead.
SECTION_BUILDERS: list[Callable[[dict], list[Section]]] = []

# Per-latent detail is capped: rows per latent table in the report.
MAX_LATENT_ROWS = 10
# Class names listed per image set in the setup table.
MAX_CLASSES = 12


def _names(results: dict) -> tuple[str, list[str]]:
    datasets = results["datasets"]
    id_name = next(d["name"] for d in datasets if d["role"] == "id")
    return id_name, [d["name"] for d in datasets if d["role"] == "ood"]


def _pair(sae: dict, ood: str) -> dict:
    return next(p for p in sae["pairs"] if p["ood"] == ood)


def verdict(results: dict) -> list[str]:
    """Plain sentences: what changed between ID and OOD, and which SAE covers each OOD set better."""
    id_name, ood_names = _names(results)
    saes = results["saes"]
    lines = []
    for ood in ood_names:
        parts = []
        for s in saes:
            p = _pair(s, ood)
            d_id, d_ood = s["datasets"][id_name], s["datasets"][ood]
            parts.append(
                f"{s['label']}: FVU {fmt(d_id['fvu'])} → {fmt(d_ood['fvu'])} (gap {fmt(p['fvu_gap'])}), "
                f"alive latents {fmt(d_id['alive_fraction'], pct=True)} → {fmt(d_ood['alive_fraction'], pct=True)}, "
                f"{p['n_ood_only']:,} OOD-only and {p['n_id_only']:,} ID-only latents, "
                f"JS divergence {fmt(p['js_divergence'])} bits"
            )
        line = f"{id_name} (ID) → {ood} (OOD): " + "; ".join(parts) + "."
        if len(saes) > 1:
            gaps = [(_pair(s, ood)["fvu_gap"], s["label"]) for s in saes if _pair(s, ood)["fvu_gap"] is not None]
            shared = [(_pair(s, ood)["shared_alive"], s["label"]) for s in saes
                      if _pair(s, ood)["shared_alive"] is not None]
            if gaps:
                best_gap = min(gaps)[1]
                line += f" Best OOD reconstruction (smallest FVU gap): {best_gap}."
            if shared:
                best_shared = max(shared)[1]
                line += f" Most ID latents still used on OOD (shared alive): {best_shared}."
        lines.append(line)
    if len(saes) > 1 and ood_names:
        best: dict[str, str] = {}
        for ood in ood_names:
            gaps = [(_pair(s, ood)["fvu_gap"], s["label"]) for s in saes if _pair(s, ood)["fvu_gap"] is not None]
            if gaps:
                best[ood] = min(gaps)[1]
        winners = set(best.values())
        if len(winners) == 1 and len(best) == len(ood_names) == 1:
            lines.insert(0, f"Verdict: {winners.pop()} covers {ood_names[0]} best (smallest reconstruction gap "
                            "FVU_OOD − FVU_ID).")
        elif len(winners) == 1 and len(best) == len(ood_names):
            lines.insert(0, f"Verdict: {winners.pop()} covers every OOD set best (smallest reconstruction gap "
                            f"FVU_OOD − FVU_ID on all {len(ood_names)}).")
        elif best:
            lines.insert(0, "Verdict: no SAE covers every OOD set best; smallest reconstruction gap: "
                         + "; ".join(f"on {o}, {lab}" for o, lab in best.items()) + ".")
    elif len(saes) == 1 and ood_names:
        worst = max(ood_names, key=lambda o: _pair(saes[0], o)["fvu_gap"] if _pair(saes[0], o)["fvu_gap"]
                    is not None else -math.inf)
        lines.insert(0, f"Verdict: {saes[0]['label']} covers {worst} least well "
                        f"(FVU gap {fmt(_pair(saes[0], worst)['fvu_gap'])}).")
    return lines + suite_metric_verdict(results)  # the metrics suites declare (plugins' included)


def _setup_table(results: dict) -> Table:
    model = results["model"]
    rows = [
        ["model", f"{model['name']} ({model['family']}, {model['num_blocks']} blocks, d_model {model['d_model']})"],
        ["revision", str(model.get("revision") or "n/a")],
        ["input resolution", f"{model.get('image_size')} px"],
        ["device / dtype", f"{model.get('device')} / {model.get('dtype')}"],
    ]
    for d in results["datasets"]:
        classes = d.get("classes") or []
        shown = ", ".join(classes[:MAX_CLASSES]) + (", ..." if len(classes) > MAX_CLASSES else "")
        cls_text = f", {len(classes)} {'class' if len(classes) == 1 else 'classes'} ({shown})" if classes else ""
        rows.append([f"{d['role'].upper()} set", f"{d['name']}: {d['n_images']:,} images{cls_text}, "
                                                 f"{d.get('n_skipped', 0)} unreadable skipped"])
    return Table("Setup", ["", ""], rows, headless=True)


def _sae_table(results: dict) -> Table:
    rows = []
    audited_px = results["model"].get("image_size")
    mismatched = []
    for s in results["saes"]:
        c = s["config"]
        px = c.get("image_size")
        if px is not None and audited_px is not None and px != audited_px:
            mismatched.append(f"{s['label']} was trained at {px} px")
        rows.append([
            s["label"], s["hook_point"], f"{c['d_in']} → {c['d_sae']}", str(c["k"]),
            f"{c.get('lambda_off', 0):g}", f"{c.get('lambda_ratio', 0):g}", str(c.get("model") or "n/a"),
            f"{px} px" if px is not None else "n/a", s["spec"],
        ])
    note = ""
    if mismatched:
        note = (f"Audited at {audited_px} px, but " + "; ".join(mismatched)
                + ": latents may not mean the same at another scale.")
    return Table("The audited SAEs", ["SAE", "hook point", "d_in → d_sae", "k", "λ off-support L1", "λ L1/L2",
                                      "trained on model", "trained at", "source"], rows, note=note)


def _coverage_section(results: dict) -> Section:
    from sae_audit.report import plots

    id_name, ood_names = _names(results)
    saes = results["saes"]
    labels = [s["label"] for s in saes]
    blocks: list = [
        "How the SAE's latents are used on each OOD set compared with the ID set. Each metric's label says "
        "which direction is better, where one is."
    ]
    for ood in ood_names:
        rows = [[m.label + direction(m)] + [fmt_metric(m, _pair(s, ood).get(m.key)) for s in saes]
                for m in metrics_of("pair")]
        blocks.append(Table(f"{id_name} (ID) vs {ood} (OOD)", ["metric"] + labels, rows))
    for i, s in enumerate(saes):
        blocks.append(Figure(
            f"frequency-hist-{i}",
            f"Step histograms of log10 firing frequency of the alive latents of {s['label']}, one line style per "
            f"image set ({', '.join([id_name] + ood_names)}); dead latents are counted in the legend.",
            lambda s=s: plots.frequency_histogram(s, [id_name] + ood_names),
        ))
        blocks.append(Figure(
            f"frequency-scatter-{i}",
            f"Per-latent firing frequency on {id_name} (x) against each OOD set (y, one marker shape per set) "
            f"for {s['label']}, log-log; points above the dashed diagonal fire more often out of distribution.",
            lambda s=s: plots.frequency_scatter(s, id_name, ood_names),
        ))
    return Section("coverage", "ID vs OOD coverage", blocks)


def _reconstruction_section(results: dict) -> Section:
    from sae_audit.report import plots

    id_name, ood_names = _names(results)
    saes = results["saes"]
    labels = [s["label"] for s in saes]
    blocks: list = [Figure(
        "reconstruction",
        "Grouped bars of FVU (lower is better) on each image set, one hatch pattern per SAE ("
        + ", ".join(labels) + "); the value is printed above each bar.",
        lambda: plots.reconstruction_bars(results),
    )]
    for name in [id_name] + ood_names:
        rows = [[m.label + direction(m)] + [fmt_metric(m, s["datasets"][name].get(m.key)) for s in saes]
                for m in metrics_of("dataset")]
        role = "ID" if name == id_name else "OOD"
        blocks.append(Table(f"{name} ({role})", ["metric"] + labels, rows))
    return Section("reconstruction", "Reconstruction and sparsity per image set", blocks)


def _latents_section(results: dict) -> Section:
    blocks: list = [
        f"Per SAE and OOD set: the latents whose firing frequency shifted most (by |log10 shift|) and the most "
        f"frequent OOD-only latents, at most {MAX_LATENT_ROWS} each; the full frequency vectors are in "
        "results.json."
    ]
    for s in results["saes"]:
        d_sae = s["config"]["d_sae"]
        inner: list = []
        for pair in s["pairs"]:
            for key, what, total in (("top_shifted", "most shifted", d_sae),
                                     ("top_ood_only", "most frequent OOD-only", pair["n_ood_only"])):
                rows_all = pair.get(key) or []
                rows = [[str(r["latent"]), fmt(r["freq_id"], 4), fmt(r["freq_ood"], 4), fmt(r.get("log10_shift"), 2)]
                        for r in rows_all[:MAX_LATENT_ROWS]]
                left = max(0, total - len(rows))
                note = "none" if not rows else (f"{left:,} more latent(s) not shown" if left else "")
                inner.append(Table(f"{what} latents, {pair['id']} vs {pair['ood']}",
                                   ["latent", "f ID", "f OOD", "log10 shift"], rows, note=note))
        blocks.append(Details(s["label"], inner))
    return Section("latents", "Shifted latents", blocks)


METHOD = [
    "Each image goes through the model's own preprocessing; the forward pass stops after the deepest "
    "hooked block. The SAE reads the block output (the residual stream after that block) on its token "
    "set, encodes it with Top-k (ReLU after selection) and decodes it.",
    "Firing frequency f_j is the share of inputs (tokens) on which latent j is non-zero; alive means "
    "f_j > 0, dense f_j above the threshold. FVU is Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over the dataset "
    "(variance about the dataset mean). Effective units is (‖z‖₁/‖z‖₂)².",
    "Shared alive = |alive_ID ∩ alive_OOD| / |alive_ID|. The JS divergence (base 2, in [0, 1]) and "
    "Spearman ρ compare the two frequency profiles normalised to sum 1. Formulas: Gao et al. 2024 "
    "(arXiv 2406.04093) and Jacquier et al. 2026 (arXiv 2606.27321).",
]


def _provenance_tables(results: dict) -> list[Table]:
    tool = results.get("tool", {})
    settings = results.get("settings", {})
    prov = results.get("provenance") or {}
    rows = [
        ["sae-audit", f"{tool.get('version')} (git {tool.get('git_revision') or 'n/a'})"],
        ["created", str(results.get("created"))],
        ["results schema", str(results.get("schema_version"))],
        ["model revision", str(results["model"].get("revision") or "n/a")],
    ]
    if prov:
        rows.append(["Python / platform", f"{prov.get('python')} / {prov.get('platform')}"])
        pk = prov.get("packages") or {}
        rows.append(["packages", ", ".join(f"{k} {v}" for k, v in pk.items() if v) or "n/a"])
        pl = prov.get("plugins") or {}
        rows.append(["plugins", ", ".join(f"{k} {v or ''}".strip() for k, v in pl.items()) or "none"])
        if prov.get("command"):
            rows.append(["command", str(prov["command"])])
    rows += [[k, str(v)] for k, v in settings.items()]
    for s in results["saes"]:
        rows.append([f"SAE weights: {s['label']}", str(s.get("weights_sha256") or "n/a")])
    for d in results["datasets"]:
        if d.get("content_hash"):
            rows.append([f"image set: {d['name']}", f"{d['content_hash']} (of {d.get('content_hash_of', '?')})"])
    return [Table("Provenance", ["", ""], rows, headless=True)]


def build_view(results: dict) -> View:
    """The report's content, from the results document alone."""
    model = results["model"]
    summary = Section("summary", "Summary", [Bullets(verdict(results)), _setup_table(results)])
    sections = [
        summary,
        Section("saes", "SAEs", [_sae_table(results)]),
        _coverage_section(results),
        _reconstruction_section(results),
    ]
    for builder in [*SECTION_BUILDERS, suite_sections.sections]:
        sections += builder(results)
    sections.append(_latents_section(results))
    sections += plugin_sections(results)
    sections.append(Section("method", "Method and provenance", [*METHOD, *_provenance_tables(results)]))
    title = f"SAE audit of {model['name']}"
    subtitle = ("Coverage of sparse-autoencoder latents, in-distribution vs out-of-distribution. "
                f"Generated by sae-audit {results.get('tool', {}).get('version', '?')} on {results.get('created')}.")
    return View(title, subtitle, sections)
