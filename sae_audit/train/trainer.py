"""Training Top-k SAEs on activations streamed from a vision model.

One pass over the activation stream trains every SAE in a list of configs
(a sweep over k and the regulariser weights shares the model's forward
passes). The recipe follows Gao et al. 2024 (arXiv 2406.04093): Adam, tied
initialisation, ``b_dec`` at the geometric median of a sample, unit-norm
decoder rows with the parallel gradient removed, AuxK on dead latents.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace

import torch
from tqdm.auto import tqdm

from sae_audit import distributed
from sae_audit.errors import SaeAuditError
from sae_audit.options import option
from sae_audit.sae import SAEConfig, TopKSAE
from sae_audit.train.objective import TopKObjective

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by every SAE in one training run (``TrainRequest.optim``).

    ``precision``: ``float32``; ``bf16`` runs the SAE forward under
    ``torch.autocast(dtype=torch.bfloat16)``: the encoder matmul that *selects* the
    k latents runs in bf16, the selected pre-activations are recomputed in float32
    (with the regularisers on, they read the bf16 matrix), and parameters, optimiser
    state, decoder and renormalisation stay float32; ``auto`` picks ``bf16`` on a
    CUDA device that supports it and ``float32`` elsewhere (on a CPU with bf16
    instructions ``benchmarks/train_speed.py`` measured no gain at these sizes).

    Raises:
        SaeAuditError: a field out of range (the message names it as ``optim.<field>``).
    """

    batch_size: int = option(1024, metavar="N", help="activation vectors per optimiser step")
    lr: float = option(1e-3, help="Adam learning rate (peak, after a linear warm-up; decays linearly at the end)")
    warmup_fraction: float = option(0.05, help="share of the steps with a linear warm-up from 0")
    decay_fraction: float = option(0.2, help="share of the final steps with a linear decay to 0")
    max_vectors: int = option(500_000, metavar="N", help="training activation vectors")
    eval_vectors: int = option(16_384, metavar="N", help="held-out vectors (never trained on) for the final evaluation")
    buffer_size: int = option(65_536, metavar="N", help="shuffle-buffer size in vectors")
    b_dec_init: str = option("geometric_median", choices=("geometric_median", "mean"),
                             help="initialisation of b_dec from a sample of activations")
    seed: int = option(0, help="seeds the SAE initialisation (the same for every SAE of the run, recorded as "
                                  "init_seed) and the shuffling")
    precision: str = option("auto", choices=("auto", "float32", "bf16"),
                            help="SAE forward precision: bf16 autocast or float32 (auto: bf16 on a GPU that supports "
                                 "it, float32 elsewhere)")
    checkpoint_every: int = option(0, metavar="STEPS",
                                   help="write a resumable checkpoint to OUT/.checkpoint every STEPS optimiser steps "
                                        "(0: never)")

    def __post_init__(self) -> None:
        def whole(name: str, low: int) -> None:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise SaeAuditError(f"`optim.{name}` must be a whole number >= {low}, got {v!r}", field=f"optim.{name}")

        for name in ("batch_size", "max_vectors", "eval_vectors", "buffer_size"):
            whole(name, 1)
        whole("checkpoint_every", 0)
        lr = self.lr
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or not 0 < lr <= 10:
            raise SaeAuditError(f"`optim.lr` must be a finite learning rate above 0 and at most 10, got {lr!r}",
                                field="optim.lr")
        for name in ("warmup_fraction", "decay_fraction"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise SaeAuditError(f"`optim.{name}` must be a fraction between 0 and 1, got {v!r}",
                                    field=f"optim.{name}")
        if self.precision not in ("float32", "bf16", "auto"):
            raise SaeAuditError(f"`optim.precision` {self.precision!r} must be float32, bf16 or auto",
                                field="optim.precision")
        if self.b_dec_init not in ("geometric_median", "mean"):
            raise SaeAuditError(f"`optim.b_dec_init` {self.b_dec_init!r} must be geometric_median or mean",
                                field="optim.b_dec_init")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainSummary:
    """What training measured, written into the SAE's card."""

    steps: int
    vectors: int
    eval_vectors: int
    eval_fvu: float
    eval_l0: float
    eval_effective_units: float
    dead_fraction: float
    final_train_nmse: float


def lr_factor(step: int, total: int, warmup: float, decay: float) -> float:
    """Multiplier of the peak learning rate at ``step`` of ``total`` (linear warm-up and decay)."""
    n_warm = max(1, int(total * warmup)) if warmup > 0 else 0
    n_decay = int(total * decay)
    if step < n_warm:
        return (step + 1) / n_warm
    if n_decay and step >= total - n_decay:
        return max(0.0, (total - step) / n_decay)
    return 1.0


class TrainingRun:
    """One SAE being trained: module, objective, Adam optimiser and running statistics.

    ``x_held`` (``[n, d_in]``, model units, on ``device``) gives the objective's data
    mean and, through a seeded sample of at most 4096 rows, ``b_dec``'s initialisation.
    :func:`fit_saes` makes one per config and calls :meth:`step` per batch; the
    training benchmark (``benchmarks/train_speed.py``) times the same method.
    """

    def __init__(self, cfg: SAEConfig, seed: int, lr: float, device: torch.device, x_held: torch.Tensor,
                 b_dec_init: str, sample_seed: int):
        self.sae = TopKSAE(cfg, seed=seed).to(device)
        self.opt = _adam(self.sae.parameters(), lr)
        self.nmse_ema: float | None = None
        x_norm = self.sae.normalise_input(x_held)
        self.objective = TopKObjective(self.sae, data_mean=x_norm.mean(dim=0))
        perm = torch.randperm(x_norm.shape[0], generator=torch.Generator().manual_seed(sample_seed))
        self.objective.init_b_dec(x_norm[perm[:4096]], b_dec_init)

    def step(self, x: torch.Tensor, lr: float, bf16: bool = False, n_rows: int | None = None):
        """One optimiser step on ``x [B, d_in]`` (model units, on the SAE's device) at learning rate ``lr``.

        Loss (:meth:`TopKObjective.loss <sae_audit.train.objective.TopKObjective.loss>`) under bf16
        autocast when ``bf16``, backward, parallel-gradient removal, Adam, decoder renormalisation.
        Returns the :class:`~sae_audit.train.objective.LossOutput` (terms detached, loss not).

        Under torchrun (data parallel, :func:`data_parallel_step`), ``x`` is this rank's
        shard of a batch of ``n_rows`` rows: the gradients are all-reduced first.
        """
        for group in self.opt.param_groups:
            group["lr"] = lr
        if n_rows is not None:
            return data_parallel_step(self, x, n_rows, bf16)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = self.objective.loss(self.sae.normalise_input(x))
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        self.objective.project_decoder_grad()
        self.opt.step()
        self.objective.normalise_decoder()
        return out


def data_parallel_step(run: TrainingRun, x: torch.Tensor, n_rows: int, bf16: bool = False):
    """:meth:`TrainingRun.step` on this rank's shard ``x [b, d_in]`` of a batch of ``n_rows`` rows.

    Every rank holds the same parameters and optimiser state. The gradient is the
    weighted sum of the ranks' gradients, each rank's weighted by its share of the
    batch's variance about the data mean, ``w_r = sum_r ||x - mean||^2 / sum ||x - mean||^2``
    (one all-reduce): the normalised MSE's gradient then equals the whole batch's
    (a ratio of batch sums, :func:`~sae_audit.sae.losses.normalised_mse`); the
    AuxK and regulariser terms are per-shard estimates (their batch-level sets,
    dead latents' top-k and the batch-active latents, are each shard's), as in
    PyTorch's DistributedDataParallel. The fired mask behind the dead-latent counters
    is all-reduced (a latent that fired on any rank fired), and the counters add
    ``n_rows``, so they equal one process's. The parameter gradients travel in one
    flat all-reduce; Adam then takes the same step on every rank.
    """
    x_norm = run.sae.normalise_input(x)
    den = (x_norm.float() - run.objective.data_mean).pow(2).sum().reshape(1).double()
    total = distributed.all_reduce(den.clone())
    weight = float(den / total.clamp_min(torch.finfo(torch.float64).tiny))
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = run.objective.loss(x_norm, fired_sync=_fired_anywhere, n_rows=n_rows)
    run.opt.zero_grad(set_to_none=False)
    (out.loss * weight).backward()
    params = list(run.sae.parameters())
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
                     + [(out.nmse.detach().float() * weight).reshape(1)])
    distributed.all_reduce(flat)
    start = 0
    for p in params:
        n = p.numel()
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.copy_(flat[start:start + n].view_as(p))
        start += n
    out.nmse = flat[start]  # the whole batch's normalised MSE (the same on every rank)
    run.objective.project_decoder_grad()
    run.opt.step()
    run.objective.normalise_decoder()
    return out


