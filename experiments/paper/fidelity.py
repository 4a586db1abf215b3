"""Downstream fidelity of every SAE of the paper experiment, on ID and OOD images (SPEC section 5).

For each image set (the ID set first), the images are decoded again in the
order their activation cache holds them (the cache's own spec, subsample and
seed; an image the cache skipped is skipped here too), so image ids are cache
positions, as in experiments/paper/evaluate.py. Per batch, ONE forward of the
model gives the block output ``h`` and the unmodified output ``y``; then, for
every SAE of every seed at once, its reconstruction of the hooked tokens is
spliced into ``h`` and the model's own later blocks run from there
(:func:`sae_audit.audit.splicing.spliced_outputs`, as an audit does), with the
mean ablation (the ID set's mean activation) beside it. The fidelity suite's
accumulator (:class:`sae_audit.suites.fidelity.FidelityAccumulator`) is fed
exactly as an audit feeds it, with the set's Poisson bootstrap keyed by image
id, so every SAE sees the same resamples and differences are paired.

Writes OUT/<seed folder>/<sae name>.fidelity.json per SAE: fidelity, cosine
and the ablation's on the ID set, and per OOD set its fidelity, the gap and the
output-distance AUROC, with bootstrap replicates. A rerun skips finished SAEs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sae_audit.audit.splicing import replacement, spliced_outputs
from sae_audit.audit.stream import AuditedSAE, sae_hook_point
from sae_audit.data import iter_batches, open_image_set
from sae_audit.models import load_vision_model, select_tokens
from sae_audit.models.splice import forward_with_outputs
from sae_audit.sae import load_sae
from sae_audit.suites import fidelity
from sae_audit.suites.base import SuiteBatch
from sae_audit.suites.bootstrap import Bootstrap
from sae_audit.train.cache import ActivationCache

from evaluate import chosen, read_cache, stored_images, take_images  # noqa: E402  (the sibling script: the same images evaluate.py reads)


def id_mean(folder: Path, n_images: int) -> torch.Tensor:
    """``[d_in]`` float32 mean of the hooked tokens over the evaluated cached images (float64 sum)."""
    x, _, _ = read_cache(folder, n_images)
    return x.double().mean(dim=0).float()


@torch.no_grad()
def run_set(vm, saes: list, cache: Path, n_images: int, mean: torch.Tensor, replicates: int,
            batch_size: int, group: int) -> list[fidelity.FidelityAccumulator]:
    """One :class:`FidelityAccumulator` per SAE, fed with the images of ``cache`` that evaluate.py evaluates
    (:func:`evaluate.chosen`; image id = rank among them)."""
    meta = ActivationCache.open(cache).meta
    data = meta["data"]  # the set reopened from the cache's own record of it
    image_set, name = open_image_set(data["spec"], data["max_images"], data["seed"]), data["spec"]
    boot = Bootstrap.for_set(replicates, 0, name)
    accs = [fidelity.FidelityAccumulator() for _ in saes]
    hp = sae_hook_point(saes[0])
    tokens = hp.tokens
    rank = {int(p): r for r, p in enumerate(chosen(stored_images(meta), n_images))}  # cache position -> image id
    first = True
    seen = 0  # readable images so far = the cache position of the batch's first image
    for batch in iter_batches(image_set, vm.preprocess, batch_size, strict=False):
        keep = [j for j in range(len(batch)) if seen + j in rank]
        images = torch.tensor([rank[seen + j] for j in keep], dtype=torch.long)
        seen += len(batch)
        if not keep:
            continue
        take = len(keep)
        pv = batch.pixel_values[keep]
        acts, base = forward_with_outputs(vm, pv, [hp])
        sel = select_tokens(acts[hp.name], tokens, vm.layout)
        flat = sel.reshape(-1, sel.shape[-1]).float()
        finite = torch.isfinite(flat).all(dim=1)
        if first:  # the images decoded here are the cached ones evaluate.py scored, in the same order
            cached, per_image, _ = read_cache(cache, n_images)
            want = take_images(cached, per_image, images)
            if want.shape != flat.shape or not torch.allclose(want, flat, atol=1e-3, rtol=1e-3):
                raise SystemExit(f"fidelity: the images of {name} decoded now are not those of {cache}")
        rows = flat[finite]
        row_image = images.repeat_interleave(sel.shape[1])[finite]
        for g in range(0, len(saes), group):
            members = saes[g: g + group]
            codes = [s.encode(rows) for s in members]
            x_hats = [s.decode(c) for s, c in zip(members, codes)]
            reps = [replacement(sel, finite, xh) for xh in x_hats]
            outs = spliced_outputs(vm, pv, acts, base, [AuditedSAE("", s, sae_hook_point(s), "") for s in members],
                                   reps, [mean] * len(members), check=first)
            for acc, c, xh, out in zip(accs[g: g + group], codes, x_hats, outs):
                acc.accumulate(SuiteBatch(rows, c, xh, row_image, torch.full_like(row_image, -1), images=images,
                                          image_labels=torch.full((take,), -1, dtype=torch.long), bootstrap=boot,
                                          outputs=out))
        first = False
    return accs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--saes", required=True, nargs="+", help="folders of one seed's SAEs each (SAES/seed<S>)")
    p.add_argument("--id-cache", required=True, help="activation cache of the ID images (cache-test)")
    p.add_argument("--ood-cache", nargs="*", default=[], help="LABEL=CACHE_FOLDER per OOD set")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="OUT/<seed folder>/<sae>.fidelity.json")
    p.add_argument("--id-images", type=int, default=1000)
    p.add_argument("--ood-images", type=int, default=500)
    p.add_argument("--replicates", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--group", type=int, default=11, help="SAEs spliced in one stacked forward")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    todo = []
    for folder in args.saes:
        for f in sorted(x for x in Path(folder).iterdir() if (x / "config.json").is_file()):
            target = out / Path(folder).name / f"{f.name}.fidelity.json"
            if not target.is_file():
                todo.append((f, target))
    if len({t for _, t in todo}) < len(todo):
        raise SystemExit("fidelity: two --saes folders have the same name (their SAEs would write the same files)")
    if not todo:
        print("fidelity: every SAE already done", flush=True)
        return
    t0 = time.perf_counter()
    saes = [load_sae(f).eval() for f, _ in todo]
    first = saes[0].config
    vm = load_vision_model(args.model, device="cpu", image_size=first.image_size)
    mean = id_mean(Path(args.id_cache), args.id_images)
    kw = dict(mean=mean, replicates=args.replicates, batch_size=args.batch_size, group=args.group)
    id_accs = run_set(vm, saes, Path(args.id_cache), args.id_images, **kw)
    print(f"fidelity: ID set done ({time.perf_counter() - t0:.0f} s)", flush=True)
    results = []
    for acc in id_accs:
        fin = acc.finish()
        reps = acc.replicate_metrics() or {}
        results.append({"id": {**fin, "replicates": {k: v.tolist() for k, v in reps.items()
                                                     if k in ("fidelity", "cosine")}}, "ood": {}})
    for spec in args.ood_cache:
        label, _, folder = spec.partition("=")
        accs = run_set(vm, saes, Path(folder), args.ood_images, **kw)
        for res, a, b in zip(results, id_accs, accs):
            pair = fidelity.compare(a, b)
            ra, rb = a.replicate_metrics(), b.replicate_metrics()
            res["ood"][label] = {**pair, "cosine_ood": b.finish().get("cosine"),
                                 "replicates": {"fidelity_ood": rb["fidelity"].tolist(),
                                                "fidelity_gap": (ra["fidelity"] - rb["fidelity"]).tolist()}}
        print(f"fidelity: {label} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    for (f, target), res in zip(todo, results):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps({"name": f.name, **res}) + "\n")
        tmp.replace(target)
    print(f"fidelity: {len(todo)} SAEs in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
