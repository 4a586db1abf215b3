"""Size and render time of the latent explorer (latents.html), as is and widened to many latents.

Renders ``latents.html`` from a results file (default: the committed demo),
then from the same file with every SAE widened to ``--latents`` latents, all
alive on every set (the worst case: every latent is a row), and prints, as
JSON, the file sizes, the number of pictures and the render time. Pictures
stay those the pictures suite kept, so only the numbers grow. With
``--browser``, each page is also opened in headless Chromium at 390 px
(``tests/report/browser.py``): seconds until loaded, with JavaScript on and
off, and seconds for the script to sort the first table and to filter every
row.

    PYTHONPATH=. python benchmarks/explorer_size.py
    PYTHONPATH=. python benchmarks/explorer_size.py some/results.json --latents 65536 131072 --browser
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from sae_audit.testing import widen_results


def in_browser(html: bytes, folder: Path) -> dict:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.report.browser import chrome

    page = folder / "latents.html"
    page.write_bytes(html)
    out = {}
    for js in (True, False):
        driver = chrome(folder / f"profile-{js}", 390, javascript=js)
        try:
            driver.set_page_load_timeout(900)
            t = time.perf_counter()
            driver.get(page.as_uri())
            out["load_seconds_js" if js else "load_seconds_no_js"] = round(time.perf_counter() - t, 1)
            if js:
                t = time.perf_counter()
                driver.execute_script("document.querySelector('table.latents th button').click()")
                out["sort_seconds"] = round(time.perf_counter() - t, 1)
                t = time.perf_counter()
                driver.execute_script("const i = document.getElementById('f-shift'); i.value = '2';"
                                      "i.dispatchEvent(new Event('input'));")
                out["filter_seconds"] = round(time.perf_counter() - t, 1)
        finally:
            driver.quit()
    return out


def measure(results: dict, browser: bool = False) -> dict:
    from sae_audit.report.explorer import render_explorer

    t = time.perf_counter()
    html = render_explorer(results).encode("utf-8")
    out = {"latents_per_sae": [s["config"]["d_sae"] for s in results["saes"]],
           "bytes": len(html), "mib": round(len(html) / 2**20, 2), "pictures": html.count(b"<img "),
           "rows": html.count(b"<tr><th scope=row>"), "seconds": round(time.perf_counter() - t, 1)}
    if browser:
        with tempfile.TemporaryDirectory() as tmp:
            out["chromium_390px"] = in_browser(html, Path(tmp))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="?", default="reports/demo/results.json")
    p.add_argument("--latents", type=int, nargs="*", default=[65_536])
    p.add_argument("--browser", action="store_true", help="also open each page in headless Chromium")
    args = p.parse_args()

    from sae_audit.results.document import load_results

    results = load_results(args.results)
    out = {"results": args.results, "as_is": measure(results, args.browser)}
    out["widened"] = [measure(widen_results(results, n), args.browser) for n in args.latents]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