def _fired_anywhere(fired: torch.Tensor) -> torch.Tensor:
    """``[d_sae]`` bool: a latent fired on some rank (an all-reduce max)."""
    return distributed.all_reduce(fired.to(torch.int32), "max").bool()


def _adam(params, lr: float) -> torch.optim.Adam:
    """Adam (betas 0.9, 0.999), fused into one kernel per parameter where torch has it (CPU and CUDA).

    The fused step does the same arithmetic as the per-operation one and was 10x
    faster on a 2-core CPU (0.6 ms against 8 ms for a d_in 384, d_sae 3072 SAE).
    """
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), fused=True)
    except (RuntimeError, ValueError):  # pragma: no cover - a device without the fused kernel
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))


def fit_saes(
    configs: list[SAEConfig],
    chunks: Iterable[torch.Tensor],
    train: TrainConfig,
    device: str | torch.device = "cpu",
    progress: bool = True,
    checkpoint_dir=None,
    resume: bool = False,
    distribute: bool = False,
) -> list[tuple[TopKSAE, TrainSummary]]:
    """Train one SAE per config from a single pass over activation ``chunks``.

    Args:
        configs: SAE configs sharing ``d_in``; their ``normalisation`` decides
            whether a scalar ``norm_scale`` is estimated (E||x|| = sqrt(d_in)).
        chunks: iterable of ``[n, d_in]`` float activation tensors (model units),
            e.g. :func:`sae_audit.train.stream.image_activations`.
        train: optimisation settings.
        checkpoint_dir: folder for the resumable checkpoint written every
            ``train.checkpoint_every`` steps (:mod:`sae_audit.train.checkpoint`).
        resume: continue from the checkpoint in ``checkpoint_dir``. ``chunks``
            must replay the same stream (a cache read with the same seed, or the
            same model and images); the steps already done are skipped, so the
            result equals an uninterrupted run's.
        distribute: under torchrun, place the SAEs on the ranks (config ``i`` on rank
            ``i mod world size``, as sparsify's ``--distribute_modules``) instead of
            training each data-parallel: every rank reads the whole stream and trains
            its own SAEs on full batches, so the weights equal one process's; each rank
            checkpoints its own (:func:`~sae_audit.train.checkpoint.rank_state_name`)
            and the trained SAEs are all-gathered at the end.
    Returns:
        ``(sae, summary)`` per config, SAEs in eval mode with ``norm_scale``
        recorded in their configs.
    Raises:
        SaeAuditError: the stream is empty, too short for the held-out split, or
            the activations contain NaN; ``resume`` finds no checkpoint or one of
            another run.
    """
    from sae_audit.train import checkpoint as ckpt
    from sae_audit.train.stream import shuffled_batches

    if not configs:
        raise SaeAuditError("nothing to train: no SAE configs given")
    d_in = configs[0].d_in
    if any(c.d_in != d_in for c in configs):
        raise SaeAuditError("all SAEs trained together must share d_in")
    device = torch.device(device)
    batches: Iterator[torch.Tensor] = shuffled_batches(
        chunks, train.batch_size, train.buffer_size, train.max_vectors + train.eval_vectors, train.seed
    )

    # The first batches give the held-out evaluation set and the statistics for
    # normalisation and b_dec. They are never trained on.
    held: list[torch.Tensor] = []
    n_held = 0
    for batch in batches:
        held.append(batch)
        n_held += batch.shape[0]
        if n_held >= train.eval_vectors:
            break
    if n_held == 0:
        raise SaeAuditError("the activation stream is empty: no images were read")
    held_x = torch.cat(held)
    # Exactly eval_vectors are held out; the rest of the last batch is trained on.
    eval_x = held_x[: train.eval_vectors].to(device)
    batches = _rebatch(held_x[train.eval_vectors:], batches, train.batch_size)
    if not torch.isfinite(eval_x).all():
        raise SaeAuditError("the model produced NaN or infinite activations; try `dtype` float32", field="dtype")
    mean_norm = eval_x.norm(dim=1).mean().item()
    scale = math.sqrt(d_in) / mean_norm if mean_norm > 0 else 1.0

    world = distributed.world()
    placed = distribute and world.active
    mine = [i for i in range(len(configs)) if not placed or i % world.world_size == world.rank]
    state_name = ckpt.rank_state_name(world.rank) if placed else ckpt.STATE_NAME
    runs: list[TrainingRun] = []
    for i in mine:
        cfg = configs[i]
        # Paired sweeps (SPEC section 6): every SAE is initialised from the run's seed (or the seed its
        # config records), so SAEs of one d_in/d_sae start from the same weights and see the same batches.
        init_seed = train.seed if cfg.init_seed is None else cfg.init_seed
        cfg = replace(cfg, norm_scale=scale if cfg.normalisation == "scalar" else 1.0, init_seed=init_seed)
        runs.append(TrainingRun(cfg, seed=init_seed, lr=train.lr, device=device, x_held=eval_x,
                         b_dec_init=train.b_dec_init, sample_seed=train.seed))

    total_steps = max(1, math.ceil(train.max_vectors / train.batch_size))
    step = 0
    vectors = 0
    if resume:
        if checkpoint_dir is None:
            raise SaeAuditError("resume asked for but no checkpoint folder given")
        step, vectors = ckpt.load_checkpoint(checkpoint_dir, runs, train, state_name)
        for _ in range(step):  # replay the deterministic stream up to where the checkpoint was taken
            if next(batches, None) is None:
                raise SaeAuditError("the activation stream is shorter than the checkpoint; it is not the same data")
    use_bf16 = resolve_precision(train.precision, device)
    bar = tqdm(total=train.max_vectors, initial=vectors, unit="vec", unit_scale=True, desc="training",
               disable=not (progress and distributed.is_main()))
    failed: SaeAuditError | None = None
    parallel = world.active and not placed  # every rank reads the same batches and trains on its shard of each
    for x in batches:
        x = x.to(device)
        if not torch.isfinite(x).all():
            raise SaeAuditError("the model produced NaN or infinite activations; try `dtype` float32", field="dtype")
        factor = lr_factor(step, total_steps, train.warmup_fraction, train.decay_fraction)
        part = None
        if parallel:  # a batch with fewer rows than ranks: each rank takes all of it, with weight 1/world size
            part = distributed.share(x.shape[0]) if x.shape[0] >= distributed.world().world_size else \
                range(x.shape[0])
        for run in runs:
            if part is None:
                out = run.step(x, train.lr * factor, use_bf16)
            else:
                out = run.step(x[part.start:part.stop], train.lr * factor, use_bf16, n_rows=x.shape[0])
            v = float(out.nmse)
            if not math.isfinite(v):
                failed = SaeAuditError(
                    f"training diverged at step {step + 1}: the reconstruction loss of SAE k={run.sae.k} became {v}; "
                    f"lower `optim.lr` (now {train.lr:g}) and train again (nothing was written)", field="optim.lr")
                if not placed:
                    raise failed
                runs = []  # this rank's SAEs stop; it keeps reading the shared stream and every rank fails at the end
                break
            run.nmse_ema = v if run.nmse_ema is None else 0.95 * run.nmse_ema + 0.05 * v
        step += 1
        vectors += x.shape[0]
        bar.update(x.shape[0])
        if checkpoint_dir is not None and train.checkpoint_every and step % train.checkpoint_every == 0 \
                and (placed or distributed.is_main()):  # data parallel: the same state everywhere, rank 0 writes it
            ckpt.save_checkpoint(checkpoint_dir, runs, train, step, vectors, state_name)
        if step % 10 == 1 and runs:
            first = runs[0]
            bar.set_postfix(
                loss=f"{float(out.loss.detach()):.3f}",
                fvu=f"{first.nmse_ema:.3f}",
                dead=f"{float(first.objective.dead_mask().float().mean()):.2f}",
                refresh=False,
            )
    bar.close()
    if vectors == 0:
        raise SaeAuditError(
            f"only {n_held} activation vectors were read and `optim.eval_vectors` holds out {train.eval_vectors} "
            "for the evaluation, so none are left to train on; read more images (`max_images`) or hold out fewer",
            field="optim.eval_vectors",
        )
    if vectors < train.max_vectors and distributed.is_main():
        logger.warning(
            "sae-audit: warning: the activations ran out after %s of the %s training vectors asked "
            "(`optim.max_vectors`); the SAEs were trained on what there was, and the learning rate's decay, "
            "planned over the vectors asked, was %s; read more images (`max_images`) or ask for fewer vectors",
            f"{vectors:,}", f"{train.max_vectors:,}", "cut short" if train.decay_fraction > 0 else "not affected")
    for run in runs:
        if not all(torch.isfinite(p).all() for p in run.sae.parameters()):
            raise SaeAuditError(f"training diverged: SAE k={run.sae.k} has non-finite weights; lower `optim.lr` "
                                f"(now {train.lr:g}) and train again (nothing was written)", field="optim.lr")

    results = []
    for run in runs:
        sae = run.sae.eval()
        summary = evaluate(sae, eval_x)
        results.append(
            (
                sae,
                TrainSummary(
                    steps=step,
                    vectors=vectors,
                    eval_vectors=eval_x.shape[0],
                    eval_fvu=summary["fvu"],
                    eval_l0=summary["l0"],
                    eval_effective_units=summary["effective_units"],
                    dead_fraction=float(run.objective.dead_mask().float().mean()),
                    final_train_nmse=float(run.nmse_ema or float("nan")),
                ),
            )
        )
    if placed:  # every rank's SAEs, in config order
        def payload():
            if failed is not None:
                raise failed
            return [(i, sae.cpu(), summary) for i, (sae, summary) in zip(mine, results)]

        got = distributed.gather_outcome(payload)
        results = [(sae.to(device), summary) for _, sae, summary in sorted((t for g in got for t in g),
                                                                            key=lambda t: t[0])]
    return results


