"""Results document and the reports rendered from it (Markdown, self-contained HTML)."""

from __future__ import annotations

import re
from pathlib import Path

from sae_audit.outputs import OutputFolder
from sae_audit.results.document import dump_results, load_results, validate_results

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def render_reports(results: dict, formats=("md", "html")) -> dict[str, str | bytes]:
    """Render the reports in memory: ``{relative path: content}``.

    ``report.md`` with ``figures/*.png`` for ``"md"``; for ``"html"`` one
    self-contained ``report.html`` and the latent explorer ``latents.html``
    (:mod:`sae_audit.report.explorer`). Each figure is drawn once and shared.

    Raises:
        ValueError: a figure or image name that is not a plain file-name stem (a bug in a section builder).
    """
    from sae_audit.report import plots
    from sae_audit.report.explorer import EXPLORER_FILE, render_explorer
    from sae_audit.report.heatmaps import colour_bar_png
    from sae_audit.report.html import render_html
    from sae_audit.report.markdown import SCALE_NAME, figure_path, overlay_path, render_markdown
    from sae_audit.report.sections import build_view

    view = build_view(results)
    pngs: dict[str, bytes] = {}
    for fig in view.figures():
        if not _SAFE_NAME.match(fig.name) or fig.name in pngs:
            raise ValueError(f"figure name {fig.name!r} is not a unique plain file-name stem")
        pngs[fig.name] = plots.to_png_bytes(fig.draw())
    explorer = EXPLORER_FILE if "html" in formats else None
    outputs: dict[str, str | bytes] = {}
    if "md" in formats:
        for name, png in pngs.items():
            outputs[figure_path(name)] = png
        for im in view.images():
            if not _SAFE_NAME.match(im.name) or figure_path(im.name) in outputs:
                raise ValueError(f"image name {im.name!r} is not a unique plain file-name stem")
            outputs[figure_path(im.name)] = im.png
            if im.overlay is not None:
                if overlay_path(im.name) in outputs:
                    raise ValueError(f"image name {im.name!r} clashes with another image's heatmap")
                outputs[overlay_path(im.name)] = im.overlay
        if any(g.scale is not None for g in view.galleries()):
            outputs[figure_path(SCALE_NAME)] = colour_bar_png()
        outputs["report.md"] = render_markdown(view, explorer=explorer)
    if "html" in formats:
        outputs["report.html"] = render_html(view, pngs, explorer=explorer)
        outputs[EXPLORER_FILE] = render_explorer(results)
    return outputs


def report_files(results: dict, formats=("md", "html"), write_json: bool = True) -> dict[str, str | bytes]:
    """Everything a report folder holds, rendered in memory: ``{relative path: content}``
    (``results.json`` when ``write_json``, then :func:`render_reports`)."""
    outputs: dict[str, str | bytes] = {}
    if write_json:
        outputs["results.json"] = dump_results(results)
    outputs.update(render_reports(results, formats))
    return outputs


def write_files(folder: Path, outputs: dict[str, str | bytes]) -> None:
    """Write ``{relative path: content}`` under ``folder`` (a staging folder: plain writes)."""
    for rel, content in outputs.items():
        path = Path(folder) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        path.chmod(0o644)


def write_reports(results: dict, out_dir: str | Path, formats=("md", "html"), write_json: bool = True,
                  overwrite: bool = True, inputs=(), keep=()) -> list[Path]:
    """Write ``results.json`` (optional), ``report.md`` (+ ``figures/*.png``), ``report.html`` and
    ``latents.html`` to ``out_dir``.

    Everything is rendered in memory first, written into a staging folder and
    swapped in as a whole (:class:`sae_audit.outputs.OutputFolder`): a failure
    or a kill leaves the previous report complete, and only files an earlier
    sae-audit run wrote there are replaced (figures it no longer uses are
    dropped; anything else in the folder is kept).

    Args:
        overwrite: allow replacing an earlier sae-audit output in ``out_dir``.
        inputs: paths the report was made from (``out_dir`` may not contain them...
        keep: ...unless listed here: files inside ``out_dir`` that stay, e.g. the
            ``results.json`` a report is re-rendered from in place).

    Raises:
        SaeAuditError: the folder checks of :func:`sae_audit.outputs.check_out_dir`,
            another process writing the folder, or a file in the way that
            sae-audit did not write.
    """
    outputs = report_files(results, formats, write_json)
    with OutputFolder(out_dir, overwrite=overwrite, inputs=inputs, keep=keep) as folder:
        write_files(folder.stage(), outputs)
        return folder.commit()


__all__ = ["dump_results", "load_results", "render_reports", "report_files", "validate_results", "write_files",
           "write_reports"]
