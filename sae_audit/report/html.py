"""Self-contained HTML report: inline CSS and inline SVG figures, no script, no external URL."""

from __future__ import annotations

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape

from sae_audit.report.view import Table, View


def _is_number(text: str) -> bool:
    t = text.replace(",", "").replace("%", "").replace("e-", "").replace("−", "-")
    try:
        float(t)
        return True
    except ValueError:
        return False


def html_table(t: Table, headless: bool = False) -> Markup:
    parts = ["<table>", f"<caption>{escape(t.caption)}</caption>"]
    if not headless:
        parts.append("<thead><tr>" + "".join(f'<th scope="col">{escape(h)}</th>' for h in t.header) + "</tr></thead>")
    parts.append("<tbody>")
    for row in t.rows:
        cells = [f'<th scope="row">{escape(row[0])}</th>']
        cells += [f'<td class="num">{escape(c)}</td>' if _is_number(c) else f"<td>{escape(c)}</td>" for c in row[1:]]
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    return Markup("\n".join(parts))


def render_html(view: View, figures: list[dict], tool_version: str, sections=()) -> str:
    """Render ``view``; ``figures`` are ``{"svg": inline svg markup, "alt": text}`` dicts.

    ``sections``: plugins' :class:`~sae_audit.plugins.RenderedSection` list (their
    HTML fragments are inserted as the plugins wrote them), placed before the method.
    """
    env = Environment(loader=PackageLoader("sae_audit.report", "templates"),
                      autoescape=select_autoescape(["html", "j2"]))
    return env.get_template("report.html.j2").render(view=view, figures=figures, table=html_table,
                                                     tool_version=tool_version, sections=list(sections))
