"""Train the SAEs of the paper experiment (arXiv 2606.27321) from one pass over cached activations.

For each training k: a fixed-k Top-k SAE, two off-support-L1 SAEs and two
L1/L2-ratio SAEs (lambdas below), all trained together from the same shuffled
stream of a `sae-audit cache` folder. Each SAE is written to OUT/<name>/ in the
native format with its card; a checkpoint every 50 steps makes a killed run
resumable (--resume). See experiments/paper/README.md for the whole recipe.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sae_audit.cli import sae_name
from sae_audit.sae import SAEConfig, save_sae
from sae_audit.train import TrainConfig, fit_saes, sae_card
from sae_audit.train.cache import ActivationCache


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", required=True, help="training activation cache (sae-audit cache)")
    p.add_argument("--out", required=True, help="folder for the SAEs")
    p.add_argument("--k", type=int, nargs="+", default=[8, 32])
    p.add_argument("--l1-off", type=float, nargs="+", default=[1e-4, 1e-3])
    p.add_argument("--l1-l2-ratio", type=float, nargs="+", default=[3e-3, 3e-2])
    p.add_argument("--expansion", type=int, default=4)
    p.add_argument("--max-vectors", type=int, default=150_000)
    p.add_argument("--eval-vectors", type=int, default=16_384)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()

    cache = ActivationCache.open(args.cache)
    meta = cache.meta
    base = dict(d_in=cache.d_in, d_sae=args.expansion * cache.d_in, normalisation="scalar",
                dead_after=max(args.batch_size, args.max_vectors // 10), model=meta["model"],
                model_revision=meta["model_revision"], hook_point=meta["hook_point"], tokens=meta["tokens"],
                image_size=meta["image_size"])
    configs = []
    for k in args.k:
        configs.append(SAEConfig(k=k, **base))
        configs += [SAEConfig(k=k, lambda_off=lam, **base) for lam in args.l1_off]
        configs += [SAEConfig(k=k, lambda_ratio=lam, **base) for lam in args.l1_l2_ratio]
    train = TrainConfig(batch_size=args.batch_size, lr=args.lr, max_vectors=args.max_vectors,
                        eval_vectors=args.eval_vectors, seed=args.seed, checkpoint_every=50)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    trained = fit_saes(configs, cache.iter_chunks(shuffle=True, seed=args.seed), train,
                         checkpoint_dir=out / ".checkpoint", resume=args.resume)
    seconds = time.perf_counter() - t0
    summary = {}
    for sae, s in trained:
        name = sae_name(sae.config)
        save_sae(sae, out / name, readme=sae_card(sae.config, s, train, meta["data"], seconds=seconds),
                 overwrite=True)
        summary[name] = {"train_heldout_fvu": s.eval_fvu, "dead_fraction_training": s.dead_fraction,
                         "steps": s.steps, "vectors": s.vectors}
        print(f"{name}: held-out FVU {s.eval_fvu:.4f}, dead {s.dead_fraction:.1%}", flush=True)
    (out / "training.json").write_text(json.dumps({"seconds": round(seconds, 1), "train": train.to_dict(),
                                                   "saes": summary}, indent=2) + "\n")
    print(f"trained {len(trained)} SAEs in {seconds:.0f} s")


if __name__ == "__main__":
    main()
