"""Evaluate the paper-experiment SAEs on held-out real activations and write reports/paper/.

For every SAE in --saes (written by experiments/paper/train.py), on the test
cache (patch tokens of held-out Fashion-MNIST test images, never trained on):

- FVU, mean L0, mean effective units ``(||z||_1/||z||_2)^2``, dead and dense
  latent fractions (SPEC section 4), at the training k;
- the k-robustness curve: FVU with the inference budget swapped to
  k' in {k/4, k/2, k, 2k, 4k} (same weights, SPEC section 1);
- the monosemanticity score (MS) of Pach et al. 2025 (arXiv 2504.02821, SPEC
  section 4) per latent, over images: a latent's activation on an image is its
  largest activation over the image's patches, min-max scaled over the set;
  image embeddings come from the audited model's pooled output (the default
  judge); linear-time formula; mean and median over latents alive on the set;
- small-budget linear probing: keep each image's m largest (patch-max-pooled)
  latents, m in {1, 2, 4, 8}, fit a multinomial logistic regression on 70% of
  the images and report accuracy on the other 30%.

Writes results.json (every number) and report.md (tables and the claim checks).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from sae_audit import metrics
from sae_audit.sae import load_sae
from sae_audit.train.cache import ActivationCache

PROBE_M = (1, 2, 4, 8)


def budgets(k: int) -> list[int]:
    return sorted({max(1, k // 4), max(1, k // 2), k, 2 * k, 4 * k})


@torch.no_grad()
def reconstruct(sae, x: torch.Tensor, k: int, batch: int = 8192) -> tuple[torch.Tensor, list]:
    outs, codes = [], []
    for s in range(0, x.shape[0], batch):
        c = sae.encode(x[s: s + batch], k=k)
        outs.append(sae.decode(c))
        codes.append(c)
    return torch.cat(outs), codes


@torch.no_grad()
def image_activations(codes: list, d_sae: int, per_image: int) -> torch.Tensor:
    """``[n_images, d_sae]``: each latent's largest activation over an image's patch tokens."""
    out = []
    for c in codes:
        dense = c.to_dense()
        out.append(dense.view(-1, per_image, d_sae).amax(dim=1))
    return torch.cat(out)


def monosemanticity(a: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """MS per latent (NaN where the latent never varies): Pach et al. 2025, linear time.

    Args:
        a: ``[N, d_sae]`` activations per image; emb: ``[N, d]`` unit-norm judge embeddings.
    """
    a = a.double()
    lo, hi = a.min(dim=0).values, a.max(dim=0).values
    span = hi - lo
    scaled = (a - lo) / torch.where(span > 0, span, torch.ones_like(span))
    u = scaled.sum(dim=0)
    v = scaled.pow(2).sum(dim=0)
    w = scaled.T @ emb.double()
    num = (w.pow(2).sum(dim=1) - v) / 2
    den = (u.pow(2) - v) / 2
    ms = num / den
    ms[(span <= 0) | (den <= 0)] = float("nan")
    return ms


def probe(a: torch.Tensor, labels: np.ndarray, seed: int = 0) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    order = rng.permutation(a.shape[0])
    n_train = int(0.7 * len(order))
    tr, te = order[:n_train], order[n_train:]
    out = {}
    for m in PROBE_M:
        vals, idx = a.topk(m, dim=1)
        feats = torch.zeros_like(a).scatter_(1, idx, vals).numpy()
        clf = LogisticRegression(max_iter=1000)
        clf.fit(feats[tr], labels[tr])
        out[str(m)] = float((clf.predict(feats[te]) == labels[te]).mean())
    return out


def judge_embeddings(args, n_images: int) -> tuple[torch.Tensor, np.ndarray]:
    from sae_audit.data import iter_batches, open_image_set
    from sae_audit.models import load_vision_model

    image_set = open_image_set(args.data, args.max_images, args.seed)
    if len(image_set) != n_images:
        raise SystemExit(f"--data/--max-images give {len(image_set)} images, the test cache holds {n_images}")
    vm = load_vision_model(args.model, device="cpu", image_size=args.image_size)
    embs, labels = [], []
    with torch.no_grad():
        for batch in iter_batches(image_set, vm.preprocess, 64, strict=True):
            embs.append(torch.nn.functional.normalize(vm.pooled(batch.pixel_values).float(), dim=1))
            labels.append(batch.labels)
    return torch.cat(embs), torch.cat(labels).numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--saes", required=True)
    p.add_argument("--test-cache", required=True)
    p.add_argument("--model", required=True, help="the model the cache was written from (the MS judge)")
    p.add_argument("--data", default="fashion-mnist:test")
    p.add_argument("--max-images", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--eval-images", type=int, default=None,
                   help="evaluate on the first N images of the test cache only (default: all)")
    p.add_argument("--judge-cache", help="file to keep the judge embeddings and labels in between runs")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    t0 = time.perf_counter()

    cache = ActivationCache.open(args.test_cache)
    x = torch.cat([cache.read_shard(i) for i in range(len(cache.meta["shards"]))])
    n_images = int(cache.meta["images_total"])
    per_image = x.shape[0] // n_images
    assert per_image * n_images == x.shape[0], "every test image must give the same number of rows"
    if args.judge_cache and Path(args.judge_cache).is_file():
        saved = torch.load(args.judge_cache, weights_only=True)
        emb, labels = saved["emb"], saved["labels"].numpy()
    else:
        emb, labels = judge_embeddings(args, n_images)
        if args.judge_cache:
            torch.save({"emb": emb, "labels": torch.from_numpy(labels)}, args.judge_cache)
    if args.eval_images:
        n_images = min(n_images, args.eval_images)
        x, emb, labels = x[: n_images * per_image], emb[:n_images], labels[:n_images]

    saes_dir = Path(args.saes)
    training = json.loads((saes_dir / "training.json").read_text())
    rows = []
    for folder in sorted(p for p in saes_dir.iterdir() if (p / "config.json").is_file()):
        sae = load_sae(folder)
        cfg = sae.config
        curve = {}
        for kp in budgets(cfg.k):
            x_hat, codes = reconstruct(sae, x, kp)
            curve[kp] = metrics.fvu(x, x_hat)
            if kp == cfg.k:
                vals = torch.cat([c.values for c in codes])
                idx = torch.cat([c.indices for c in codes])
                fires = torch.zeros(cfg.d_sae).index_add_(0, idx[vals > 0], torch.ones(int((vals > 0).sum())))
                freq = fires / x.shape[0]
                acts = image_activations(codes, cfg.d_sae, per_image)
                ms = monosemanticity(acts, emb)
                alive_ms = ms[~torch.isnan(ms)]
                row = {
                    "name": folder.name, "k": cfg.k, "variant": cfg.variant, "lambda_off": cfg.lambda_off,
                    "lambda_ratio": cfg.lambda_ratio, "fvu": curve[kp],
                    "l0": float((vals > 0).sum(dim=1).float().mean()),
                    "effective_units": float(metrics.effective_units(vals).mean()),
                    "dead_fraction_test": float((freq == 0).float().mean()),
                    "dense_fraction_test": float((freq > 0.1).float().mean()),
                    "dead_fraction_training": training["saes"][folder.name]["dead_fraction_training"],
                    "ms_mean": float(alive_ms.mean()) if alive_ms.numel() else None,
                    "ms_median": float(alive_ms.median()) if alive_ms.numel() else None,
                    "ms_latents": int(alive_ms.numel()),
                    "probe_accuracy": probe(acts.float(), labels, args.seed),
                }
        row["k_curve"] = {str(kp): v for kp, v in curve.items()}
        row["k_curve_relative"] = {str(kp): v / curve[cfg.k] for kp, v in curve.items()}
        rows.append(row)
        print(f"{folder.name}: FVU {row['fvu']:.4f}, MS {row['ms_mean']:.4f}, probe m=1 "
              f"{row['probe_accuracy']['1']:.3f}, curve {[round(v, 3) for v in curve.values()]}", flush=True)

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = None
    results = {
        "schema_version": 1,
        "experiment": "arXiv 2606.27321 regularisers on real DINOv2 ViT-S/14 activations",
        "model": cache.meta["model"], "hook_point": cache.meta["hook_point"], "tokens": cache.meta["tokens"],
        "image_size": cache.meta["image_size"], "test_data": cache.meta["data"], "test_vectors": x.shape[0],
        "test_images": n_images, "training": training, "saes": rows, "git_commit": commit,
        "torch": torch.__version__, "python": platform.python_version(),
        "evaluate_seconds": round(time.perf_counter() - t0, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(out / "results.json")
    (out / "report.md.tmp").write_text(render(results))
    (out / "report.md.tmp").replace(out / "report.md")
    print(f"wrote {out / 'results.json'} and {out / 'report.md'}")


def _f(v, nd=4):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def render(r: dict) -> str:
    t = r["training"]["train"]
    lines = [
        "# Paper experiment: Top-k SAE regularisers on real DINOv2 activations",
        "",
        f"Model `{r['model']}` ({r['image_size']} px), hook point `{r['hook_point']}:{r['tokens']}`. "
        f"Trained on {t['max_vectors']:,} patch activations of Fashion-MNIST training images "
        f"(batch {t['batch_size']}, Adam lr {t['lr']:g}, {r['training']['seconds']:.0f} s for all SAEs in one pass); "
        f"evaluated on {r['test_vectors']:,} patch activations of {r['test_images']} held-out Fashion-MNIST "
        "test images. Generated by `experiments/paper/evaluate.py`; every number is in `results.json`.",
        "",
        "## Reconstruction, sparsity and monosemanticity at the training k",
        "",
        "| SAE | k | variant | lambda | FVU | L0 | eff. units | dead (test) | dense (test) | MS mean | MS median | probe m=1 | m=2 | m=4 | m=8 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in r["saes"]:
        lam = s["lambda_off"] or s["lambda_ratio"]
        pa = s["probe_accuracy"]
        lines.append(
            f"| `{s['name']}` | {s['k']} | {s['variant']} | {lam:g} | {_f(s['fvu'])} | {s['l0']:.2f} | "
            f"{s['effective_units']:.2f} | {s['dead_fraction_test']:.1%} | {s['dense_fraction_test']:.1%} | "
            f"{_f(s['ms_mean'])} | {_f(s['ms_median'])} | {pa['1']:.3f} | {pa['2']:.3f} | {pa['4']:.3f} | {pa['8']:.3f} |"
        )
    lines += ["", "## k-robustness: FVU with the inference budget k' (relative to FVU at the training k)", "",
              "| SAE | k'=k/4 | k/2 | k | 2k | 4k |", "|---|---|---|---|---|---|"]
    for s in r["saes"]:
        cells = [f"{v:.4f} ({s['k_curve_relative'][kp]:.2f}x)" for kp, v in s["k_curve"].items()]
        lines.append(f"| `{s['name']}` | " + " | ".join(cells) + " |")
    lines += ["", "## Claim checks (computed)", ""]
    for k in sorted({s["k"] for s in r["saes"]}):
        base = next(s for s in r["saes"] if s["k"] == k and s["variant"] == "fixed-k")
        for s in (s for s in r["saes"] if s["k"] == k and s["variant"] != "fixed-k"):
            lam = s["lambda_off"] or s["lambda_ratio"]
            low = [s["k_curve_relative"][kp] for kp in s["k_curve"] if int(kp) < k]
            blow = [base["k_curve_relative"][kp] for kp in base["k_curve"] if int(kp) < k]
            high = [s["k_curve_relative"][kp] for kp in s["k_curve"] if int(kp) > k]
            bhigh = [base["k_curve_relative"][kp] for kp in base["k_curve"] if int(kp) > k]
            lines.append(
                f"- k={k}, {s['variant']} lambda {lam:g} vs fixed-k: "
                f"delta FVU {s['fvu'] - base['fvu']:+.4f}, delta MS mean {s['ms_mean'] - base['ms_mean']:+.4f}, "
                f"mean relative FVU for k'<k {np.mean(low):.2f}x (fixed-k {np.mean(blow):.2f}x), "
                f"for k'>k {np.mean(high):.2f}x (fixed-k {np.mean(bhigh):.2f}x), "
                f"probe m=1 {_probe(s, 1) - _probe(base, 1):+.3f}, m=2 {_probe(s, 2) - _probe(base, 2):+.3f}"
            )
    lines.append("")
    return "\n".join(lines)


def _probe(s, m):
    return s["probe_accuracy"][str(m)]


if __name__ == "__main__":
    main()
