"""Training and caching jobs as requests: what ``sae-audit train`` and ``sae-audit cache`` build from their flags.

- :class:`TrainRequest` -> :func:`train_saes`: the sweep grid (every
  combination of ``k``, ``l1_off`` and ``l1_l2_ratio``), the dead-latent
  horizon, the activation source (a model and an image set, or an activation
  cache), the folder of each SAE, the checkpoint and its removal;
- :class:`CacheRequest` -> :func:`write_activation_cache`.

The low-level pieces they drive are :func:`sae_audit.train.trainer.fit_saes`
and :func:`sae_audit.train.cache.cache_activations`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from sae_audit import distributed
from sae_audit.data import ImageOptions, Subset, iter_batches, open_image_set
from sae_audit.errors import SaeAuditError
from sae_audit.models import HookPoint, ModelSpec, load_model
from sae_audit.models.loading import resolve_device
from sae_audit.models.hookpoint import TOKEN_SETS
from sae_audit.options import option
from sae_audit.outputs import OutputFolder
from sae_audit.sae import SAEConfig
from sae_audit.train.cache import CACHE_DTYPES, ActivationCache, cache_activations
from sae_audit.train.card import sae_card
from sae_audit.train.stream import image_activations
from sae_audit.train.trainer import TrainConfig, TrainSummary, fit_saes

logger = logging.getLogger(__name__)

NORMALISATIONS = ("scalar", "none")
#: The largest dictionary accepted: d_sae / d_in.
MAX_EXPANSION = 1024.0
CHECKPOINT_DIR = ".checkpoint"


def _as_tuple(request, name: str, kind: type) -> None:
    """Store field ``name`` as a non-empty tuple of ``kind`` (an int is also a float; a bool is neither).

    Raises:
        SaeAuditError: naming the field.
    """
    value = getattr(request, name)
    if isinstance(value, (int, float)):
        value = (value,)

    def ok(v) -> bool:
        return not isinstance(v, bool) and (isinstance(v, kind) or (kind is float and isinstance(v, int)))

    if not value or not all(ok(v) for v in value):
        raise SaeAuditError(f"`{name}` must be one or more {kind.__name__} values, got {value!r}", field=name)
    object.__setattr__(request, name, tuple(value))


@dataclass(frozen=True, kw_only=True)
class TrainRequest:
    """One training run: a sweep of Top-k SAEs trained from one pass over the activations.

    The activations come either from ``model`` (with ``data`` and ``hook``) or
    from an activation ``cache``. Every combination of ``k``, ``l1_off`` and
    ``l1_l2_ratio`` is trained; with one combination the SAE is written to
    ``out``, with several each goes to ``out/<name>/`` (:func:`sae_name`).

    Raises:
        SaeAuditError: a field out of range, or a source that is neither a
            cache nor a model with data and a hook point (the message names the field).
    """

    out: str = option(help="output SAE folder (a parent folder when several SAEs are trained)", metavar="DIR")
    k: tuple[int, ...] = option(help="Top-k budget(s); several values train several SAEs from one pass")
    expansion: float = option(help="d_sae / d_in")
    model: ModelSpec | None = None
    data: str | None = option(None, metavar="SET", help="training image set (required without a cache)")
    cache: str | None = option(None, metavar="DIR",
                               help="train from an activation cache written by `sae-audit cache` instead of "
                                    "running a model (shards are read in a seeded shuffled order, a few at a time)")
    hook: str | None = option(None, metavar="block.L", help="block output to read (0-based); required without a "
                                                            "cache")
    tokens: str = option("patch", choices=TOKEN_SETS, help="token set")
    images: ImageOptions = field(default_factory=ImageOptions)
    l1_off: tuple[float, ...] = option((0.0,), metavar="LAMBDA",
                                       help="weight(s) of the off-support L1 regulariser (0: off)")
    l1_l2_ratio: tuple[float, ...] = option((0.0,), metavar="LAMBDA",
                                            help="weight(s) of the L1/L2-ratio regulariser (0: off)")
    normalisation: str = option("scalar", choices=NORMALISATIONS, help="scale inputs so E||x|| = sqrt(d_in)")
    dead_after: int | None = option(None, metavar="TOKENS",
                                    help="a latent is dead after this many tokens without firing (default: 10M, "
                                         "or a tenth of the training vectors if fewer)")
    optim: TrainConfig = field(default_factory=TrainConfig)
    device: str = option(ModelSpec.device, help="where to train the SAEs when reading a cache (with a model, the "
                                                "model's device)")
    overwrite: bool = option(False, help="replace the SAE files in the output folder if it exists")
    resume: bool = option(False, help="continue an interrupted run from OUT/.checkpoint (same options and data)")
    distribute_saes: bool = option(False, help="under torchrun, train each SAE of the sweep on one rank (round "
                                               "robin) from the activations every rank reads, instead of every SAE "
                                               "data-parallel on all ranks")

    def __post_init__(self) -> None:
        _as_tuple(self, "k", int)
        _as_tuple(self, "l1_off", float)
        _as_tuple(self, "l1_l2_ratio", float)
        if min(self.k) <= 0:
            raise SaeAuditError(f"`k` must be positive, got {self.k}", field="k")
        e = self.expansion
        if not isinstance(e, (int, float)) or isinstance(e, bool) or not math.isfinite(e) or not 0 < e <= MAX_EXPANSION:
            raise SaeAuditError(f"`expansion` must be a number above 0 and at most {MAX_EXPANSION:g}, got {e!r}",
                                field="expansion")
        for name in ("l1_off", "l1_l2_ratio"):
            if not all(math.isfinite(v) and v >= 0 for v in getattr(self, name)):
                raise SaeAuditError(f"`{name}` weights must be finite and >= 0, got {getattr(self, name)}",
                                    field=name)
        if self.normalisation not in NORMALISATIONS:
            raise SaeAuditError(f"`normalisation` must be one of {', '.join(NORMALISATIONS)}", field="normalisation")
        if self.tokens not in TOKEN_SETS:
            raise SaeAuditError(f"`tokens` must be one of {', '.join(TOKEN_SETS)}, got {self.tokens!r}",
                                field="tokens")
        if self.dead_after is not None and (not isinstance(self.dead_after, int) or self.dead_after <= 0):
            raise SaeAuditError(f"`dead_after` must be a positive number of tokens, got {self.dead_after!r}",
                                field="dead_after")
        if self.cache is not None:
            if self.model is not None or self.data is not None:
                raise SaeAuditError("give either `cache` or MODEL with `data`, not both (the cache records its "
                                    "model)", field="cache")
        elif self.model is None or self.data is None or self.hook is None:
            raise SaeAuditError("training needs MODEL, `hook` and `data` (or an activation cache: `cache` DIR)",
                                field="data")

    def input_paths(self) -> list[str]:
        """The local files and folders this run reads (model, image set, cache): ``out`` must not hold them."""
        names = [self.model.name if self.model else None, self.data, self.cache]
        return [n for n in names if n is not None and os.path.lexists(os.path.expanduser(n))]

    def grid(self) -> list[tuple[int, float, float]]:
        """Every ``(k, lambda_off, lambda_ratio)`` combination, in order, without repeats."""
        return [(k, off, ratio) for k in dict.fromkeys(self.k) for off in dict.fromkeys(self.l1_off)
                for ratio in dict.fromkeys(self.l1_l2_ratio)]

    def dead_after_tokens(self) -> int:
        """The dead-latent horizon: ``dead_after``, or 10M capped at a tenth of the training vectors
        (at least one SAE batch), so that short runs still revive dead latents with AuxK (SPEC section 1)."""
        if self.dead_after is not None:
            return self.dead_after
        return min(10_000_000, max(self.optim.batch_size, self.optim.max_vectors // 10))


def sae_name(cfg: SAEConfig) -> str:
    """Folder name of one SAE of a sweep, e.g. ``k32-off0-ratio0.01``."""
    return f"k{cfg.k}-off{cfg.lambda_off:g}-ratio{cfg.lambda_ratio:g}"


@dataclass(frozen=True)
class TrainedSAE:
    """One SAE a :func:`train_saes` run wrote: its folder, the module and what training measured."""

    path: Path
    sae: object
    summary: TrainSummary


def train_saes(request: TrainRequest, progress: bool = True) -> list[TrainedSAE]:
    """Train the sweep a :class:`TrainRequest` describes and write every SAE (with its card).

    Checkpoints go to ``out/.checkpoint`` every ``optim.checkpoint_every`` steps
    and are removed once every SAE is written; ``resume`` continues from one
    (the same settings and data give the same weights as an uninterrupted run).
    Under torchrun (:mod:`sae_audit.distributed`) every SAE trains data-parallel
    (or, with ``distribute_saes``, each on one rank), rank 0 alone holds the
    output folder and writes the checkpoint and the SAEs, and a worker that
    torchrun restarted (``--max-restarts``) resumes from the checkpoint by itself.

    Raises:
        SaeAuditError: the output folder exists (without ``overwrite``), no
            checkpoint to resume, a cache or model that does not fit the
            request, too few activations (the message names the field).
    """
    out = Path(request.out)
    ckpt_dir = out / CHECKPOINT_DIR
    if not request.resume and distributed.restarted() and (ckpt_dir / "state.pt").is_file():
        # torchrun --max-restarts restarted the job after a worker died: continue from the checkpoint
        logger.info("restarted by torchrun: resuming from the checkpoint in %s", ckpt_dir)
        request = replace(request, resume=True)
    images = [request.data] if request.data and os.path.isdir(request.data) else []
    with contextlib.ExitStack() as stack:
        with distributed.together():  # under torchrun rank 0 alone checks, locks and writes the folder
            if request.resume and not (ckpt_dir / "state.pt").is_file():  # every rank reads the checkpoint
                raise SaeAuditError(f"`resume`: no checkpoint in {ckpt_dir}; start without resuming", field="resume")
            folder = stack.enter_context(OutputFolder(out, overwrite=request.overwrite or request.resume,
                                                      inputs=request.input_paths(), image_folders=images)) \
                if distributed.is_main() else None
        written = _train(request, folder, ckpt_dir, progress)
    if folder is not None and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    return written


def _train(request: TrainRequest, folder: OutputFolder, ckpt_dir: Path, progress: bool) -> list[TrainedSAE]:
    with distributed.together():  # under torchrun, a rank that cannot start stops every rank here
        if request.cache is not None:
            cache = ActivationCache.open(request.cache)
            meta = cache.meta
            if request.hook and HookPoint.parse(request.hook, request.tokens).name != meta["hook_point"]:
                raise SaeAuditError(f"`hook` {request.hook} contradicts the cache, which holds {meta['hook_point']}",
                                    field="hook")
            hook = HookPoint.parse(meta["hook_point"], meta["tokens"])
            d_in, model, revision, image_size = cache.d_in, meta["model"], meta["model_revision"], meta["image_size"]
            data_desc = dict(meta["data"], size=meta["data"].get("size"))
            chunks = cache.iter_chunks(shuffle=True, seed=request.optim.seed)
            device = resolve_device(request.device)
            # every rank reads the whole cache: rank 0 alone counts its skipped images
            skipped_of = lambda: int(meta.get("images_skipped", 0)) if distributed.is_main() else 0  # noqa: E731
            source = f"the cache {request.cache}"
        else:
            hook = HookPoint.parse(request.hook, request.tokens)
            image_set = open_image_set(request.data, request.images.max_images, request.images.seed,
                                       max_pixels=request.images.max_pixels)
            vm = load_model(request.model)
            vm.check_hook_point(hook)
            d_in, model, revision = vm.d_model, request.model.name, vm.revision
            image_size, device = vm.image_size, vm.device
            data_desc = image_set.describe()
            # Under torchrun each rank runs the model on its share of the images and the activations are
            # all-gathered, so every rank reads the same stream (rank 0's batch, rank 1's, ... in turn).
            share = distributed.share(len(image_set))
            mine = image_set if not distributed.world().active else Subset(image_set, share)
            it = iter_batches(mine, vm.preprocess, request.images.batch_size, strict=request.images.strict) \
                if len(mine) else []
            chunks = distributed.gather_stream(image_activations(vm, hook, it))
            skipped_of = lambda: len(getattr(it, "skipped", ()))  # noqa: E731
            source = f"{image_set.name} through {model}"
    d_sae = int(round(request.expansion * d_in))
    configs = [
        SAEConfig(d_in=d_in, d_sae=d_sae, k=k, lambda_off=off, lambda_ratio=ratio,
                  dead_after=request.dead_after_tokens(), normalisation=request.normalisation, model=model,
                  model_revision=revision, hook_point=hook.name, tokens=hook.tokens, image_size=image_size)
        for k, off, ratio in request.grid()
    ]
    optim = request.optim
    logger.info(
        "training %d SAE(s) (d_sae=%d) on %s at %s px, %s; reading %s held-out and then %s training vectors from %s "
        "(the first %s fill the shuffle buffer before the first step)", len(configs), d_sae, hook, image_size,
        device, f"{optim.eval_vectors:,}", f"{optim.max_vectors:,}", source, f"{optim.buffer_size:,}")
    t0 = time.perf_counter()
    trained = fit_saes(configs, chunks, optim, device=device, progress=progress,
                       checkpoint_dir=ckpt_dir if (optim.checkpoint_every or request.resume) else None,
                       resume=request.resume, distribute=request.distribute_saes)
    seconds = time.perf_counter() - t0
    n_skipped = sum(distributed.all_gather(skipped_of()))
    if folder is None:  # another rank of a torchrun job: rank 0 holds the same SAEs and writes them
        return [TrainedSAE(Path(request.out), sae, summary) for sae, summary in trained]
    stage = folder.stage()
    placed = []
    for sae, summary in trained:
        name = "" if len(trained) == 1 else sae_name(sae.config)
        card = sae_card(sae.config, summary, optim, data_desc, n_skipped=n_skipped, seconds=seconds)
        sae.write_files(stage / name if name else stage, readme=card)
        placed.append((name, sae, summary))
    folder.commit()
    return [TrainedSAE(folder.path / name if name else folder.path, sae, summary) for name, sae, summary in placed]


@dataclass(frozen=True, kw_only=True)
class CacheRequest:
    """One activation cache to write (``sae-audit cache``).

    Raises:
        SaeAuditError: a field out of range (the message names the field).
    """

    model: ModelSpec
    hook: str = option(metavar="block.L", help="block output to read (0-based)")
    data: str = option(metavar="SET", help="image set to run through the model")
    out: str = option(metavar="DIR", help="cache folder")
    tokens: str = option("patch", choices=TOKEN_SETS, help="token set")
    images: ImageOptions = field(default_factory=ImageOptions)
    shard_rows: int = option(32_768, metavar="N",
                             help="rows per shard (a shard always ends at an image boundary)")
    dtype: str = option("float32", choices=tuple(CACHE_DTYPES), help="storage dtype of the rows")
    resume: bool = option(False, help="continue an interrupted cache in the output folder")
    overwrite: bool = option(False, help="replace the cache files in the output folder if it exists")

    def __post_init__(self) -> None:
        HookPoint.parse(self.hook, self.tokens)
        if not isinstance(self.shard_rows, int) or isinstance(self.shard_rows, bool) or self.shard_rows <= 0:
            raise SaeAuditError(f"`shard_rows` must be a positive number of rows, got {self.shard_rows!r}",
                                field="shard_rows")
        if self.dtype not in CACHE_DTYPES:
            raise SaeAuditError(f"cache dtype {self.dtype!r} (`dtype`) must be one of {', '.join(CACHE_DTYPES)}",
                                field="dtype")


def write_activation_cache(request: CacheRequest, progress: bool = True) -> ActivationCache:
    """Write the cache a :class:`CacheRequest` describes (resumable); the opened cache.

    Under torchrun each rank writes its share of the images (see
    :func:`sae_audit.train.cache.cache_activations`); a worker that torchrun
    restarted resumes the cache by itself.

    Raises:
        SaeAuditError: as :func:`sae_audit.train.cache.cache_activations`, plus
            unknown models, image sets and hook points.
    """
    hook = HookPoint.parse(request.hook, request.tokens)
    images = request.images
    out = Path(request.out)
    if not request.resume and distributed.restarted() and ((out / "meta.json").exists() or any(
            out.glob("meta.rank-*.json"))):
        # torchrun --max-restarts restarted the job after a worker died: continue the cache (its identity is checked)
        logger.info("restarted by torchrun: resuming the cache in %s", request.out)
        request = replace(request, resume=True)
    inputs = [n for n in (request.model.name, request.data) if os.path.lexists(os.path.expanduser(n))]
    folders = [request.data] if os.path.isdir(request.data) else []
    # The cache writes its shards in place (resumable); the folder is checked and locked for the run, and an
    # overwrite removes only the cache's own files (meta.json, shards).
    with contextlib.ExitStack() as stack:
        with distributed.together():  # under torchrun rank 0 alone checks and locks the folder
            if distributed.is_main():
                stack.enter_context(OutputFolder(request.out, overwrite=True, inputs=inputs, image_folders=folders))
            image_set = open_image_set(request.data, images.max_images, images.seed, max_pixels=images.max_pixels)
            vm = load_model(request.model)
            vm.check_hook_point(hook)
        path = cache_activations(
            vm, hook, image_set, request.out, shard_rows=request.shard_rows, dtype=request.dtype,
            batch_size=images.batch_size, resume=request.resume, overwrite=request.overwrite, strict=images.strict,
            data_spec={"spec": request.data, "max_images": images.max_images, "seed": images.seed},
            progress=progress,
        )
    return ActivationCache.open(path)
