"""Train the paired SAE sweeps of the paper experiment (arXiv 2606.27321; SPEC section 6).

For each seed, one pass trains every SAE of the grid together: for each k, a
fixed-k Top-k SAE (and fixed-k SAEs at the ``--frontier`` fractions of k), the
off-support L1 at each ``--l1-off`` lambda and the
L1/L2 ratio at each ``--l1-l2-ratio`` lambda. Within a seed every SAE starts
from the same initialisation (``SAEConfig.init_seed`` = the seed: identical
``W_enc``, ``W_dec``, ``b_enc``, and ``b_dec`` from the same sample) and sees
the same batches, so a difference between two variants of one seed is the
regulariser's, not the seed's. Seeds differ in the initialisation and in the
order of the batches.

Every ``--eval-every`` steps the FVU of every SAE on held-out *images* (the
first ``--curve-images`` images of the test cache, never trained on) is
recorded: the training curve, to show whether it plateaued.

Each seed is written to OUT/seed<S>/<name>/ (native format) with
OUT/seed<S>/training.json (curve, dead fractions, time). A checkpoint every
``--checkpoint-every`` steps makes a killed run resumable: rerun the same
command and it continues (finished seeds are skipped).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from sae_audit import metrics
from sae_audit.sae import SAEConfig, save_sae
from sae_audit.train import TrainConfig
from sae_audit.train import checkpoint as ckpt
from sae_audit.train.cache import ActivationCache
from sae_audit.train.jobs import sae_name
from sae_audit.train.stream import shuffled_batches
from sae_audit.train.trainer import TrainingRun


def grid(args, base: dict) -> list[SAEConfig]:
    configs = []
    for k in args.k:
        configs.append(SAEConfig(k=k, **base))
        # The fixed-k frontier: Top-k SAEs trained at smaller budgets reach the higher FVUs the regularisers
        # cost, so a variant can be compared with fixed-k at matched FVU (SPEC section 6).
        configs += [SAEConfig(k=kf, **base) for kf in sorted({max(1, round(k * f)) for f in args.frontier})
                    if kf != k]
        configs += [SAEConfig(k=k, lambda_off=lam, **base) for lam in args.l1_off]
        configs += [SAEConfig(k=k, lambda_ratio=lam, **base) for lam in args.l1_l2_ratio]
    return configs


def lr_factor(step: int, args) -> float:
    """Linear warm-up over ``warmup_steps``, constant, then (``decay_steps`` > 0) a linear decay to 0 over the
    last ``decay_steps`` of ``steps``. The constant phase does not depend on ``steps``, so the first
    ``steps - decay_steps`` steps of any two runs with the same warm-up are the same."""
    factor = min(1.0, (step + 1) / args.warmup_steps)
    start = args.steps - args.decay_steps
    if args.decay_steps > 0 and step >= start:
        factor *= (args.steps - step) / args.decay_steps
    return factor


def epochs(cache: ActivationCache, seed: int):
    """The training cache read again and again, each epoch in its own seeded shard order."""
    epoch = 0
    while True:
        yield from cache.iter_chunks(shuffle=True, seed=seed * 1000 + epoch)
        epoch += 1


def read_rows(cache: ActivationCache, n_rows: int) -> torch.Tensor:
    out, have = [], 0
    for i in range(len(cache.meta["shards"])):
        x = cache.read_shard(i).float()
        out.append(x)
        have += x.shape[0]
        if have >= n_rows:
            break
    return torch.cat(out)[:n_rows]


@torch.no_grad()
def heldout_fvu(run: TrainingRun, x: torch.Tensor) -> float:
    sae = run.sae
    was = sae.training
    sae.eval()
    x_hat = torch.cat([sae.decode(sae.encode(x[s: s + 8192])) for s in range(0, x.shape[0], 8192)])
    sae.train(was)
    return metrics.fvu(x, x_hat)


def train_seed(args, seed: int, cache: ActivationCache, curve_x: torch.Tensor, out: Path) -> None:
    folder = out / f"seed{seed}"
    if (folder / "training.json").is_file():
        print(f"seed {seed}: already trained", flush=True)
        return
    base = dict(d_in=cache.d_in, d_sae=args.expansion * cache.d_in, normalisation="scalar",
                dead_after=args.dead_after, aux_alpha=args.aux_alpha, init_seed=seed,
                model=cache.meta["model"], model_revision=cache.meta["model_revision"],
                hook_point=cache.meta["hook_point"], tokens=cache.meta["tokens"], image_size=cache.meta["image_size"])
    configs = grid(args, base)
    # The learning rate is constant after a fixed warm-up until the final --decay-steps (lr_factor), so the
    # constant phase of a run is exactly the first steps of a longer one: a run stopped in it (the STOP file)
    # can be resumed with a larger --steps and a decay, and equals a run asked for that from the start.
    # TrainConfig only records the settings a checkpoint must match; its max_vectors is nominal.
    train = TrainConfig(batch_size=args.batch_size, lr=args.lr, max_vectors=10**12, eval_vectors=args.stat_vectors,
                        warmup_fraction=0.0, decay_fraction=0.0, seed=seed, checkpoint_every=args.checkpoint_every)
    batches = shuffled_batches(epochs(cache, seed), args.batch_size, train.buffer_size, None, seed)
    # The first stat_vectors give the normalisation scale, the data mean and b_dec's sample (never trained on).
    held = []
    while sum(h.shape[0] for h in held) < args.stat_vectors:
        held.append(next(batches))
    held_x = torch.cat(held)
    stat_x, rest = held_x[: args.stat_vectors], held_x[args.stat_vectors:]
    scale = math.sqrt(cache.d_in) / stat_x.norm(dim=1).mean().item()
    runs = []
    for cfg in configs:
        from dataclasses import replace

        cfg = replace(cfg, norm_scale=scale)
        runs.append(TrainingRun(cfg, seed=cfg.init_seed, lr=args.lr, device=torch.device("cpu"), x_held=stat_x,
                                b_dec_init=train.b_dec_init, sample_seed=seed))
    names = [sae_name(r.sae.config) for r in runs]
    ck = folder / ".checkpoint"
    curve_file = folder / "curve.json"
    step, vectors, seconds = 0, 0, 0.0
    curve = {"step": [], "fvu": {n: [] for n in names}}
    pending = [rest] if rest.shape[0] else []

    def stream():
        buf = torch.cat(pending) if pending else torch.zeros(0, cache.d_in)
        for x in batches:
            buf = torch.cat([buf, x]) if buf.shape[0] else x
            while buf.shape[0] >= args.batch_size:
                yield buf[: args.batch_size]
                buf = buf[args.batch_size:]

    it = stream()
    if (ck / ckpt.STATE_NAME).is_file():
        step, vectors = ckpt.load_checkpoint(ck, runs, train)
        saved = json.loads(curve_file.read_text())
        curve, seconds = saved["curve"], saved["seconds"]
        for _ in range(step):
            next(it)
        print(f"seed {seed}: resumed at step {step}", flush=True)

    def record():
        curve["step"].append(step)
        for n, r in zip(names, runs):
            curve["fvu"][n].append(round(heldout_fvu(r, curve_x), 5))

    if step == 0:
        record()
    t0 = time.perf_counter() - seconds
    while step < args.steps:
        x = next(it)
        lr = args.lr * lr_factor(step, args)
        for r in runs:
            out_step = r.step(x, lr)
            v = float(out_step.nmse)
            if not math.isfinite(v):
                raise SystemExit(f"seed {seed}: {sae_name(r.sae.config)} diverged at step {step}")
            r.nmse_ema = v if r.nmse_ema is None else 0.95 * r.nmse_ema + 0.05 * v
        step += 1
        vectors += x.shape[0]
        if step % args.eval_every == 0 or step == args.steps:
            record()
            dead = float(runs[0].objective.dead_mask().float().mean())
            print(f"seed {seed} step {step}/{args.steps} {time.perf_counter() - t0:.0f}s "
                  f"{names[0]} held-out FVU {curve['fvu'][names[0]][-1]:.4f} dead {dead:.2f}", flush=True)
        if step % args.checkpoint_every == 0 and step < args.steps:
            if step % args.eval_every:
                record()
            ckpt.save_checkpoint(ck, runs, train, step, vectors)
            tmp = curve_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"curve": curve, "seconds": time.perf_counter() - t0}))
            tmp.replace(curve_file)
            if (out / "STOP").exists():  # a time-bounded run: stop here, write the SAEs as they are
                print(f"seed {seed}: STOP file found, stopping at step {step}", flush=True)
                break
    seconds = time.perf_counter() - t0
    summary = {}
    for n, r in zip(names, runs):
        sae = r.sae.eval()
        save_sae(sae, folder / n, overwrite=True)
        summary[n] = {"dead_fraction_training": float(r.objective.dead_mask().float().mean()),
                      "final_train_nmse": r.nmse_ema, "heldout_fvu": curve["fvu"][n][-1]}
    info = {"seed": seed, "steps": step, "steps_asked": args.steps, "lr": args.lr, "warmup_steps": args.warmup_steps,
            "decay_steps": args.decay_steps, "vectors": vectors, "seconds": round(seconds, 1),
            "curve_images": args.curve_images, "curve_vectors": int(curve_x.shape[0]), "train": train.to_dict(),
            "curve": curve, "saes": summary}
    tmp = folder / "training.json.tmp"
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    tmp.replace(folder / "training.json")
    print(f"seed {seed}: trained {len(runs)} SAEs, {step} steps in {seconds:.0f} s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", required=True, help="training activation cache (sae-audit cache)")
    p.add_argument("--heldout-cache", required=True, help="activation cache of held-out images (the training curve)")
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--k", type=int, nargs="+", default=[8, 32])
    p.add_argument("--l1-off", type=float, nargs="*", default=[1e-4, 3e-4, 1e-3, 3e-3])
    p.add_argument("--l1-l2-ratio", type=float, nargs="*", default=[3e-3, 1e-2, 3e-2, 1e-1])
    p.add_argument("--frontier", type=float, nargs="*", default=[0.5, 0.75],
                   help="also train fixed-k SAEs at these fractions of each k (the fixed-k MS-vs-FVU frontier)")
    p.add_argument("--expansion", type=int, default=2)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--decay-steps", type=int, default=0,
                   help="decay the learning rate linearly to 0 over the last N of --steps (0: constant to the end)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: several seeds in parallel processes)")
    p.add_argument("--dead-after", type=int, default=4096, help="tokens without firing before AuxK revives a latent")
    p.add_argument("--aux-alpha", type=float, default=1 / 32)
    p.add_argument("--stat-vectors", type=int, default=8192)
    p.add_argument("--curve-images", type=int, default=128)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=100)
    args = p.parse_args()
    if not 0 <= args.decay_steps <= args.steps:
        p.error("--decay-steps must be between 0 and --steps")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cache = ActivationCache.open(args.cache)
    held = ActivationCache.open(args.heldout_cache)
    per_image = held.meta["rows"] // held.meta["images_total"]
    curve_x = read_rows(held, args.curve_images * per_image)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        train_seed(args, seed, cache, curve_x, out)


if __name__ == "__main__":
    main()
