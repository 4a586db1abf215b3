"""Evaluate every SAE of one seed of the paper experiment with the audit suites' own accumulators.

For each SAE in SAES/seed<S>/ (written by experiments/paper/train.py), on cached
activations of held-out images (never trained on), it feeds the audit suites'
accumulators exactly as an audit does (``SuiteBatch`` per batch of whole
images, the image set's Poisson bootstrap keyed by image id) and keeps:

- ID (Fashion-MNIST test images): FVU, L0, effective units, firing frequencies
  (coverage suite); MS per latent with its bootstrap replicates
  (monosemanticity suite) and the shuffled-activation chance level (the same
  accumulator with the judge embeddings permuted across images, which pairs
  every latent's activations with the embeddings of random images); few-latent
  probing with the probing suite's protocol and its per-image hits (for the
  paired McNemar test); per-image FVU and effective units (OOD suite);
- k-robustness (suite): FVU and MS at k' in {k/4, k/2, k, 2k, 4k};
- per OOD set (digits, clip art, two corruptions of the ID images): the OOD
  suite's AUROC per score with bootstrap replicates, the coverage suite's
  pair metrics (OOD-only latents, JS divergence) with intervals.

Writes OUT/seed<S>/<sae name>.json per SAE (a rerun skips finished SAEs), with
the bootstrap replicates the aggregation (experiments/paper/aggregate.py) needs
for paired intervals. Image ids are positions in the cache; the bootstrap of a
set is keyed by its name, so every SAE of every seed sees the same weights.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from sae_audit import metrics
from sae_audit.sae import load_sae
from sae_audit.suites import coverage, ood
from sae_audit.suites.base import SuiteBatch
from sae_audit.suites.bootstrap import Bootstrap
from sae_audit.suites.k_robustness import KRobustnessAccumulator, budgets_for
from sae_audit.suites.monosemanticity import MonosemanticityAccumulator, replicate_summaries
from sae_audit.suites.probing import ProbingAccumulator
from sae_audit.train.cache import ActivationCache

#: OOD sets: cache folder suffix -> label in the results.
OOD_SETS = {"digits": "digits", "clipart": "clipart", "noise": "gaussian_noise:3", "blur": "gaussian_blur:3"}


def chosen(stored: int, n_images: int) -> np.ndarray:
    """Cache positions of the ``n_images`` images evaluated out of ``stored``: all of them, or a fixed
    pseudo-random subset kept in cache order (a folder set is cached category by category, so its first
    ``n`` images would be one or two categories)."""
    if n_images >= stored:
        return np.arange(stored)
    return np.sort(np.random.default_rng(0).permutation(stored)[:n_images])


def take_images(x: torch.Tensor, per_image: int, positions) -> torch.Tensor:
    """The rows of the images at ``positions`` (cache order kept)."""
    rows = (torch.as_tensor(positions, dtype=torch.long)[:, None] * per_image + torch.arange(per_image)).flatten()
    return x[rows]


def stored_images(meta: dict) -> int:
    """Images a cache holds: an unreadable image is counted in ``images_skipped`` and not stored, so cache
    positions skip it."""
    return meta["images_total"] - meta.get("images_skipped", 0)


def read_cache(folder: Path, n_images: int) -> tuple[torch.Tensor, int, dict]:
    """``(x [n * per_image, d_in] float32, per_image, meta)`` of the images :func:`chosen` picks
    (``n = min(n_images, stored)``); ``meta["positions"]`` holds their cache positions. The evaluation
    names an image by its rank among the picked ones (0..n-1): its bootstrap key and probe fold."""
    cache = ActivationCache.open(folder)
    meta = dict(cache.meta)
    stored = stored_images(meta)
    per_image = meta["rows"] // stored
    if per_image * stored != meta["rows"]:
        raise SystemExit(f"{folder}: images with different numbers of tokens")
    positions = chosen(stored, n_images)
    need = (int(positions[-1]) + 1) * per_image
    parts, have = [], 0
    for i in range(len(meta["shards"])):
        parts.append(cache.read_shard(i).float())
        have += parts[-1].shape[0]
        if have >= need:
            break
    meta["positions"] = positions
    return take_images(torch.cat(parts), per_image, positions), per_image, meta


def suite_batches(sae, x: torch.Tensor, per_image: int, name: str, replicates: int, labels=None, emb=None,
                  k: int | None = None, images_per_batch: int = 64):
    """The :class:`SuiteBatch` es an audit would give the suites for this set (whole images per batch)."""
    n_images = x.shape[0] // per_image
    boot = Bootstrap.for_set(replicates, 0, name)
    with torch.no_grad():
        for s in range(0, n_images, images_per_batch):
            e = min(n_images, s + images_per_batch)
            xb = x[s * per_image: e * per_image]
            codes = sae.encode(xb, k=k)
            x_hat = sae.decode(codes)
            images = torch.arange(s, e)
            lab = labels[s:e] if labels is not None else torch.full((e - s,), -1, dtype=torch.long)
            yield SuiteBatch(xb, codes, x_hat, images.repeat_interleave(per_image), lab.repeat_interleave(per_image),
                             images=images, image_labels=lab, embeddings=emb[s:e] if emb is not None else None,
                             bootstrap=boot)


def ms_chance_permutation(n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(12345))


def evaluate_sae(sae, id_x, per_image, id_name, labels, emb, ood_sets: dict, replicates: int,
                 k_curve_images: int) -> dict:
    """Every measurement of one SAE (see the module docstring); JSON-ready."""
    cfg = sae.config
    d_sae, d_in = cfg.d_sae, cfg.d_in
    ms_acc = MonosemanticityAccumulator(d_sae, emb.shape[1], judge="audited model (pooled)")
    chance_acc = MonosemanticityAccumulator(d_sae, emb.shape[1], replicates=False)
    probe_acc = ProbingAccumulator(d_sae, cfg.k)
    cov_id = coverage.CoverageAccumulator(d_sae, d_in, cfg.k)
    ood_id = ood.OODAccumulator(d_sae, d_in)
    perm = ms_chance_permutation(emb.shape[0])
    emb_shuffled = emb[perm]
    for b in suite_batches(sae, id_x, per_image, id_name, replicates, labels, emb):
        ms_acc.accumulate(b)
        probe_acc.accumulate(b)
        cov_id.accumulate(b)
        ood_id.accumulate(b)
        lo, hi = int(b.images[0]), int(b.images[-1]) + 1
        chance_acc.accumulate(SuiteBatch(b.x, b.codes, b.x_hat, b.image_index, b.labels, images=b.images,
                                         image_labels=b.image_labels, embeddings=emb_shuffled[lo:hi]))
    ms = ms_acc.scores()
    ms_reps = ms_acc.replicate_scores()  # [R, d_sae]
    cov = cov_id.finish()
    cov_reps = cov_id.replicate_metrics()
    probe = probe_acc.finish()
    own = ood_id.image_scores(ood_id)
    out = {
        "name": None, "k": cfg.k, "variant": cfg.variant, "lambda_off": cfg.lambda_off,
        "lambda_ratio": cfg.lambda_ratio, "init_seed": cfg.init_seed, "d_sae": d_sae,
        "id": {
            "n_images": int(id_x.shape[0] // per_image), "fvu": cov["fvu"], "l0_mean": cov.get("l0_mean"),
            "effective_units_mean": cov.get("effective_units_mean"),
            "dead_fraction": cov.get("dead_fraction"), "dense_fraction": cov.get("dense_fraction"),
            "coverage_intervals": cov.get("intervals"),
            "fvu_replicates": cov_reps["fvu"].tolist(),
            "frequencies": [round(float(f), 7) for f in cov_id.frequencies()],
            "ms_per_latent": [None if not math.isfinite(v) else round(v, 5) for v in ms.tolist()],
            "ms_mean": float(ms[torch.isfinite(ms)].mean()) if torch.isfinite(ms).any() else None,
            "ms_n_scored": int(torch.isfinite(ms).sum()),
            "ms_mean_replicates": replicate_summaries(ms_reps)["ms_mean"].tolist(),
            "ms_chance_per_latent": [None if not math.isfinite(v) else round(v, 5)
                                     for v in chance_acc.scores().tolist()],
            "probe": probe,
            "probe_hits": {"images": probe_acc.test_images.tolist(), "hits": probe_acc.test_hits.astype(int).tolist()}
            if getattr(probe_acc, "test_hits", None) is not None else None,
            "image_fvu": own["fvu"].tolist(), "image_effective_units": own["effective_units"].tolist(),
            "image_l0": own["l0"].tolist(),
        },
    }
    out["id"]["ms_chance_mean"] = float(np.nanmean([v if v is not None else np.nan
                                                    for v in out["id"]["ms_chance_per_latent"]]))
    # The replicate MS per latent is [R, d_sae]: keep it in a compact array file beside the JSON instead.
    out["_ms_reps"] = ms_reps
    kr = KRobustnessAccumulator(sae, budgets_for(cfg.k, d_sae))
    kc = chosen(id_x.shape[0] // per_image, k_curve_images)
    for b in suite_batches(sae, take_images(id_x, per_image, kc), per_image, id_name, 0, labels[kc], emb[kc]):
        kr.accumulate(b)
    out["k_curve"] = kr.finish()
    out["ood"] = {}
    w_id = Bootstrap.for_set(replicates, 0, id_name).weights(own["images"])
    for label, (x_o, per_o, name_o) in ood_sets.items():
        cov_o = coverage.CoverageAccumulator(d_sae, d_in, cfg.k)
        ood_o = ood.OODAccumulator(d_sae, d_in)
        for b in suite_batches(sae, x_o, per_o, name_o, replicates):
            cov_o.accumulate(b)
            ood_o.accumulate(b)
        pair = ood.compare(ood_id, ood_o)
        cpair = coverage.compare(cov_id, cov_o)
        s_o = ood_o.image_scores(ood_id)
        w_o = Bootstrap.for_set(replicates, 0, name_o).weights(s_o["images"])
        reps = {s: metrics.weighted_auroc(own[s], s_o[s], w_id, w_o).tolist() for s in ood.SCORES}
        f_id = torch.tensor(cpair_freq(cov_id), dtype=torch.float64)
        f_o = torch.tensor(cpair_freq(cov_o), dtype=torch.float64)
        eps = 1.0 / max(1, min(cov_id.n, cov_o.n))
        shift = ((f_o + eps) / (f_id + eps)).log10().abs()
        out["ood"][label] = {
            "n_images": int(x_o.shape[0] // per_o),
            **{key: pair[key] for key in pair if key.startswith("auroc_") or key.endswith("_mean")},
            "auroc_intervals": pair.get("intervals"),
            "auroc_replicates": reps,
            "fvu": cov_o.finish()["fvu"],
            "n_ood_only": cpair["n_ood_only"], "n_id_only": cpair["n_id_only"],
            "js_divergence": cpair["js_divergence"], "fvu_gap": cpair["fvu_gap"],
            "n_shifted_10x": int(((shift > 1) & ((f_id > 0) | (f_o > 0))).sum()),
            "coverage_intervals": cpair.get("intervals"),
            "coverage_replicates": {m: v.tolist() for m, v in coverage.compare_replicates(cov_id, cov_o).items()
                                    if m in ("n_ood_only", "js_divergence", "fvu_gap")},
        }
    return out


def cpair_freq(acc) -> list[float]:
    return acc.frequencies().tolist()


def judge(args, n_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled-output judge embeddings ``[n, d]`` and labels ``[n]`` of the ID images, in cache order."""
    from sae_audit.data import iter_batches, open_image_set
    from sae_audit.models import load_vision_model

    path = Path(args.judge_cache)
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        if saved["emb"].shape[0] >= n_images:
            return saved["emb"][:n_images], saved["labels"][:n_images]
    meta = ActivationCache.open(args.id_cache).meta
    data = meta["data"]
    image_set = open_image_set(data["spec"], data["max_images"], data["seed"])
    vm = load_vision_model(args.model, device="cpu", image_size=meta["image_size"])
    embs, labels, seen = [], [], 0
    with torch.no_grad():
        for batch in iter_batches(image_set, vm.preprocess, 64, strict=True):
            embs.append(vm.pooled(batch.pixel_values).float().cpu())
            labels.append(batch.labels)
            seen += len(batch.labels)
            if seen >= n_images:
                break
    emb, lab = torch.cat(embs)[:n_images], torch.cat(labels)[:n_images].long()
    tmp = path.with_suffix(".tmp")
    torch.save({"emb": emb, "labels": lab}, tmp)
    tmp.replace(path)
    return emb, lab


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--saes", required=True, help="folder of one seed's SAEs (SAES/seed<S>)")
    p.add_argument("--caches", required=True,
                   help="folder holding the activation caches (cache-test and cache-<ood set> by default)")
    p.add_argument("--id-cache", default="test", help="the ID cache: CACHES/cache-<this> (held-out ID images)")
    p.add_argument("--ood", nargs="*", default=[f"{label}={suffix}" for suffix, label in OOD_SETS.items()],
                   help="LABEL=SUFFIX per OOD set, read from CACHES/cache-<SUFFIX> (default: the Fashion-MNIST "
                        "experiment's digits, clip art and two corruptions)")
    p.add_argument("--model", required=True, help="the model the caches were written from (the MS judge)")
    p.add_argument("--judge-cache", required=True, help="file keeping the judge embeddings and labels")
    p.add_argument("--out", required=True)
    p.add_argument("--id-images", type=int, default=1000)
    p.add_argument("--ood-images", type=int, default=500)
    p.add_argument("--k-curve-images", type=int, default=250)
    p.add_argument("--replicates", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--judge-only", action="store_true", help="compute the judge embeddings and stop")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    caches = Path(args.caches)
    args.id_cache = caches / f"cache-{args.id_cache}"
    id_x, per_image, id_meta = read_cache(args.id_cache, args.id_images)
    emb, labels = judge(args, stored_images(id_meta))  # every stored image, then the evaluated ones
    emb, labels = emb[id_meta["positions"]], labels[id_meta["positions"]]
    if args.judge_only:
        return
    id_name = id_meta["data"]["spec"]
    ood_sets = {}
    for item in args.ood:
        label, _, suffix = item.partition("=")
        folder = caches / f"cache-{suffix}"
        if not (folder / "meta.json").is_file() or not ActivationCache.open(folder).meta.get("complete"):
            raise SystemExit(f"evaluate: the OOD cache {folder} is missing or incomplete (run cache.sh)")
        x_o, per_o, meta_o = read_cache(folder, args.ood_images)
        ood_sets[label] = (x_o, per_o, meta_o["data"]["spec"])
    saes = Path(args.saes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for folder in sorted(f for f in saes.iterdir() if (f / "config.json").is_file()):
        target = out / f"{folder.name}.json"
        if target.is_file():
            continue
        t0 = time.perf_counter()
        sae = load_sae(folder).eval()
        res = evaluate_sae(sae, id_x, per_image, id_name, labels, emb, ood_sets, args.replicates,
                           args.k_curve_images)
        res["name"] = folder.name
        ms_reps = res.pop("_ms_reps")
        torch.save({"ms_replicates": ms_reps.float()}, out / f"{folder.name}.ms.pt")
        res["seconds"] = round(time.perf_counter() - t0, 1)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(res) + "\n")
        tmp.replace(target)
        aur = {k: round(v["auroc_rarity"] or float("nan"), 3) for k, v in res["ood"].items()}
        print(f"{saes.name}/{folder.name}: FVU {res['id']['fvu']:.4f} MS {res['id']['ms_mean']:.4f} "
              f"(chance {res['id']['ms_chance_mean']:.4f}) AUROC rarity {aur} {res['seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
