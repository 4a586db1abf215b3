"""What a report says, computed once from the results document.

Both renderers (Markdown, HTML) format the same view: a summary verdict,
tables with SAEs side by side, the most shifted latents, and provenance.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Table:
    caption: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class View:
    title: str
    summary: list[str]
    setup: Table
    sae_table: Table
    dataset_tables: list[Table]
    pair_tables: list[Table]
    latent_tables: list[tuple[str, list[Table]]] = field(default_factory=list)
    provenance: Table | None = None
    method: list[str] = field(default_factory=list)
    suite_tables: list[Table] = field(default_factory=list)  # see report/suite_sections.py
    pictures: list[dict] = field(default_factory=list)


def fmt(value, digits: int = 3, pct: bool = False) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if pct:
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        if value != 0 and abs(value) < 10 ** (-digits):
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


# (key, label, formatter-kwargs, higher-is-better)
DATASET_METRICS = [
    ("fvu", "FVU (lower is better)", {}),
    ("explained_variance", "explained variance", {}),
    ("cosine", "cosine(x, x̂)", {}),
    ("relative_mse", "relative MSE", {}),
    ("alive_fraction", "alive latents", {"pct": True}),
    ("dead_fraction", "dead latents", {"pct": True}),
    ("dense_fraction", "dense latents (f > threshold)", {"pct": True}),
    ("l0_mean", "L0 (mean)", {"digits": 2}),
    ("effective_units_mean", "effective units (mean)", {"digits": 2}),
    ("n_inputs", "inputs (tokens)", {}),
    ("n_nonfinite", "non-finite inputs dropped", {}),
]

PAIR_METRICS = [
    ("fvu_gap", "FVU gap (OOD − ID)", {}),
    ("shared_alive", "shared alive (of ID alive)", {"pct": True}),
    ("n_ood_only", "OOD-only latents", {}),
    ("n_id_only", "ID-only latents", {}),
    ("js_divergence", "JS divergence of frequencies (bits)", {}),
    ("spearman", "Spearman ρ of frequencies", {}),
]


def build_view(results: dict) -> View:
    model = results["model"]
    saes = results["saes"]
    datasets = results["datasets"]
    id_name = next(d["name"] for d in datasets if d["role"] == "id")
    ood_names = [d["name"] for d in datasets if d["role"] == "ood"]
    labels = [s["label"] for s in saes]

    summary = []
    for ood in ood_names:
        gaps = []
        for s in saes:
            pair = next(p for p in s["pairs"] if p["ood"] == ood)
            gaps.append((pair["fvu_gap"], s["label"], pair))
        known = [g for g in gaps if g[0] is not None]
        parts = [
            f"{lab}: FVU {fmt(s_id)} → {fmt(s_ood)} (gap {fmt(gap)}), {pair['n_ood_only']} OOD-only latents, "
            f"JS {fmt(pair['js_divergence'])}"
            for (gap, lab, pair), s_id, s_ood in zip(
                gaps,
                [s["datasets"][id_name]["fvu"] for s in saes],
                [s["datasets"][ood]["fvu"] for s in saes],
            )
        ]
        line = f"{id_name} → {ood}: " + "; ".join(parts) + "."
        if len(known) > 1:
            best = min(known, key=lambda g: g[0])
            line += f" Smallest reconstruction gap: {best[1]}."
        summary.append(line)

    setup_rows = [
        ["model", f"{model['name']} ({model['family']}, {model['num_blocks']} blocks, d_model {model['d_model']})"],
        ["revision", str(model.get("revision") or "n/a")],
        ["input resolution", f"{model.get('image_size')} px"],
        ["device / dtype", f"{model.get('device')} / {model.get('dtype')}"],
    ]
    for d in datasets:
        classes = d.get("classes") or []
        cls_text = f", {len(classes)} classes" if classes else ""
        setup_rows.append(
            [f"{d['role'].upper()} set", f"{d['name']}: {d['n_images']:,} images{cls_text}, "
                                         f"{d['n_skipped']} unreadable skipped"]
        )
    setup = Table("Setup", ["", ""], setup_rows)

    sae_rows = []
    for s in saes:
        c = s["config"]
        sae_rows.append([
            s["label"], s["hook_point"], f"{c['d_in']} → {c['d_sae']}", str(c["k"]),
            f"{c['lambda_off']:g}", f"{c['lambda_ratio']:g}", str(c.get("model") or "n/a"), s["spec"],
        ])
    sae_table = Table("SAEs", ["SAE", "hook point", "d_in → d_sae", "k", "λ off-support L1", "λ L1/L2",
                               "trained on model", "source"], sae_rows)

    dataset_tables = []
    for name in [id_name] + ood_names:
        rows = [[label] + [fmt(s["datasets"][name][key], **kw) for s in saes] for key, label, kw in DATASET_METRICS]
        role = "ID" if name == id_name else "OOD"
        dataset_tables.append(Table(f"{name} ({role})", ["metric"] + labels, rows))

    pair_tables = []
    for ood in ood_names:
        rows = []
        for key, label, kw in PAIR_METRICS:
            rows.append([label] + [fmt(next(p for p in s["pairs"] if p["ood"] == ood)[key], **kw) for s in saes])
        pair_tables.append(Table(f"{id_name} (ID) vs {ood} (OOD)", ["metric"] + labels, rows))

    latent_tables = []
    for s in saes:
        tables = []
        for pair in s["pairs"]:
            for key, what in (("top_shifted", "most shifted"), ("top_ood_only", "most frequent OOD-only")):
                rows = [[str(r["latent"]), fmt(r["freq_id"], 4), fmt(r["freq_ood"], 4), fmt(r["log10_shift"], 2)]
                        for r in pair[key]]
                tables.append(Table(f"{what} latents, {pair['id']} vs {pair['ood']}",
                                    ["latent", "f ID", "f OOD", "log10 shift"], rows,
                                    note="none" if not rows else ""))
        latent_tables.append((s["label"], tables))

    tool = results.get("tool", {})
    settings = results.get("settings", {})
    prov_rows = [
        ["sae-audit", f"{tool.get('version')} (git {tool.get('git_revision') or 'n/a'})"],
        ["created", str(results.get("created"))],
        ["results schema", str(results.get("schema_version"))],
    ] + [[k, str(v)] for k, v in settings.items()]
    provenance = Table("Provenance", ["", ""], prov_rows)

    method = [
        "Each image goes through the model's own preprocessing; the forward pass stops after the deepest "
        "hooked block. The SAE reads the block output (the residual stream after that block) on its token "
        "set, encodes it with Top-k (ReLU after selection) and decodes it.",
        "Firing frequency f_j is the share of inputs (tokens) on which latent j is non-zero; alive means "
        "f_j > 0, dense f_j above the threshold. FVU is Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over the dataset "
        "(variance about the dataset mean). Effective units is (‖z‖₁/‖z‖₂)².",
        "Shared alive = |alive_ID ∩ alive_OOD| / |alive_ID|. The JS divergence (base 2, in [0, 1]) and "
        "Spearman ρ compare the two frequency profiles normalised to sum 1. Formulas: Gao et al. 2024 "
        "(arXiv 2406.04093), Jacquier et al. 2026 (arXiv 2606.27321), and the project's SPEC.",
    ]
    title = f"SAE audit of {model['name']}"
    from sae_audit.report.suite_sections import suite_pictures, suite_tables

    return View(title, summary, setup, sae_table, dataset_tables, pair_tables, latent_tables, provenance, method,
                suite_tables(results), suite_pictures(results))
