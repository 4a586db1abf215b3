"""The extension point for suites: extra sections with tables, figures, galleries and collapsible groups."""

from __future__ import annotations

import io

import matplotlib
import pytest
from PIL import Image as PILImage

from sae_audit.report import render_reports, sections
from sae_audit.report.view import Details, Figure, Gallery, Image, Section, Table
from tests.report.test_render import check_structure, markdown_to_html
from tests.report.htmlcheck import Page


def png(colour) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def extra(results):
    import matplotlib.pyplot as plt

    def draw():
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([1, 2, 3], [1, 4, 9], linestyle="--")
        return fig

    thumbs = [Image(f"latent-5-top-{i}", f"top image {i} of latent 5 <b>", png((40 * i, 0, 0))) for i in range(3)]
    return [Section("k-robustness", "k-robustness", [
        "FVU as the inference budget k' changes.",
        Figure("k-curve", "FVU against k' for each SAE", draw),
        Table("FVU by k'", ["SAE", "k/2", "k", "2k"], [["a", "0.3", "0.2", "0.15"]]),
        Details("Latent 5", [Gallery("Top-activating images of latent 5", thumbs, note="3 of 40 shown")]),
    ])]


@pytest.fixture()
def with_extra(monkeypatch):
    monkeypatch.setattr(sections, "SECTION_BUILDERS", [extra])


def test_an_extra_section_renders_in_both_reports(results, with_extra):
    out = render_reports(results)
    html = out["report.html"]
    page = check_structure(html)
    ids = [a.get("id") for _, a in page.tags if a.get("id")]
    assert ids.index("reconstruction") < ids.index("k-robustness") < ids.index("latents")
    alts = [a["alt"] for a in page.find("img")]
    assert "FVU against k' for each SAE" in alts and "top image 2 of latent 5 <b>" in alts
    assert "3 of 40 shown" in page.all_text
    md = out["report.md"]
    for i in range(3):
        assert out[f"figures/latent-5-top-{i}.png"] == png((40 * i, 0, 0))
    assert out["figures/k-curve.png"][:4] == b"\x89PNG"
    md_page = Page(markdown_to_html(md))
    srcs = [a["src"] for a in md_page.find("img")]
    assert "figures/latent-5-top-1.png" in srcs and "figures/k-curve.png" in srcs
    assert not md_page.find("b")  # the alt text's <b> stays text


def test_duplicate_or_unsafe_figure_names_are_a_bug(results, monkeypatch):
    def bad(results):
        return [Section("x", "X", [Figure("../escape", "alt", lambda: None)])]

    monkeypatch.setattr(sections, "SECTION_BUILDERS", [bad])
    with pytest.raises(ValueError, match="plain file-name stem"):
        render_reports(results)
    matplotlib.pyplot.close("all")
