"""Plugins' report sections, from the ``sae_audit_register_report_sections`` hook.

A registered ``render(results)`` returns ``None`` (nothing to say for this
audit) or a :class:`~sae_audit.report.view.Section`: the same section model the
built-in sections use (paragraphs, bullet lists, tables, figures, galleries,
collapsible details). The host renders it into both reports and escapes every
text, so a name such as ``<svg onload=...>`` stays text. The section's anchor is
``plugin-<plugin>-<name>`` whatever the plugin sets, and its figures and images
are named under that anchor, so nothing collides with another section.

Raw Markdown or HTML is an explicit escape hatch: a
:class:`~sae_audit.report.view.Raw` block (or, for older plugins, a whole
:class:`ReportSection`) is sanitised with ``nh3`` (an allow-list of inline and
table tags; no script, no event handler, no style, no URL except ``data:``
images) before it goes into either report.

Each plugin's section ends with a line naming the plugin (and its
distribution and version). A section whose ``render`` raises or returns something else becomes a visible
error note naming the plugin (and a logged warning); the rest of the report is
written. What a plugin registers is checked here, next to the code that uses it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace

import nh3

from sae_audit.errors import SaeAuditError
from sae_audit.plugin_manager import BUILTIN, Registration, RegistrationError, get_plugin_manager, one_line
from sae_audit.report.view import Bullets, Details, Figure, Gallery, Image, Raw, Section, Table

logger = logging.getLogger(__name__)

KIND = "report_sections"

#: What raw HTML from a plugin may keep (everything else is removed, text kept).
ALLOWED_TAGS = {"p", "br", "strong", "em", "b", "i", "code", "pre", "span", "div", "ul", "ol", "li", "table",
                "caption", "thead", "tbody", "tr", "th", "td", "details", "summary", "h3", "h4", "figure",
                "figcaption", "img", "sub", "sup", "blockquote"}
ALLOWED_ATTRIBUTES = {"*": {"class", "title"}, "th": {"scope", "colspan", "rowspan"},
                      "td": {"colspan", "rowspan"}, "img": {"src", "alt", "width", "height"}}


@dataclass(frozen=True)
class ReportSection:
    """A section as Markdown and HTML strings (the older form; prefer returning a
    :class:`~sae_audit.report.view.Section`). Both bodies are sanitised.

    Attributes:
        title: the section heading (plain text).
        markdown: the section body in Markdown (no heading).
        html: the section body as an HTML fragment.
    """

    title: str
    markdown: str
    html: str


def sanitise_html(fragment: str) -> str:
    """``fragment`` with only :data:`ALLOWED_TAGS` and :data:`ALLOWED_ATTRIBUTES` kept (``data:`` image URLs only)."""
    return nh3.clean(str(fragment), tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES, url_schemes={"data"},
                     link_rel=None)


def sanitise_markdown(text: str) -> str:
    """Markdown from a plugin with any embedded HTML sanitised like :func:`sanitise_html`.

    Link and image targets other than ``data:`` and in-page ``#anchors`` are
    dropped (the report references no external URL).
    """
    text = sanitise_html(text)  # inline HTML in Markdown is HTML; nh3 keeps plain text and escapes stray '<'
    return re.sub(r"(!?\[[^\]]*\])\((?!data:|#)[^)]*\)", r"\1", text)


def _accept(name, render) -> tuple:
    """``register(name, render)`` (see the hook's documentation)."""
    if not callable(render):
        raise RegistrationError(f"render must be callable, got {type(render).__name__} {render!r:.60}")
    return name, render, "", ()


def section_registrations() -> list[Registration]:
    """Every registered report section, in load order.

    Raises:
        sae_audit.plugin_manager.PluginError: two plugins register the same section name.
    """
    return get_plugin_manager().registrations(KIND, _accept)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "x"


def _checked_blocks(blocks, prefix: str) -> list:
    """Validate a plugin's blocks and make them safe: raw fragments sanitised, figure and image names prefixed.

    Raises:
        TypeError: a block of an unknown kind.
    """
    out = []
    for b in blocks:
        if isinstance(b, str):
            out.append(b)
        elif isinstance(b, Bullets):
            out.append(Bullets([str(i) for i in b.items]))
        elif isinstance(b, Table):
            out.append(replace(b, caption=str(b.caption), header=[str(h) for h in b.header],
                               rows=[[str(c) for c in row] for row in b.rows], note=str(b.note)))
        elif isinstance(b, Figure):
            out.append(replace(b, name=f"{prefix}-{_slug(b.name)}"))
        elif isinstance(b, Gallery):
            out.append(replace(b, images=[replace(im, name=f"{prefix}-{_slug(im.name)}") for im in b.images
                                          if isinstance(im, Image)]))
        elif isinstance(b, Details):
            out.append(Details(str(b.summary), _checked_blocks(b.blocks, prefix)))
        elif isinstance(b, Raw):
            out.append(Raw(sanitise_markdown(b.markdown), sanitise_html(b.html)))
        else:
            raise TypeError(f"a section block of type {type(b).__name__}; use str, Bullets, Table, Figure, Gallery, "
                            "Details or Raw from sae_audit.report.view")
    return out


def plugin_sections(results: dict) -> list[Section]:
    """Render every registered report section from ``results``, in load order.

    Never raises for a plugin's failure: that section becomes an error note
    naming the plugin (a bug in a built-in section raises).

    Raises:
        sae_audit.plugin_manager.PluginError: two plugins register the same section name.
    """
    manager = get_plugin_manager()
    out = []
    for r in section_registrations():
        anchor = f"plugin-{_slug(r.plugin)}-{_slug(r.name)}"
        try:
            section = r.value(results)
            if section is None:
                continue
            if isinstance(section, ReportSection) and all(
                    isinstance(getattr(section, a), str) for a in ("title", "markdown", "html")):
                section = Section(anchor, section.title, [Raw(section.markdown, section.html)])
            if not isinstance(section, Section):
                raise TypeError(f"render returned {type(section).__name__}, expected a sae_audit.report.view.Section "
                                "(or a ReportSection of three strings) or None")
            credit = [] if r.plugin == BUILTIN else [f"This section comes from {manager.who(r.plugin)}."]
            out.append(Section(anchor, str(section.title), _checked_blocks(section.blocks, anchor) + credit))
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - one section must not sink the report
            if r.plugin == BUILTIN and not isinstance(exc, (TypeError, SaeAuditError)):
                raise
            note = f"{manager.who(r.plugin)} failed to render report section {r.name!r}: {one_line(exc)}"
            logger.warning("sae-audit: warning: %s", note)
            out.append(Section(anchor, f"{r.name} (error)", [Raw(error=note)]))
    return out
