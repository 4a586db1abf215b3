"""``sae-audit train`` and ``sae-audit cache``: train SAEs, write activation caches."""

from __future__ import annotations

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
from sae_audit.train import CacheRequest, TrainConfig, TrainRequest, train_saes, write_activation_cache

EXIT_OK = 0


def configure(sub) -> None:
    train = sub.add_parser(
        "train", help="train a Top-k SAE (optionally regularised) on activations streamed from a model",
        description="Train a Top-k SAE (Gao et al. 2024) on block outputs streamed from the model, "
                    "optionally with the off-support L1 and L1/L2-ratio regularisers of arXiv 2606.27321. "
                    "Writes the SAE folder (config.json, model.safetensors, README.md) to --out.",
    )
    add_model_options(train, model_optional=True)
    add_image_options(train)
    add(train, "--hook", TrainRequest, "hook")
    add(train, "--tokens", TrainRequest, "tokens")
    add(train, "--data", TrainRequest, "data")
    add(train, "--cache", TrainRequest, "cache")
    add(train, "--checkpoint-every", TrainConfig, "checkpoint_every", field="optim.checkpoint_every", type=int)
    add(train, "--resume", TrainRequest, "resume", action="store_true")
    add(train, "--distribute-saes", TrainRequest, "distribute_saes", action="store_true")
    add(train, "--precision", TrainConfig, "precision", field="optim.precision")
    add(train, "--k", TrainRequest, "k", type=int, nargs="+", required=True)
    add(train, "--expansion", TrainRequest, "expansion", type=float, required=True)
    add(train, "--l1-off", TrainRequest, "l1_off", type=float, nargs="+")
    add(train, "--l1-l2-ratio", TrainRequest, "l1_l2_ratio", type=float, nargs="+",
        help_extra=". Every combination of the --k, --l1-off and --l1-l2-ratio values is trained from the same "
                   "activations; with more than one, each SAE goes to OUT/<name>/")
    add(train, "--max-vectors", TrainConfig, "max_vectors", field="optim.max_vectors", type=int)
    add(train, "--eval-vectors", TrainConfig, "eval_vectors", field="optim.eval_vectors", type=int)
    add(train, "--sae-batch-size", TrainConfig, "batch_size", field="optim.batch_size", type=int)
    add(train, "--lr", TrainConfig, "lr", field="optim.lr", type=float)
    add(train, "--normalise", TrainRequest, "normalisation")
    add(train, "--dead-after", TrainRequest, "dead_after", type=int)
    add(train, "--out", TrainRequest, "out", required=True)
    add(train, "--overwrite", TrainRequest, "overwrite", action="store_true")
    add_quiet(train)
    flags_of(train)["device"] = "--device"
    train.set_defaults(func=cmd_train)

    cache = sub.add_parser(
        "cache", help="write a model's activations at a hook point to disk, in shards (resumable)",
        description="Capture the activations of MODEL at a hook point on an image set and write them to "
                    "--out as safetensors shards with a meta.json (model, revision, hook point, token set, "
                    "dtype, row count, schema version). An interrupted run continues with --resume, "
                    "without duplicating or losing rows. `sae-audit train --cache DIR` trains from it.",
    )
    add_model_options(cache)
    add_image_options(cache)
    add(cache, "--hook", CacheRequest, "hook", required=True)
    add(cache, "--tokens", CacheRequest, "tokens")
    add(cache, "--data", CacheRequest, "data", required=True)
    add(cache, "--out", CacheRequest, "out", required=True)
    add(cache, "--shard-rows", CacheRequest, "shard_rows", type=int)
    add(cache, "--cache-dtype", CacheRequest, "dtype", dest="cache_dtype", field="cache_dtype")
    add(cache, "--resume", CacheRequest, "resume", action="store_true")
    add(cache, "--overwrite", CacheRequest, "overwrite", action="store_true")
    add_quiet(cache)
    cache.set_defaults(func=cmd_cache)


def train_request_from(args) -> TrainRequest:
    """The :class:`~sae_audit.train.TrainRequest` the flags describe (``--seed`` seeds the subset, the
    initialisation and the shuffling)."""
    optim = TrainConfig(batch_size=args.sae_batch_size, lr=args.lr, max_vectors=args.max_vectors,
                        eval_vectors=args.eval_vectors, seed=args.seed, precision=args.precision,
                        checkpoint_every=args.checkpoint_every)
    return TrainRequest(
        out=args.out, k=tuple(args.k), expansion=args.expansion,
        model=model_spec(args) if args.model else None, data=args.data, cache=args.cache, hook=args.hook,
        tokens=args.tokens, images=image_options(args), l1_off=tuple(args.l1_off),
        l1_l2_ratio=tuple(args.l1_l2_ratio), normalisation=args.normalise, dead_after=args.dead_after,
        optim=optim, device=args.device, overwrite=args.overwrite, resume=args.resume,
        distribute_saes=args.distribute_saes,
    )


def cmd_train(args) -> int:
    trained = train_saes(train_request_from(args), progress=not args.quiet)
    for t in trained:
        s, cfg = t.summary, t.sae.config
        info(args, f"wrote {t.path}: d_sae={cfg.d_sae}, k={cfg.k}, {cfg.variant}; held-out FVU {s.eval_fvu:.4f}, "
                   f"L0 {s.eval_l0:.1f}, dead {s.dead_fraction:.1%} ({s.vectors} vectors)")
    info(args, f"trained {len(trained)} SAE(s)")
    return EXIT_OK


def cache_request_from(args) -> CacheRequest:
    return CacheRequest(model=model_spec(args), hook=args.hook, data=args.data, out=args.out, tokens=args.tokens,
                        images=image_options(args), shard_rows=args.shard_rows, dtype=args.cache_dtype,
                        resume=args.resume, overwrite=args.overwrite)


def cmd_cache(args) -> int:
    cache = write_activation_cache(cache_request_from(args), progress=not args.quiet)
    info(args, f"wrote {cache.path}: {len(cache)} rows of {cache.d_in} ({len(cache.meta['shards'])} shards, "
               f"{cache.meta['images_skipped']} unreadable images skipped)")
    return EXIT_OK
