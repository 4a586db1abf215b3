"""Results document and the reports rendered from it (Markdown, self-contained HTML)."""

from __future__ import annotations

from pathlib import Path

from sae_audit.report.results import atomic_write_text, dump_results, load_results


def _figures(results: dict):
    from sae_audit.report import plots

    datasets = results["datasets"]
    id_name = next(d["name"] for d in datasets if d["role"] == "id")
    ood = [d["name"] for d in datasets if d["role"] == "ood"]
    for i, s in enumerate(results["saes"]):
        yield (f"frequency-hist-{i}", plots.frequency_histogram(s, [id_name] + ood),
               f"Histogram of log10 firing frequency of alive latents of {s['label']} on each image set.")
        yield (f"frequency-scatter-{i}", plots.frequency_scatter(s, id_name, ood),
               f"Per-latent firing frequency on {id_name} against each OOD set for {s['label']}; "
               "points above the dashed line fire more often out of distribution.")
    from sae_audit.report.suite_sections import suite_figures

    yield from suite_figures(results)


def write_reports(results: dict, out_dir: Path, formats=("md", "html"), write_json: bool = True) -> list[Path]:
    """Write ``results.json`` (optional), ``report.md`` (+ ``figures/*.png``) and ``report.html``.

    Every file is written under a temporary name and renamed into place, so a
    failure never leaves a half-written report over a good one. Rendering
    happens before anything is written.
    """
    from sae_audit import __version__
    from sae_audit.report import plots
    from sae_audit.report.html import render_html
    from sae_audit.report.markdown import render_markdown
    from sae_audit.report.view import build_view

    out_dir = Path(out_dir)
    view = build_view(results)
    outputs: dict[str, str | bytes] = {}
    if write_json:
        outputs["results.json"] = dump_results(results)
    figs = list(_figures(results))
    if "md" in formats:
        md_figs = []
        for name, fig, alt in figs:
            outputs[f"figures/{name}.png"] = plots.to_png_bytes(fig)
            md_figs.append({"path": f"figures/{name}.png", "alt": alt})
        outputs["report.md"] = render_markdown(view, md_figs)
        from sae_audit.report.suite_sections import thumbnail_files

        outputs.update(thumbnail_files(results))
        figs = list(_figures(results)) if "html" in formats else []
    if "html" in formats:
        html_figs = [{"svg": plots.to_svg(fig), "alt": alt} for _, fig, alt in figs]
        outputs["report.html"] = render_html(view, html_figs, __version__)
    written = []
    for rel, content in outputs.items():
        path = out_dir / rel
        if isinstance(content, bytes):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(content)
            tmp.replace(path)
        else:
            atomic_write_text(path, content)
        written.append(path)
    return written


__all__ = ["atomic_write_text", "dump_results", "load_results", "write_reports"]
