"""The Markdown and HTML reports: structure, accessibility, self-containment, escaping, a real browser."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from sae_audit.cli import main
from sae_audit.report import render_reports, write_reports
from sae_audit.results.document import load_results
from tests.report.conftest import EVIL_CLASS, EVIL_SAE, EVIL_SET
from tests.report.htmlcheck import Page

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "reports" / "demo" / "results.json"

SECTIONS = ["summary", "saes", "coverage", "reconstruction", "latents", "method"]


@pytest.fixture(scope="module")
def rendered(audit_dir, tmp_path_factory):
    """``sae-audit report render`` of the tiny hostile audit, from the JSON alone."""
    out = tmp_path_factory.mktemp("rendered")
    assert main(["report", "render", str(audit_dir / "results.json"), "--out", str(out)]) == 0
    return out


def markdown_to_html(text: str) -> str:
    """GitHub-like rendering (CommonMark + tables, raw HTML allowed) by markdown-it-py."""
    return MarkdownIt("commonmark", {"html": True}).enable("table").render(text)


def check_structure(html: str, script_ok: bool = False) -> Page:
    page = Page(html)
    # Self-contained: no URL leaves the document (only data: URIs, in-page anchors and the explorer beside it).
    for url in page.urls():
        assert url.startswith(("data:", "#")) or url == "latents.html", url
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    scripts = page.find("script")
    assert not page.find("link") and not page.find("iframe")
    assert (len(scripts) <= 1 and not any(a.get("src") for a in scripts)) if script_ok else not scripts
    assert not [a for _, a in page.tags for k in a if k.startswith("on")]
    # Accessible: alt on every image, headings in order, tables with header cells and captions.
    imgs = page.find("img")
    assert imgs and all((a.get("alt") or "").strip() for a in imgs)
    assert page.headings[0] == 1 and page.headings.count(1) == 1
    assert all(b - a <= 1 for a, b in zip(page.headings, page.headings[1:])), page.headings
    assert page.tables and all(t["th"] > 0 and t["caption"] for t in page.tables)
    assert page.find("html")[0].get("lang") == "en"
    return page


def test_html_report_structure(rendered):
    html = (rendered / "report.html").read_text()
    page = check_structure(html)
    ids = [a.get("id") for _, a in page.tags if a.get("id")]
    for sec in SECTIONS:
        assert sec in ids
    for t, a in page.tags:
        if t == "th" and a.get("scope") is None:
            raise AssertionError("every th has a scope")
    # small multiples + 2 SAEs x histogram + reconstruction bars (no suite ran: no galleries)
    assert len(page.find("img")) == 4


def test_html_escapes_hostile_names(rendered):
    page = check_structure((rendered / "report.html").read_text())
    text = page.all_text
    for evil in (EVIL_CLASS, EVIL_SET, EVIL_SAE):
        assert evil in text, evil
    assert not page.find("script")
    assert all(a.get("src", "").startswith("data:image/png;base64,") for a in page.find("img"))


def test_markdown_escapes_hostile_names_and_renders_tables(rendered):
    md = (rendered / "report.md").read_text()
    html = markdown_to_html(md)
    page = Page(html)
    assert not page.find("script")
    assert not [a for _, a in page.tags if "onerror" in a]
    text = page.all_text
    for evil in (EVIL_CLASS, EVIL_SET, EVIL_SAE):
        assert evil in text, evil
    # Every pipe table rendered as a table, each body row as wide as its header (a '|' in a name is escaped).
    n_md_tables = len(re.findall(r"^\|---", md, re.M))
    assert len(page.tables) == n_md_tables > 5
    assert len(page.find("details")) == 2
    for src in [a["src"] for a in page.find("img")]:
        assert not src.startswith(("/", "http")) and (rendered / src).is_file()


def test_markdown_table_rows_have_as_many_cells_as_the_header(rendered):
    html = markdown_to_html((rendered / "report.md").read_text())
    for table in re.findall(r"<table>.*?</table>", html, re.S):
        n_head = len(re.findall(r"<th[ >]", re.search(r"<thead>.*?</thead>", table, re.S).group(0)))
        for row in re.findall(r"<tr>(.*?)</tr>", re.search(r"<tbody>.*?</tbody>", table, re.S).group(0), re.S):
            assert len(re.findall(r"<t[dh][ >]", row)) == n_head


def test_render_needs_only_the_json(audit_dir, tmp_path):
    """Move the results file away from the model, SAEs and images: rendering still works."""
    lone = tmp_path / "lone" / "results.json"
    lone.parent.mkdir()
    shutil.copy(audit_dir / "results.json", lone)
    results = load_results(lone)
    for d in results["datasets"]:
        d["source"] = "/nonexistent"
    for s in results["saes"]:
        s["spec"] = "/nonexistent"
    outputs = render_reports(results, formats=("html",))
    assert set(outputs) == {"report.html", "latents.html"}


def test_render_does_not_touch_a_good_report_when_it_fails(audit_dir, tmp_path):
    out = tmp_path / "r"
    assert main(["report", "render", str(audit_dir / "results.json"), "--out", str(out)]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = json.loads((audit_dir / "results.json").read_text())
    bad["saes"][0]["pairs"][0]["fvu_gap"] = "big"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert main(["report", "render", str(tmp_path / "bad.json"), "--out", str(out)]) == 2
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_the_committed_demo_results_render_with_the_same_structure(tmp_path):
    results = load_results(DEMO)
    write_reports(results, tmp_path, write_json=False)
    html = (tmp_path / "report.html").read_text()
    check_structure(html)
    # aggregate plots as PNG, thumbnails and heatmaps at the images' own size: a shareable size
    assert len(html) < 3_000_000
    Page(markdown_to_html((tmp_path / "report.md").read_text()))


# The real-browser checks (Chromium, both widths, JavaScript on and off, axe-core) are in test_browser.py.
