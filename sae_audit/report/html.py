"""Self-contained HTML report: inline CSS, figures and thumbnails as PNG data URIs, no script, no URL."""

from __future__ import annotations

import base64

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape

from sae_audit.report.view import Table, View, is_number


def html_table(t: Table) -> Markup:
    """A table with a caption, ``th`` column headers (unless headless) and a ``th`` row header per row."""
    parts = ["<table>", f"<caption>{escape(t.caption)}</caption>"]
    if not t.headless:
        parts.append("<thead><tr>" + "".join(f'<th scope="col">{escape(h)}</th>' for h in t.header) + "</tr></thead>")
    parts.append("<tbody>")
    for row in t.rows:
        cells = [f'<th scope="row">{escape(row[0])}</th>']
        cells += [f'<td class="num">{escape(c)}</td>' if is_number(c) else f"<td>{escape(c)}</td>" for c in row[1:]]
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    return Markup("\n".join(parts))


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(view: View, figure_png: dict[str, bytes]) -> str:
    """Render ``view`` as one self-contained HTML page.

    Args:
        view: what to say (:func:`sae_audit.report.sections.build_view`).
        figure_png: PNG bytes of every :class:`~sae_audit.report.view.Figure`, by name.
    Every text is HTML-escaped (Jinja autoescape); images are ``data:`` URIs.
    """
    env = Environment(loader=PackageLoader("sae_audit.report", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=False)
    return env.get_template("report.html.j2").render(
        view=view, table=html_table, kind=lambda b: type(b).__name__,
        figure_src=lambda f: data_uri(figure_png[f.name]), image_src=lambda im: data_uri(im.png),
    )
