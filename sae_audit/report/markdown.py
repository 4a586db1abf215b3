"""Markdown report (GitHub and Hugging Face hub flavour) rendered from the results document."""

from __future__ import annotations

import html as _html
import re

from jinja2 import Environment, PackageLoader

from sae_audit.report.view import Table, View

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>|#])")


def md_escape(text) -> str:
    """Escape Markdown and inline-HTML syntax so names and labels render literally."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


def md_table(t: Table, headless: bool = False) -> str:
    header = ["", ""] if headless else t.header
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines) + "\n"


def render_markdown(view: View, figures: list[dict], sections=()) -> str:
    """Render ``view``; ``figures`` are ``{"path": relative path, "alt": text}`` dicts.

    ``sections``: plugins' :class:`~sae_audit.plugins.RenderedSection` list, placed before the method.
    """
    env = Environment(loader=PackageLoader("sae_audit.report", "templates"), autoescape=False,
                      keep_trailing_newline=True)
    tmpl = env.get_template("report.md.j2")
    text = tmpl.render(view=view, figures=figures, sections=list(sections), table=md_table, md=md_escape,
                       html=lambda s: _html.escape(str(s)))
    return re.sub(r"\n{3,}", "\n\n", text)
