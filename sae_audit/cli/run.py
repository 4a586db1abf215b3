"""``sae-audit run`` and ``sae-audit suites``: audit SAEs on ID vs OOD image sets."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from pathlib import Path

from sae_audit import distributed
from sae_audit.audit import AuditRequest, AuditSettings, run_audit
from sae_audit.cli.common import (
    add,
    add_image_options,
    add_model_options,
    add_quiet,
    flags_of,
    image_options,
    info,
    model_spec,
)
from sae_audit.errors import SaeAuditError
from sae_audit.outputs import OutputFolder
from sae_audit.report import report_files, write_files
from sae_audit.report.verdict import summary_json, verdict
from sae_audit.results.gate import evaluate
from sae_audit.suites import available_suites

EXIT_OK, EXIT_FAIL_ON = 0, 1


def configure(sub) -> None:
    run = sub.add_parser(
        "run", help="audit SAEs on ID vs OOD image sets and write results.json, report.md, report.html",
        description="Run the coverage audit of one or more SAEs on an in-distribution set and one or "
                    "more out-of-distribution sets. Writes results.json, report.md, report.html and latents.html "
                    "(the latent explorer) to --out.",
    )
    add_model_options(run, naming=True)
    add_image_options(run)
    add(run, "--sae", AuditRequest, "saes", action="append", required=True, help_extra=" (repeat for several)")
    add(run, "--id", AuditRequest, "id_set", dest="id_set", required=True)
    add(run, "--ood", AuditRequest, "ood_sets", action="append", required=True, help_extra=" (repeatable)")
    run.add_argument("--out", required=True, metavar="DIR", help="output folder")
    run.add_argument("--overwrite", action="store_true", help="replace the report files if --out already holds some")
    add(run, "--hook", AuditRequest, "hook")
    add(run, "--tokens", AuditRequest, "tokens")
    add(run, "--dense-threshold", AuditSettings, "dense_threshold", type=float)
    add(run, "--bootstrap", AuditSettings, "bootstrap", type=int)
    add(run, "--fail-on", AuditRequest, "fail_on", action="append", default=[],
        help_extra=" (repeatable; the run exits 1 when one holds for any SAE; the reports are still written)")
    run.add_argument("--format", dest="output_format", choices=["text", "json"], default="text",
                     help="json: print a summary (verdict, key metrics, --fail-on outcomes, files) as JSON "
                          "on stdout (default text: progress and file names on stderr only)")
    add(run, "--suite", AuditRequest, "suites", dest="suite", action="append", default=[],
        help_extra=" (repeatable). Coverage always runs")
    add(run, "--judge", AuditRequest, "judge")
    run.add_argument("--latents-csv", metavar="FILE", help="also write the per-latent table as CSV")
    run.add_argument("--latents-parquet", metavar="FILE", help="also write the per-latent table as Parquet "
                                                               "(needs pyarrow)")
    add_quiet(run, fail_on=True)
    flags_of(run).update(out="--out", overwrite="--overwrite")
    run.set_defaults(func=cmd_run)

    suites = sub.add_parser("suites", help="list the audit suites", description="List the audit suites.")
    suites.set_defaults(func=cmd_suites)


def request_from(args) -> AuditRequest:
    """The :class:`~sae_audit.audit.AuditRequest` the flags describe."""
    return AuditRequest(
        model=model_spec(args), saes=tuple(args.sae), id_set=args.id_set, ood_sets=tuple(args.ood),
        settings=AuditSettings(images=image_options(args), dense_threshold=args.dense_threshold,
                               bootstrap=args.bootstrap),
        hook=args.hook, tokens=args.tokens, suites=tuple(args.suite), judge=args.judge, fail_on=tuple(args.fail_on),
    )


def cmd_run(args) -> int:
    request = request_from(args)
    for path, suffix in ((args.latents_csv, ".csv"), (args.latents_parquet, ".parquet")):
        if path and not path.lower().endswith(suffix):
            raise SaeAuditError(f"the per-latent table {path} needs the {suffix} suffix")
        if path and Path(path).exists() and not args.overwrite:
            raise SaeAuditError(f"{path} already exists; pass --overwrite to replace it")
    with contextlib.ExitStack() as stack:
        with distributed.together():  # under torchrun rank 0 alone checks, locks and writes the folder
            folder = stack.enter_context(OutputFolder(args.out, overwrite=args.overwrite, inputs=request.input_paths(),
                                                      image_folders=request.image_folders())) \
                if distributed.is_main() else None  # checked and locked before any work
        results = run_audit(request, progress=not args.quiet)
        if folder is None:  # another rank of a torchrun job: the results equal rank 0's, which writes them
            return _gate(args, results, request, Path(args.out), [])
        results["provenance"]["command"] = shlex.join(["sae-audit", *map(str, getattr(args, "argv", []) or [])])
        write_files(folder.stage(), report_files(results))
        paths = folder.commit()
    out = folder.path
    for path in (args.latents_csv, args.latents_parquet):
        if path:
            from sae_audit.suites.latents import latent_table, write_latent_table

            paths.append(write_latent_table(latent_table(results), path))
    figures = [p for p in paths if p.parent.name == "figures"]
    for p in paths:
        if p not in figures:
            info(args, f"wrote {p}")
    if figures:
        info(args, f"wrote {len(figures)} figure(s) under {out / 'figures'}")
    return _gate(args, results, request, out, paths)


def _gate(args, results: dict, request: AuditRequest, out: Path, paths) -> int:
    """Evaluate ``--fail-on``, print the JSON summary if asked; the exit code."""
    conditions = evaluate(request.conditions(), results)
    failed = [c for c in conditions if c.holds]
    for c in failed:
        worst = ", ".join(f"{m['sae']} on {m['set']}: " + (", ".join(m["metrics"]) if "metrics" in m else
                                                           f"{m['value']:.4g}") for m in c.matches[:3])
        print(f"sae-audit: --fail-on {c.text} holds ({worst})", file=sys.stderr)  # even with --quiet
    code = EXIT_FAIL_ON if failed else EXIT_OK
    if args.output_format == "json":
        id_name = next(d["name"] for d in results["datasets"] if d["role"] == "id")
        summary = {
            "exit_code": code,
            "results": str(out / "results.json"),
            "files": [str(p) for p in paths],
            "model": results["model"]["name"],
            "verdict": verdict(results),
            "shift": summary_json(results),
            "saes": [
                {"label": s["label"], "spec": s["spec"],
                 "datasets": {n: {k: d.get(k) for k in ("fvu", "alive_fraction", "dead_fraction", "l0_mean")}
                              for n, d in s["datasets"].items()},
                 "pairs": [{k: p.get(k) for k in ("id", "ood", "fvu_gap", "shared_alive", "n_ood_only",
                                                   "n_id_only", "js_divergence", "spearman")} for p in s["pairs"]]}
                for s in results["saes"]
            ],
            "id_set": id_name,
            "fail_on": [c.to_json() for c in conditions],
        }
        print(json.dumps(summary, indent=1, allow_nan=False))
    return code


def cmd_suites(args: argparse.Namespace) -> int:
    from sae_audit.plugin_manager import BUILTIN

    rows = [("coverage", "firing frequencies, alive/dead/dense latents, L0, FVU; ID vs OOD shift (always runs)")]
    for i in available_suites().values():
        extra = [" [needs labels]" if i.needs_labels else "",
                 f" [metrics: {', '.join(m.key for m in i.metrics)}]" if i.metrics else "",
                 "" if i.plugin == BUILTIN else f" [plugin {i.plugin}]"]
        rows.append((i.name, i.description + "".join(extra)))
    width = max(len(n) for n, _ in rows)
    for name, desc in rows:
        print(f"{name:<{width}}  {desc}")
    return EXIT_OK
