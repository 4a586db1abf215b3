"""Self-contained HTML report: inline CSS, figures and thumbnails as PNG data URIs, no script, no URL
(but the link to the latent explorer beside it)."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape

from sae_audit.report.view import Figure, Table, View, is_number


def html_table(t: Table, label: str | None = None) -> Markup:
    """A table with a caption, ``th`` column headers (unless headless) and a ``th`` row header per row.

    The table sits in a focusable region that scrolls sideways on a narrow screen, so the page
    itself never does.
    """
    parts = [f'<div class="table-wrap" role="region" tabindex="0" aria-label="{escape(label or t.caption)}">',
             "<table>", f"<caption>{escape(t.caption)}</caption>"]
    if not t.headless:
        parts.append("<thead><tr>" + "".join(f'<th scope="col">{escape(h)}</th>' for h in t.header) + "</tr></thead>")
    parts.append("<tbody>")
    for row in t.rows:
        cells = [f'<th scope="row">{escape(row[0])}</th>']
        cells += [f'<td class="num">{escape(c)}</td>' if is_number(c) else f"<td>{escape(c)}</td>" for c in row[1:]]
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table></div>")
    return Markup("\n".join(parts))


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


@dataclass
class FigureGrid:
    """Consecutive figures of a section, laid out side by side at the page width."""

    figures: list


def runs(blocks: list) -> list:
    """``blocks`` with every run of consecutive :class:`Figure` s gathered into one :class:`FigureGrid`."""
    out: list = []
    for b in blocks:
        if isinstance(b, Figure):
            if out and isinstance(out[-1], FigureGrid):
                out[-1].figures.append(b)
            else:
                out.append(FigureGrid([b]))
        else:
            out.append(b)
    return out


CSS_TEXT_COLOURS = {"fg": "#1b1b1b", "muted": "#4d4d4d", "accent": "#0a4f96"}


def render_html(view: View, figure_png: dict[str, bytes], explorer: str | None = None) -> str:
    """Render ``view`` as one self-contained HTML page.

    Args:
        view: what to say (:func:`sae_audit.report.sections.build_view`).
        figure_png: PNG bytes of every :class:`~sae_audit.report.view.Figure`, by name.
        explorer: file name of the latent explorer written beside the report (linked from the top), or ``None``.
    Every text is HTML-escaped (Jinja autoescape); images are ``data:`` URIs.
    """
    env = Environment(loader=PackageLoader("sae_audit.report", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=False)
    return env.get_template("report.html.j2").render(
        view=view, table=html_table, kind=lambda b: type(b).__name__, runs=runs, explorer=explorer,
        figure_src=lambda f: data_uri(figure_png[f.name]), image_src=lambda im: data_uri(im.png),
        png_src=data_uri, colours=CSS_TEXT_COLOURS,
    )
