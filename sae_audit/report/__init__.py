"""Results document and the reports rendered from it (Markdown, self-contained HTML)."""

from __future__ import annotations

import re
from pathlib import Path

from sae_audit.outputs import atomic_write_bytes, atomic_write_text
from sae_audit.results.document import dump_results, load_results, validate_results

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def render_reports(results: dict, formats=("md", "html")) -> dict[str, str | bytes]:
    """Render the reports in memory: ``{relative path: content}``.

    ``report.md`` with ``figures/*.png`` for ``"md"``, one self-contained
    ``report.html`` for ``"html"``. Each figure is drawn once and shared.

    Raises:
        ValueError: a figure or image name that is not a plain file-name stem (a bug in a section builder).
    """
    from sae_audit.report import plots
    from sae_audit.report.html import render_html
    from sae_audit.report.markdown import figure_path, render_markdown
    from sae_audit.report.sections import build_view

    view = build_view(results)
    pngs: dict[str, bytes] = {}
    for fig in view.figures():
        if not _SAFE_NAME.match(fig.name) or fig.name in pngs:
            raise ValueError(f"figure name {fig.name!r} is not a unique plain file-name stem")
        pngs[fig.name] = plots.to_png_bytes(fig.draw())
    outputs: dict[str, str | bytes] = {}
    if "md" in formats:
        for name, png in pngs.items():
            outputs[figure_path(name)] = png
        for im in view.images():
            if not _SAFE_NAME.match(im.name) or figure_path(im.name) in outputs:
                raise ValueError(f"image name {im.name!r} is not a unique plain file-name stem")
            outputs[figure_path(im.name)] = im.png
        outputs["report.md"] = render_markdown(view)
    if "html" in formats:
        outputs["report.html"] = render_html(view, pngs)
    return outputs


def write_reports(results: dict, out_dir: Path, formats=("md", "html"), write_json: bool = True) -> list[Path]:
    """Write ``results.json`` (optional), ``report.md`` (+ ``figures/*.png``) and ``report.html``.

    Everything is rendered in memory first; then every file is written under
    a temporary name and renamed into place, so a failure never leaves a
    half-written report over a good one.
    """
    out_dir = Path(out_dir)
    outputs: dict[str, str | bytes] = {}
    if write_json:
        outputs["results.json"] = dump_results(results)
    outputs.update(render_reports(results, formats))
    written = []
    for rel, content in outputs.items():
        path = out_dir / rel
        if isinstance(content, bytes):
            atomic_write_bytes(path, content)
        else:
            atomic_write_text(path, content)
        written.append(path)
    if "md" in formats:
        # Figures of an earlier report in this folder that this one does not
        # reference (e.g. it had more SAEs) would only mislead a reader.
        for stale in sorted((out_dir / "figures").glob("*.png")):
            if stale not in written:
                stale.unlink()
    return written


__all__ = ["atomic_write_bytes", "atomic_write_text", "dump_results", "load_results", "render_reports",
           "validate_results", "write_reports"]
