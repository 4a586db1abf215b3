"""report.html and latents.html in a real headless Chromium, offline: 1280 px and 390 px wide, JavaScript on
and off; no console error, no broken image, nothing fetched, no horizontal overflow, axe-core finds no
serious or critical violation, and a full-page screenshot of each.

Screenshots go to ``$SAE_AUDIT_SCREENSHOTS`` when set (``scripts/screenshots.py`` does this for a report
folder), else to pytest's temporary folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sae_audit.report import write_reports
from sae_audit.results.document import load_results
from tests.report import browser

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "reports" / "demo" / "results.json"
MODES = [(w, js) for w in browser.WIDTHS for js in (True, False)]


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    where = os.environ.get("SAE_AUDIT_SCREENSHOTS")
    return Path(where) if where else tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    write_reports(load_results(DEMO), out, formats=("html",), write_json=False)
    return out


def _check(page: Path, out: Path, width: int, javascript: bool) -> dict:
    try:
        info = browser.check_page(page, out, width, javascript)
    except browser.BrowserMissing as exc:
        pytest.fail(str(exc))
    assert info["errors"] == [], info["errors"]
    assert info["broken"] == [], info["broken"]
    assert all(r.startswith(("data:", "file:")) for r in info["resources"]), info["resources"]
    assert info["scroll_width"] <= info["client_width"], (info["scroll_width"], info["too_wide"])
    assert info["too_wide"] == []
    assert "error" not in info["axe"], info["axe"]
    assert browser.serious(info["axe"]) == [], browser.serious(info["axe"])
    png = info["screenshot"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    return info


@pytest.mark.slow
@pytest.mark.parametrize("width,javascript", MODES)
@pytest.mark.parametrize("which", ["tiny-hostile", "demo"])
def test_report_in_chromium(which, width, javascript, pictures_dir, demo_dir, shots):
    folder = pictures_dir if which == "tiny-hostile" else demo_dir
    info = _check(folder / "report.html", shots / which, width, javascript)
    assert info["scripts"] == 0
    assert info["h2"][:2] == ["Summary", "SAEs"] and info["h2"][-1] == "Method and provenance"
    assert info["images"] >= 4


@pytest.mark.slow
@pytest.mark.parametrize("width,javascript", MODES)
@pytest.mark.parametrize("which", ["tiny-hostile", "demo"])
def test_explorer_in_chromium(which, width, javascript, pictures_dir, demo_dir, shots):
    folder = pictures_dir if which == "tiny-hostile" else demo_dir
    info = _check(folder / "latents.html", shots / which, width, javascript)
    assert info["scripts"] == 1
    # the script only enhances: controls and sort buttons appear with it, and the table is there without
    assert info["controls_shown"] is javascript and (info["sort_buttons"] > 0) is javascript


@pytest.mark.slow
def test_explorer_sorts_and_filters_with_javascript(pictures_dir, tmp_path):
    try:
        driver = browser.chrome(tmp_path / "profile", 1280)
    except browser.BrowserMissing as exc:
        pytest.fail(str(exc))
    try:
        driver.get((pictures_dir / "latents.html").resolve().as_uri())
        first_col = "return Array.from(document.querySelector('table.latents').tBodies[0].rows).map(r => +r.cells[0].textContent)"
        before = driver.execute_script(first_col)
        driver.execute_script("document.querySelector('table.latents th button').click()")
        desc = driver.execute_script(first_col)
        assert desc == sorted(before, reverse=True)
        driver.execute_script("document.querySelector('table.latents th button').click()")
        assert driver.execute_script(first_col) == sorted(before)
        assert driver.execute_script("return document.querySelector('table.latents th').getAttribute('aria-sort')") \
            == "ascending"
        # filter by latent numbers: only those rows stay visible, the count says so
        wanted = sorted(before)[:2]
        driver.execute_script(
            "const i = document.getElementById('f-latent'); i.value = arguments[0];"
            "i.dispatchEvent(new Event('input'));", f"{wanted[0]}, {wanted[1]}")
        visible = driver.execute_script(
            "return Array.from(document.querySelector('table.latents').tBodies[0].rows).filter(r => !r.hidden)"
            ".map(r => +r.cells[0].textContent)")
        assert sorted(visible) == wanted
        assert driver.execute_script("return document.getElementById('count').textContent").startswith("showing ")
        driver.execute_script(
            "const c = document.getElementById('f-latent'); c.value = ''; c.dispatchEvent(new Event('input'));"
            "const p = document.getElementById('f-pics'); p.checked = true; p.dispatchEvent(new Event('input'));")
        with_pics = driver.execute_script(
            "return Array.from(document.querySelectorAll('table.latents tbody tr')).filter(r => !r.hidden)"
            ".every(r => r.querySelector('img'))")
        assert with_pics
        assert [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")] == []
    finally:
        driver.quit()


def _screenshots(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "screenshots.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=900)


def test_screenshots_script_refuses_a_folder_without_pages(tmp_path):
    done = _screenshots(tmp_path)
    assert done.returncode == 2, done.stderr
    assert "report.html does not exist" in done.stderr and "Traceback" not in done.stderr
    done = _screenshots(tmp_path, "--render")  # no results.json either: one message, exit 2
    assert done.returncode == 2 and "Traceback" not in done.stderr and "results.json" in done.stderr


@pytest.mark.slow
def test_screenshots_script_renders_checks_and_shoots_a_results_folder(pictures_dir, tmp_path):
    from PIL import Image

    folder = tmp_path / "audit"
    folder.mkdir()
    shutil.copy(pictures_dir / "results.json", folder)
    done = _screenshots(folder, "--render")
    assert done.returncode == 0, done.stdout + done.stderr
    expected = {f"{page}-{w}px-{m}-first-screen.png" for page in ("report", "latents") for w in browser.WIDTHS
                for m in ("js", "nojs")}
    assert {p.name for p in (folder / "screenshots").iterdir()} == expected
    assert sorted(p.name for p in folder.iterdir()) == ["results.json", "screenshots"]  # pages rendered elsewhere
    for name in expected:
        assert f"{name}: ok" in done.stdout
        with Image.open(folder / "screenshots" / name) as im:  # one screen: the window's width and height
            assert im.width == int(name.split("-")[1][:-2]) and 600 <= im.height <= 1000, (name, im.size)
