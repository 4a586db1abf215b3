"""What a report says, computed once from the results document.

Both renderers (Markdown, HTML) format the same :class:`View`: a title and an
ordered list of :class:`Section` objects. A section holds *blocks*, rendered in
order by both renderers:

- ``str``: a paragraph of plain text (escaped by the renderers);
- :class:`Bullets`: a list of plain-text items;
- :class:`Table`: a caption, a header row and body rows (first cell of each
  row is a row header);
- :class:`Figure`: a matplotlib figure drawn on demand (``draw()``), with alt
  text; PNG file under ``figures/`` in Markdown, a PNG data URI in HTML;
- :class:`Gallery`: small images (PNG bytes, e.g. latent thumbnails stored
  with the results), each with alt text;
- :class:`Details`: a collapsible group of blocks (``<details>``).

The sections themselves are built in :mod:`sae_audit.report.sections` (the
built-in ones), :mod:`sae_audit.report.suite_sections` (the audit suites') and
:mod:`sae_audit.report.plugin_sections` (plugins'). Everything must come from
the results document alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Union

from sae_audit.results.metric_info import MetricInfo


@dataclass
class Table:
    """A table; ``headless`` tables are key/value lists (no header row)."""

    caption: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""
    headless: bool = False


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Figure:
    """A plot: ``draw()`` returns a matplotlib figure; ``name`` is a file-name stem ([a-z0-9-])."""

    name: str
    alt: str
    draw: Callable[[], object]
    caption: str = ""


@dataclass
class Image:
    """A raster image (PNG bytes) with its alt text, e.g. one thumbnail.

    ``overlay``: optional PNG of the same image with a heatmap drawn over it
    (shown beside the original, with ``overlay_alt``; a file ``<name>-map.png``
    in Markdown).
    """

    name: str
    alt: str
    png: bytes
    caption: str = ""
    overlay: bytes | None = None
    overlay_alt: str = ""


@dataclass
class ColourScale:
    """The key of a gallery's heatmaps: a colour strip (PNG) from ``low`` (left) to ``high`` (right)."""

    png: bytes
    low: str
    high: str
    label: str


@dataclass
class Gallery:
    caption: str
    images: list[Image]
    note: str = ""
    scale: ColourScale | None = None


@dataclass
class Details:
    summary: str
    blocks: list = field(default_factory=list)


@dataclass
class Raw:
    """A plugin's own report fragments, inserted as written (``markdown`` and ``html``),
    or, when ``error`` is set, a visible note that the section could not be rendered."""

    markdown: str = ""
    html: str = ""
    error: str | None = None


Block = Union[str, Bullets, Table, Figure, Gallery, Details, Raw]


@dataclass
class Section:
    """A top-level report section (``<h2>``); ``id`` is its anchor ([a-z0-9-])."""

    id: str
    title: str
    blocks: list = field(default_factory=list)


@dataclass
class View:
    title: str
    subtitle: str
    sections: list[Section]

    def section(self, id: str) -> Section:
        return next(s for s in self.sections if s.id == id)

    def figures(self) -> list[Figure]:
        """Every figure of the view, in order (inside :class:`Details` too)."""
        return [b for b in _walk(self.sections) if isinstance(b, Figure)]

    def images(self) -> list[Image]:
        return [im for g in self.galleries() for im in g.images]

    def galleries(self) -> list[Gallery]:
        """Every gallery of the view, in order (inside :class:`Details` too)."""
        return [b for b in _walk(self.sections) if isinstance(b, Gallery)]


def _walk(sections):
    for s in sections:
        stack = list(s.blocks)
        while stack:
            b = stack.pop(0)
            yield b
            if isinstance(b, Details):
                stack[:0] = b.blocks


def is_number(text: str) -> bool:
    """Whether a table cell reads as a number (``1,234``, ``12.5%``, ``−0.3``): such cells are right-aligned."""
    t = str(text).replace(",", "").replace("%", "").replace("−", "-").strip()
    try:
        float(t)
        return True
    except ValueError:
        return False


def fmt(value, digits: int = 3, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if pct:
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        if value != 0 and abs(value) < 10 ** (-digits):
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


def fmt_metric(info: MetricInfo, value) -> str:
    return fmt(value, info.digits, info.pct)


def direction(info: MetricInfo) -> str:
    """`` (higher is better)``, `` (lower is better)`` or ``""``: said in words, never by colour alone."""
    if info.higher_is_better is None:
        return ""
    return " (higher is better)" if info.higher_is_better else " (lower is better)"


__all__ = ["Block", "Bullets", "ColourScale", "Details", "Figure", "Gallery", "Image", "Raw", "Section", "Table", "View", "direction",
           "fmt", "fmt_metric", "is_number"]
