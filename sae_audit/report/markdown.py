"""Markdown report (GitHub and Hugging Face hub flavour) rendered from the results document.

Tables are GitHub pipe tables, per-latent detail sits in ``<details>`` blocks,
figures are PNG files referenced relative to the report folder
(``figures/NAME.png``). Every name or label is escaped (:func:`md_escape`), so a
file name or class name containing Markdown or HTML renders literally.
"""

from __future__ import annotations

import html as _html
import re

from jinja2 import Environment, PackageLoader

from sae_audit.report.view import Table, View, is_number

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>|#!~])")


def md_escape(text) -> str:
    """Escape Markdown and inline-HTML syntax so names and labels render literally.

    Backslash-escapes Markdown punctuation (including ``<`` and ``>``, so no
    HTML tag survives) and turns ``&`` into ``&amp;`` so no entity is decoded.
    """
    text = str(text).replace("&", "&amp;")
    return _MD_SPECIAL.sub(r"\\\1", text).replace("\r", " ").replace("\n", " ")


def md_table(t: Table) -> str:
    """A pipe table; columns whose cells are all numbers are right-aligned (``---:``)."""
    header = ["", ""] if t.headless else t.header
    numeric = [i > 0 and bool(t.rows) and all(i < len(r) and is_number(r[i]) for r in t.rows)
               for i in range(len(header))]
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines) + "\n"


def figure_path(name: str) -> str:
    """Where a figure or image named ``name`` lives, relative to the report folder."""
    return f"figures/{name}.png"


def overlay_path(name: str) -> str:
    """Where the heatmap overlay of gallery image ``name`` lives, relative to the report folder."""
    return figure_path(f"{name}-map")


#: The colour scale strip every heatmap gallery refers to.
SCALE_NAME = "colour-scale"


def render_markdown(view: View, explorer: str | None = None) -> str:
    """Render ``view``; figures and gallery images are referenced as ``figures/<name>.png``, heatmap
    overlays as ``figures/<name>-map.png``; ``explorer``: file name of the latent explorer to link."""
    env = Environment(loader=PackageLoader("sae_audit.report", "templates"), autoescape=False,
                      keep_trailing_newline=True)
    tmpl = env.get_template("report.md.j2")
    text = tmpl.render(view=view, table=md_table, md=md_escape, html=lambda s: _html.escape(str(s)),
                       kind=lambda b: type(b).__name__, figure_src=lambda f: figure_path(f.name),
                       image_src=lambda im: figure_path(im.name), overlay_src=lambda im: overlay_path(im.name),
                       scale_src=figure_path(SCALE_NAME), explorer=explorer)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
