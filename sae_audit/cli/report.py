"""``sae-audit report render|diff`` and ``sae-audit card``: views of a results.json."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sae_audit.cli.common import info
from sae_audit.errors import SaeAuditError
from sae_audit.outputs import atomic_write_text

EXIT_OK = 0


def configure(sub, show_help) -> None:
    report = sub.add_parser("report", help="render reports from a results.json")
    rsub = report.add_subparsers(dest="report_command", metavar="SUBCOMMAND")
    render = rsub.add_parser("render", help="render report.md / report.html / latents.html from results.json alone",
                             description="Render the Markdown and HTML reports (with the latent explorer "
                                         "latents.html beside the HTML) from a results.json (no model or "
                                         "images needed).")
    render.add_argument("results", metavar="RESULTS_JSON", help="a results.json written by `sae-audit run`")
    render.add_argument("--out", required=True, metavar="DIR",
                        help="folder for report.md, figures/, report.html and latents.html")
    render.add_argument("--overwrite", action="store_true",
                        help="replace report files in --out if it already holds any (results.json is never touched)")
    render.add_argument("--format", default="md,html", help="comma-separated: md, html (default md,html)")
    render.add_argument("-q", "--quiet", action="store_true", help="no messages but errors")
    render.set_defaults(func=cmd_report_render, flags={"out": "--out", "overwrite": "--overwrite"})
    diff = rsub.add_parser("diff", help="what changed between two audits (Markdown)",
                           description="Compare two results.json files: metrics side by side with deltas "
                                       "(better/worse from each metric's direction) and the latents whose "
                                       "firing frequency changed most. Markdown on stdout, or to --out.")
    diff.add_argument("a", metavar="A_JSON", help="the earlier (baseline) results.json")
    diff.add_argument("b", metavar="B_JSON", help="the later results.json")
    diff.add_argument("--out", metavar="FILE", help="write the Markdown to FILE instead of stdout")
    diff.add_argument("--overwrite", action="store_true", help="replace --out if it exists (refused otherwise)")
    diff.add_argument("--top", type=int, default=10, metavar="N", help="latents listed per SAE and set (default 10)")
    diff.add_argument("-q", "--quiet", action="store_true", help="no messages but errors")
    diff.set_defaults(func=cmd_report_diff)
    report.set_defaults(func=lambda args: show_help(report))

    card = sub.add_parser(
        "card", help="add the audit to a Hugging Face model card (local file or folder; optionally push)",
        description="Insert or replace the marked sae-audit section of a model card and its model-index "
                    "eval results (huggingface_hub EvalResult; idempotent). With --push, upload the card and "
                    "the report files next to RESULTS_JSON to a hub repository in one commit, as a pull "
                    "request by default. The token comes from HF_TOKEN or `hf auth login`.",
    )
    card.add_argument("--results", required=True, metavar="RESULTS_JSON",
                      help="the results.json of a sae-audit run (the section and model-index are built from it)")
    card.add_argument("--card", required=True, metavar="PATH",
                      help="the model card file (README.md), or an existing folder holding it; the file is created if missing")
    card.add_argument("--report-url", metavar="URL",
                      help="where the card links the report (default: the report's path relative to the card, "
                           "or sae-audit/report.md in the repository with --push)")
    card.add_argument("--push", metavar="REPO_ID", help="upload the card and report files to this hub model repo")
    card.add_argument("--no-pr", action="store_true", help="with --push: commit directly instead of opening a PR")
    card.add_argument("--revision", help="with --push: the branch to commit to or open the PR against")
    card.add_argument("-q", "--quiet", action="store_true", help="no messages but errors")
    card.set_defaults(func=cmd_card, flags={"push": "--push", "card": "--card", "results": "--results"})


def cmd_report_render(args) -> int:
    from sae_audit.report import write_reports
    from sae_audit.results import load_results

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = sorted(set(formats) - {"md", "html"})
    if bad or not formats:
        raise SaeAuditError(f"--format takes md and/or html, got {args.format!r}")
    results = load_results(args.results)
    inside = Path(args.out).resolve() in Path(args.results).resolve().parents
    for p in write_reports(results, args.out, formats=formats, write_json=False, overwrite=args.overwrite,
                           inputs=[args.results], keep=[args.results] if inside else []):
        info(args, f"wrote {p}")
    return EXIT_OK


def cmd_report_diff(args) -> int:
    from sae_audit.report.diff import diff_results, render_diff_markdown
    from sae_audit.results import load_results

    if args.top < 0:
        raise SaeAuditError("--top must be >= 0")
    a, b = load_results(args.a), load_results(args.b)
    text = render_diff_markdown(diff_results(a, b, str(args.a), str(args.b), top=args.top))
    if args.out:
        out = Path(args.out)
        if out.is_dir():
            raise SaeAuditError(f"--out {out} is a folder; pass a file name such as {out / 'diff.md'}")
        if any(os.path.realpath(out) == os.path.realpath(p) for p in (args.a, args.b)):
            raise SaeAuditError(f"--out {out} is one of the results files being compared; name another file")
        if out.is_file() and not args.overwrite:  # special files are refused by the write itself
            raise SaeAuditError(f"--out {out} already exists; pass --overwrite to replace it, or name another file")
        atomic_write_text(out, text)
        info(args, f"wrote {out}")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_card(args) -> int:
    from sae_audit.card import card_path, check_repo_id, hub_token, push_card, update_card
    from sae_audit.results import load_results

    results = load_results(args.results)
    report_dir = Path(args.results).resolve().parent
    card = card_path(args.card)
    if args.push:
        check_repo_id(args.push)  # a malformed id, no token, or offline: say so before touching anything
        hub_token()
        link = args.report_url or "sae-audit/report.md"
        source = args.report_url or f"https://huggingface.co/{args.push}/blob/main/sae-audit/report.md"
    else:
        report = next((report_dir / n for n in ("report.md", "report.html") if (report_dir / n).is_file()),
                      report_dir / "report.md")
        link = args.report_url or os.path.relpath(report, Path(os.path.abspath(card)).parent)
        source = link
    path = update_card(results, card, link, source_url=source, results_path=args.results)
    info(args, f"wrote {path}")
    if args.push:
        files = {f"sae-audit/{p.relative_to(report_dir).as_posix()}": p
                 for p in [report_dir / "results.json", report_dir / "report.md", report_dir / "report.html",
                           report_dir / "latents.html", *sorted((report_dir / "figures").glob("*.png"))]
                 if p.is_file()}
        url = push_card(args.push, path, files, create_pr=not args.no_pr, revision=args.revision)
        info(args, f"pushed {len(files) + 1} file(s) to {args.push}: {url}")
    return EXIT_OK
