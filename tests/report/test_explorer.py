"""latents.html: every alive latent with the numbers of results.json, pictures only for the kept latents,
escaped names, self-contained, written with the reports, and bounded at 65,536 latents."""

from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest

from sae_audit.report import render_reports, write_reports
from sae_audit.report.explorer import MAX_PICS_PER_SET, render_explorer
from sae_audit.results.document import load_results
from sae_audit.testing import widen_results
from tests.report.conftest import EVIL_CLASS, EVIL_SAE, EVIL_SET
from tests.report.htmlcheck import Page
from tests.report.test_render import check_structure


def rows_of(html: str) -> list[list[str]]:
    """Body rows of every latents table as lists of cell texts (the standard library's parser)."""
    from html.parser import HTMLParser

    class Rows(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tables, self.cell, self.in_body = [], None, False

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                self.tables.append([])
            elif tag == "tbody":
                self.in_body = True
            elif tag == "tr" and self.in_body:
                self.tables[-1].append([])
            elif tag in ("td", "th") and self.in_body:
                self.tables[-1][-1].append("")
                self.cell = True

        def handle_endtag(self, tag):
            if tag == "tbody":
                self.in_body = False

        def handle_data(self, data):
            if self.in_body and self.tables and self.tables[-1] and self.tables[-1][-1]:
                self.tables[-1][-1][-1] += data

    p = Rows()
    p.feed(html)
    return p.tables


def test_every_alive_latent_with_its_numbers(pictures_dir):
    results = load_results(pictures_dir / "results.json")
    html = (pictures_dir / "latents.html").read_text()
    tables = rows_of(html)
    sets = [d["name"] for d in results["datasets"]]
    id_name, ood = sets[0], sets[1:]
    assert len(tables) == len(results["saes"])
    for s, rows in zip(results["saes"], tables):
        freqs = np.array([s["datasets"][n]["frequencies"] for n in sets])  # [sets, d_sae]
        alive = sorted(np.nonzero((freqs > 0).any(axis=0))[0].tolist())
        assert sorted(int(r[0]) for r in rows) == alive
        n_in = {n: s["datasets"][n]["n_inputs"] for n in sets}
        ms = s["suites"]["monosemanticity"]["datasets"][id_name]["per_latent"]
        last_key = math.inf
        for r in rows:
            j = int(r[0])
            for c, n in enumerate(sets):
                assert float(r[1 + c]) == pytest.approx(freqs[c, j], rel=5e-3, abs=1e-12)
            keys = []
            for c, n in enumerate(ood):  # the shift by its formula, from the frequencies
                e = 1 / min(n_in[id_name], n_in[n])
                want = math.log10((freqs[1 + c, j] + e) / (freqs[0, j] + e))
                assert float(r[1 + len(sets) + c]) == pytest.approx(want, abs=0.006)
                keys.append(abs(want))
            assert max(keys) <= last_key + 0.011  # rows start sorted by the largest |shift|
            last_key = max(keys)
            got_ms = r[1 + len(sets) + len(ood)]
            assert got_ms == "n/a" if ms[j] is None else float(got_ms) == pytest.approx(ms[j], abs=6e-4)


def test_pictures_only_for_the_latents_the_pictures_suite_kept(pictures_dir):
    results = load_results(pictures_dir / "results.json")
    page = Page((pictures_dir / "latents.html").read_text())
    want = 0
    for s in results["saes"]:
        per_latent = {}
        for pair in s["suites"]["pictures"]["pairs"]:
            for lat in pair["latents"]:
                shown = per_latent.setdefault(lat["latent"], {"id": 0, "ood": 0})
                shown["id"] = min(MAX_PICS_PER_SET, len(lat["id"]))
                shown["ood"] += min(MAX_PICS_PER_SET, len(lat["ood"]))
        want += sum(v["id"] + v["ood"] for v in per_latent.values())
    imgs = page.find("img")
    assert len(imgs) == want > 0
    assert all(a["src"].startswith("data:image/png;base64,") and a.get("alt") for a in imgs)
    assert any("heatmap strongest on patch" in a["alt"] for a in imgs)


def test_explorer_is_self_contained_escaped_and_works_without_javascript(pictures_dir):
    html = (pictures_dir / "latents.html").read_text()
    page = check_structure(html, script_ok=True)
    text = page.all_text
    for evil in (EVIL_SAE, EVIL_SET):
        assert evil in text
    assert EVIL_CLASS not in html  # class names are not shown here, and never raw
    assert not [a for _, a in page.tags for k in a if k.startswith("on")]  # no handler attribute survived
    # Without JavaScript: a plain table, the controls hidden (the script shows them); the one script is
    # the page's own, with nothing from the results in it
    assert re.search(r'<form class="controls" id="controls" hidden>', html)
    script = html.split("<script>")[1].split("</script>")[0]
    assert "alert(" not in script and "data:" not in script


def test_explorer_is_written_with_the_reports_and_listed_in_the_manifest(pictures_dir, tmp_path):
    results = load_results(pictures_dir / "results.json")
    written = write_reports(results, tmp_path / "r", formats=("html",), write_json=False)
    assert (tmp_path / "r" / "latents.html").is_file()
    assert any(p.name == "latents.html" for p in written)
    assert "latents.html" not in render_reports(results, formats=("md",))


@pytest.mark.slow
def test_65536_latents_stay_bounded(pictures_dir):
    """Pictures stay as many as at 64 latents; the numbers grow linearly: the row markup and at most 16 bytes
    per number (measured on the demo's shape: benchmarks/explorer_size.py)."""
    small = load_results(pictures_dir / "results.json")
    big = widen_results(small, 65_536)
    t = time.perf_counter()
    html = render_explorer(big)
    seconds = time.perf_counter() - t
    n_sets = len(big["datasets"])
    n_rows = 65_536 * len(big["saes"])
    imgs_small = len(Page(render_explorer(small)).find("img"))
    assert html.count("<img ") == imgs_small
    assert html.count("<tr><th scope=row>") == n_rows
    pictures = sum(len(m) for m in re.findall(r'src="data:[^"]+"', html))
    n_numbers = n_sets + (n_sets - 1) + 2  # f per set, shift per OOD set, MS and purity on the ID set
    per_row = (len(html.encode()) - pictures) / n_rows
    assert per_row < 40 + 16 * n_numbers, per_row  # the row markup plus at most 16 bytes per number
    assert seconds < 120
