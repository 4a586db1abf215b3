"""Open report pages in a real headless Chromium (selenium), offline, and check what a reader gets.

Used by ``tests/report/test_browser.py`` and ``scripts/screenshots.py``. Each
check loads one page at one window width, with JavaScript on or off (DevTools'
``Emulation.setScriptExecutionDisabled``: the page's own scripts do not run,
as for a reader who turned them off), and returns: console errors, broken images, resources that
are not ``data:``/``file:``, horizontal overflow of the page, a full-page
screenshot, and the axe-core results (run from the project-local copy
``scripts/setup.sh`` installs with npm, injected by the test driver; with
JavaScript off it runs once the page has loaded without its own script).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Where scripts/setup.sh installs axe-core (npm, project-local).
AXE_JS = Path(os.environ.get("SAE_AUDIT_AXE_JS", REPO / ".cache" / "node" / "node_modules" / "axe-core" / "axe.min.js"))
WIDTHS = (1280, 390)


class BrowserMissing(RuntimeError):
    """Chromium, chromedriver, selenium or axe-core is not installed."""


def chrome(profile: Path, width: int, javascript: bool = True):
    """A headless Chromium with the network off, ``width`` px wide."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        raise BrowserMissing(f"selenium is not installed ({exc})") from None
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_bin = shutil.which("chromedriver")
    if not chromium or not driver_bin:
        raise BrowserMissing("headless Chromium and chromedriver are needed (scripts/setup.sh installs the Debian "
                             "packages chromium and chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--hide-scrollbars",
                 "--host-resolver-rules=MAP * ~NOTFOUND", f"--window-size={width},900", "--force-device-scale-factor=1"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_bin), options=opts)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions",
                           {"offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0})
    if not javascript:  # the page's own scripts never run; the driver's (facts, axe) still can
        driver.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    if width < 500:  # a phone: the viewport is the layout width
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": width, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    return driver


PAGE_FACTS = """
const imgs = Array.from(document.images);
const doc = document.documentElement;
const wide = Array.from(document.querySelectorAll('body *')).filter(e => {
  const r = e.getBoundingClientRect();
  return r.width > 0 && r.right > doc.clientWidth + 1 && !e.closest('.table-wrap');
}).slice(0, 5).map(e => e.tagName + (e.className ? '.' + e.className : '') + ' ' + Math.round(e.getBoundingClientRect().right));
return {
  title: document.title,
  images: imgs.length,
  broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
  resources: performance.getEntriesByType('resource').map(e => e.name),
  height: doc.scrollHeight,
  scroll_width: doc.scrollWidth,
  client_width: doc.clientWidth,
  too_wide: wide,
  h2: Array.from(document.querySelectorAll('h2')).map(h => h.textContent),
  scripts: document.scripts.length,
  controls_shown: !!document.querySelector('form.controls:not([hidden])'),
  sort_buttons: document.querySelectorAll('table.latents th button').length,
};
"""


def run_axe(driver) -> dict:
    """axe-core on the loaded page: ``{"violations": [...], "passes": n}`` (WCAG 2 A/AA and best practices)."""
    if not AXE_JS.is_file():
        raise BrowserMissing(f"axe-core is not installed at {AXE_JS} (scripts/setup.sh installs it with npm)")
    driver.execute_script(AXE_JS.read_text(encoding="utf-8"))
    driver.set_script_timeout(180)
    result = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa',
                                                           'best-practice']}, resultTypes: ['violations']})
           .then(r => done(JSON.stringify({violations: r.violations.map(v => ({id: v.id, impact: v.impact,
                 help: v.help, nodes: v.nodes.length, target: v.nodes.slice(0, 3).map(n => n.target)})),
                 passes: r.passes.length})))
           .catch(e => done(JSON.stringify({error: String(e)})));""")
    return json.loads(result)


def check_page(page: Path, out_dir: Path, width: int, javascript: bool = True, axe: bool = True,
               full_height_cap: int = 16000, full_page: bool = True) -> dict:
    """Load ``page`` in Chromium and return what :data:`PAGE_FACTS` says, plus ``errors`` (console
    messages of level SEVERE/WARNING), ``screenshot`` (a PNG under ``out_dir``: the whole page up to
    ``full_height_cap`` pixels, or the first screen when not ``full_page``) and ``axe``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mode = "js" if javascript else "nojs"
    profile = out_dir / f".chrome-{page.stem}-{width}-{mode}"
    driver = chrome(profile, width, javascript)
    try:
        driver.set_page_load_timeout(120)
        driver.get(page.resolve().as_uri())
        info = driver.execute_script(PAGE_FACTS)
        info["errors"] = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        if not javascript:
            # axe-core needs timers; the page's own inline script ran at parse time or never, so
            # allowing scripts now leaves the page as a reader without JavaScript has it.
            driver.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})
        info["axe"] = run_axe(driver) if axe else None
        info["controls_shown_after_axe"] = driver.execute_script(
            "return !!document.querySelector('form.controls:not([hidden])')")
        shot = out_dir / f"{page.stem}-{width}px-{mode}{'' if full_page else '-first-screen'}.png"
        screen = driver.execute_script("return window.innerHeight")
        height = min(int(info["height"]) + 20, full_height_cap) if full_page else int(screen)
        png = driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})["data"]
        shot.write_bytes(base64.b64decode(png))
        info["screenshot"] = shot
        # the console after axe ran (it must not have caused errors either)
        info["errors"] += [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        return info
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def serious(axe_result: dict) -> list[dict]:
    """The violations axe-core rates serious or critical."""
    return [v for v in axe_result.get("violations", []) if v.get("impact") in ("serious", "critical")]
