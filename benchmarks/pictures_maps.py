"""Memory and time of the pictures suite's per-patch maps (a benchmark, not a test).

Streams random sparse codes (``--tokens`` per image, Top-``k`` of ``--d-sae``
latents) through :class:`sae_audit.suites.pictures.PicturesAccumulator` and
prints, as JSON: the heap's bytes (``d_sae * n_top * (13 + T)`` by design), the
growth of the resident set size, and the seconds per batch of ``--batch``
images, against the same stream with one token per image (no maps).

    PYTHONPATH=. python benchmarks/pictures_maps.py                       # the demo's shape
    PYTHONPATH=. python benchmarks/pictures_maps.py --d-sae 65536 --tokens 196 --k 32
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-sae", type=int, default=1536)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--n-top", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import torch

    from sae_audit.sae.codes import SparseCodes
    from sae_audit.suites.base import SuiteBatch
    from sae_audit.suites.pictures import PicturesAccumulator

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)

    def stream(tokens: int) -> dict:
        rss0 = _rss_mib()
        acc = PicturesAccumulator(args.d_sae, args.n_top)
        spent = 0.0
        for b in range(args.batches):
            n = args.batch * tokens
            # Skewed latent popularity, as real SAEs have (a repeated index in a row is harmless here).
            idx = (torch.rand(n, args.k, generator=g) ** 3 * args.d_sae).long()
            vals = torch.rand(n, args.k, generator=g)
            images = torch.arange(b * args.batch, (b + 1) * args.batch)
            codes = SparseCodes(idx, vals, args.d_sae)
            batch = SuiteBatch(torch.empty(n, 0), codes, torch.empty(n, 0), images.repeat_interleave(tokens),
                               torch.full((n,), -1), images=images, image_labels=torch.full((args.batch,), -1))
            _ = batch.image_codes  # pooled once per batch by the audit for every suite: not the suite's cost
            t = time.perf_counter()
            acc.accumulate(batch)
            spent += time.perf_counter() - t
        return {"tokens": tokens, "heap_mib": round(acc.heap.nbytes() / 2**20, 2),
                "rss_growth_mib": round(_rss_mib() - rss0, 1),
                "seconds_per_batch": round(spent / args.batches, 4)}

    out = {"d_sae": args.d_sae, "k": args.k, "n_top": args.n_top, "batch_images": args.batch,
           "with_maps": stream(args.tokens), "one_token": stream(1)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