def _rebatch(first: torch.Tensor, rest: Iterator[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    """``first`` then ``rest``, re-cut into ``[batch_size, d]`` batches (the last may be smaller)."""
    buf = first
    for x in rest:
        buf = torch.cat([buf, x]) if buf.shape[0] else x
        while buf.shape[0] >= batch_size:
            yield buf[:batch_size]
            buf = buf[batch_size:]
    if buf.shape[0]:
        yield buf


def resolve_precision(precision: str, device: torch.device) -> bool:
    """Whether to run the SAE forward under bf16 autocast (see :class:`TrainConfig`)."""
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise SaeAuditError("this GPU does not support bfloat16; use `optim.precision` float32", field="optim.precision")
        return True
    if precision == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return False


@torch.no_grad()
def evaluate(sae: TopKSAE, x: torch.Tensor, k: int | None = None) -> dict[str, float]:
    """FVU, mean L0 and mean effective units of ``sae`` on ``x [N, d_in]`` (model units)."""
    from sae_audit import metrics

    codes = sae.encode(x, k=k)
    x_hat = sae.decode(codes)
    return {
        "fvu": metrics.fvu(x, x_hat),
        "l0": float(codes.l0().float().mean()),
        "effective_units": float(metrics.effective_units(codes.values).mean()),
    }
