"""Screenshots of a report folder in headless Chromium, with the browser test's checks.

Opens ``report.html`` and ``latents.html`` of FOLDER at 1280 px and 390 px,
with JavaScript on and off, offline; saves screenshots of the first screen
(``--full``: of the whole page) to ``FOLDER/screenshots`` (or ``--out``) and
prints, per page, the console errors, horizontal overflow and the axe-core
violations. Exits 1 when any
check the test suite makes fails (console errors, broken images, overflow,
serious or critical axe-core violations). Needs what ``scripts/setup.sh``
installs (chromium, chromium-driver, selenium, axe-core).

With ``--render``, the HTML pages are first rendered from ``FOLDER/results.json``
alone (as ``sae-audit report render`` does) into a temporary folder, so a
folder whose pages are older than the code (or missing) can be shot without
touching it; the screenshots still go to ``FOLDER/screenshots``.

    .venv/bin/python scripts/screenshots.py reports/demo
    .venv/bin/python scripts/screenshots.py reports/demo --render
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.report import browser  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="a report folder (report.html, latents.html)")
    p.add_argument("--out", type=Path, help="where to write the PNGs (default: FOLDER/screenshots)")
    p.add_argument("--full", action="store_true", help="screenshot whole pages (several MB each), not the first screen")
    p.add_argument("--render", action="store_true",
                   help="render the pages from FOLDER/results.json into a temporary folder first")
    args = p.parse_args(argv)
    out = args.out or args.folder / "screenshots"
    if not args.render:
        return shoot(args.folder, out, args.full)
    from sae_audit.errors import SaeAuditError
    from sae_audit.report import write_reports
    from sae_audit.results.document import load_results

    with tempfile.TemporaryDirectory(prefix="sae-audit-shots-") as tmp:
        try:
            write_reports(load_results(args.folder / "results.json"), Path(tmp) / "pages", formats=("html",),
                          write_json=False)
        except SaeAuditError as exc:
            print(f"screenshots: {exc}", file=sys.stderr)
            return 2
        return shoot(Path(tmp) / "pages", out, args.full)


def shoot(folder: Path, out: Path, full: bool) -> int:
    """Check and screenshot ``folder``'s report.html and latents.html; 0 when every check passes, 1 if not,
    2 when a page or the browser is missing."""
    failed = False
    for name in ("report.html", "latents.html"):
        page = folder / name
        if not page.is_file():
            print(f"screenshots: {page} does not exist (--render renders it from results.json)", file=sys.stderr)
            return 2
        for width in browser.WIDTHS:
            for js in (True, False):
                try:
                    info = browser.check_page(page, out, width, js, full_page=full)
                except browser.BrowserMissing as exc:
                    print(f"screenshots: {exc}", file=sys.stderr)
                    return 2
                bad = browser.serious(info["axe"])
                problems = []
                if info["errors"]:
                    problems.append(f"{len(info['errors'])} console error(s)")
                if info["broken"]:
                    problems.append(f"{len(info['broken'])} broken image(s)")
                if info["scroll_width"] > info["client_width"]:
                    problems.append(f"overflows: {info['scroll_width']} px > {info['client_width']} px")
                if bad or "error" in info["axe"]:
                    problems.append(f"axe-core: {bad or info['axe']['error']}")
                minor = [v["id"] for v in info["axe"].get("violations", []) if v not in bad]
                failed = failed or bool(problems)
                print(f"{info['screenshot'].relative_to(out)}: {'; '.join(problems) or 'ok'}"
                      + (f" (minor axe-core findings: {', '.join(minor)})" if minor else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
