"""Plugins' report sections, from the ``sae_audit_register_report_sections`` hook.

Each registered ``render(results)`` returns ``None`` or a :class:`ReportSection`
(a title and the body as Markdown and as an HTML fragment). A section whose
``render`` raises or returns something else becomes a visible error note
naming the plugin (and a logged warning); the rest of the report is written.
What a plugin registers is checked here, next to the code that uses it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sae_audit.errors import SaeAuditError
from sae_audit.plugin_manager import BUILTIN, Registration, RegistrationError, get_plugin_manager, one_line
from sae_audit.report.view import Raw, Section

logger = logging.getLogger(__name__)

KIND = "report_sections"


@dataclass(frozen=True)
class ReportSection:
    """What a report-section ``render(results)`` returns.

    Attributes:
        title: the section heading (plain text).
        markdown: the section body in Markdown (no heading).
        html: the section body as an HTML fragment, already escaped,
            self-contained (no script, no external URL).
    """

    title: str
    markdown: str
    html: str


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


def plugin_sections(results: dict) -> list[Section]:
    """Render every registered report section from ``results``, in load order.

    Never raises for a plugin's failure: that section becomes an error note
    naming the plugin (a bug in a built-in section raises).

    Raises:
        sae_audit.plugin_manager.PluginError: two plugins register the same section name.
    """
    manager = get_plugin_manager()
    out = []
    for i, r in enumerate(section_registrations(), start=1):
        try:
            section = r.value(results)
            if section is None:
                continue
            if not isinstance(section, ReportSection) or not all(
                isinstance(getattr(section, a), str) for a in ("title", "markdown", "html")
            ):
                raise TypeError(f"render returned {type(section).__name__}, expected a "
                                "sae_audit.report.plugin_sections.ReportSection of three strings or None")
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - one section must not sink the report
            if r.plugin == BUILTIN and not isinstance(exc, (TypeError, SaeAuditError)):
                raise
            note = f"{manager.who(r.plugin)} failed to render report section {r.name!r}: {one_line(exc)}"
            logger.warning("sae-audit: warning: %s", note)
            out.append(Section(f"plugin-{i}", f"{r.name} (error)", [Raw(error=note)]))
            continue
        out.append(Section(f"plugin-{i}", section.title, [Raw(section.markdown, section.html)]))
    return out
