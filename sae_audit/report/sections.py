"""The report's built-in sections and the whole view, from the results document alone.

:func:`build_view` lays the report out: summary (the at-a-glance table and small multiples of
:mod:`sae_audit.report.glance`, then the verdict in words), the SAEs,
ID vs OOD coverage, reconstruction, the audit suites' sections
(:mod:`sae_audit.report.suite_sections`), shifted latents, plugins' sections
(:mod:`sae_audit.report.plugin_sections`), then method and provenance.
"""

from __future__ import annotations

from typing import Callable

from sae_audit.report import suite_sections
from sae_audit.report.glance import glance_blocks, model_name, name_of
from sae_audit.report.plugin_sections import plugin_sections
from sae_audit.report.verdict import fmt_ci, verdict
from sae_audit.report.view import Bullets, Details, Figure, Section, Table, View, direction, fmt
from sae_audit.results.metric_info import metrics_of
from sae_audit.results.shift import RULE

__all__ = ["build_view", "verdict"]

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


def _setup_table(results: dict) -> Table:
    model = results["model"]
    rows = [
        ["model", f"{model_name(results)} ({model['family']}, {model['num_blocks']} blocks, "
                  f"d_model {model['d_model']})"],
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
            f"{c.get('lambda_off', 0):g}", f"{c.get('lambda_ratio', 0):g}", name_of(results, c.get("model")),
            f"{px} px" if px is not None else "n/a", s["spec"],
        ])
    note = ""
    if mismatched:
        note = (f"Audited at {audited_px} px, but " + "; ".join(mismatched)
                + ": latents may not mean the same at another scale.")
    return Table("The audited SAEs", ["SAE", "hook point", "d_in → d_sae", "k", "λ off-support L1", "λ L1/L2",
                                      "trained on model", "trained at", "source"], rows, note=note)


def _floor_note(results: dict) -> str:
    """Where the floor comes from, or why there is none."""
    floors = [s.get("noise_floor") or {} for s in results["saes"]]
    got = next((f for f in floors if "id" in f), None)
    if got is not None:
        a, b = (got.get("n_images") or ["?", "?"])[:2]
        return (f"Floor: the same metric between two disjoint halves of {got['id']} ({a} and {b} images), what "
                f"sampling alone gives. {RULE}")
    why = next((f.get("unavailable") for f in floors if f.get("unavailable")), "no noise floor in these results")
    return f"Noise floor unavailable: {why}."


def _shift_text(flag) -> str:
    return "n/a" if flag is None else ("shifted" if flag else "no")


def _coverage_section(results: dict) -> Section:
    from sae_audit.report import plots

    id_name, ood_names = _names(results)
    saes = results["saes"]
    blocks: list = [
        "How the SAE's latents are used on each OOD set compared with the ID set, each value with its 95% "
        "bootstrap interval [low, high] and beside the ID-vs-ID noise floor; the last column per SAE says whether "
        "the pair is shifted beyond the floor. Each metric's label says which direction is better, where one is.",
        _floor_note(results),
    ]
    for i, s in enumerate(saes):
        blocks.append(Figure(
            f"frequency-hist-{i}",
            f"Step histograms of log10 firing frequency of the alive latents of {s['label']}, one line style per "
            f"image set ({', '.join([id_name] + ood_names)}); dead latents are counted in the legend.",
            lambda s=s: plots.frequency_histogram(s, [id_name] + ood_names),
        ))
    header = ["metric"]
    for s in saes:
        header += [f"{s['label']}: value [95% CI]", f"{s['label']}: ID-vs-ID floor", f"{s['label']}: shifted?"]
    for ood in ood_names:
        rows = []
        for m in metrics_of("pair"):
            row = [m.label + direction(m)]
            for s in saes:
                p = _pair(s, ood)
                floor = s.get("noise_floor") or {}
                row.append(fmt_ci(p.get(m.key), (p.get("intervals") or {}).get(m.key), m))
                row.append("unavailable" if "unavailable" in floor or not floor else
                           fmt_ci(floor.get(m.key), (floor.get("intervals") or {}).get(m.key), m))
                row.append(_shift_text((p.get("shifted") or {}).get(m.key)) if m.shift is not None else "")
            rows.append(row)
        blocks.append(Table(f"{id_name} (ID) vs {ood} (OOD)", header, rows))
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
    blocks.append("Each value with its 95% bootstrap interval [low, high] (n/a: intervals off or unavailable).")
    for name in [id_name] + ood_names:
        rows = [[m.label + direction(m)] + [fmt_ci(s["datasets"][name].get(m.key),
                                                   (s["datasets"][name].get("intervals") or {}).get(m.key), m)
                                            if m.interval else fmt(s["datasets"][name].get(m.key), m.digits, m.pct)
                                            for s in saes]
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
    "Intervals: a streaming Poisson bootstrap (Chamandy et al. 2012). Each image gets R Poisson(1) weights from a "
    "counter-based generator keyed by the seed, the image set and the image id, so the weights do not depend on "
    "batching or sharding; every sum is also accumulated with each replicate's weights, the metric is computed per "
    "replicate, and the 95% interval is the 2.5th to 97.5th percentile of the R values. Tokens of an image share "
    "its weight. The monosemanticity summary uses 16 random groups of images instead of single images; probe "
    "accuracy resamples the held-out images of the fixed probes.",
    "Noise floor: the ID set is split into two disjoint halves by a seeded hash of the image id, and every pair "
    "metric is computed between the halves: the value sampling alone produces. " + RULE,
    "Downstream fidelity (fidelity suite): the hooked tokens of the block are replaced by the SAE's "
    "reconstruction (other tokens untouched; for mean-token SAEs every patch token is shifted so their mean is the "
    "reconstruction) and the model runs on to its output y; mean ablation replaces them by the ID set's mean "
    "activation. fidelity = 1 − E[d(y, y_sae)] / E[d(y, y_ablate)] with d = 1 − cos (1: output untouched, 0: no "
    "better than erasing the hooked tokens); with a classification head also the KL divergence of the softmax "
    "and top-1 agreement. Rarity scores no image against frequencies that include its own firings "
    "(leave-one-out for ID images).",
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
        ["model loaded from", str(results["model"]["name"])],
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
    # The first screen: the verdict table (SAE x OOD set: shift beyond the noise floor) and the small
    # multiples (sae_audit.report.glance), then the verdict in words.
    summary = Section("summary", "Summary", [*glance_blocks(results), Bullets(verdict(results)),
                                             _setup_table(results)])
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
    title = f"SAE audit of {model_name(results)}"
    subtitle = ("Coverage of sparse-autoencoder latents, in-distribution vs out-of-distribution. "
                f"Generated by sae-audit {results.get('tool', {}).get('version', '?')} on {results.get('created')}.")
    return View(title, subtitle, sections)
