"""Peak memory of the audit suites versus the number of images (a benchmark, not a test).

Streams random activations (``T`` tokens per image, ``d_in`` wide) through a
random Top-k SAE into the coverage suite and every registered suite, with
random judge embeddings and labels, as ``run_audit`` does, then finishes them
and runs the ID/OOD comparisons (the OOD set is a tenth of the size). Each
size runs in a fresh process; the peak resident set size (``ru_maxrss``) is
read at the end.

Bound (issue 4): peak RSS at 20,000 images may exceed the one at 2,000 by no
more than the sparse codes' size (``N_tokens * k`` int64 indices + float32
values of the larger run) plus 10 %.

    PYTHONPATH=. python benchmarks/suite_memory.py            # 2,000 and 20,000 images
    PYTHONPATH=. python benchmarks/suite_memory.py --images 500 5000 --tokens 8
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _rss_mib() -> float:
    """Current resident set size (MiB), from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def child(n_images: int, args) -> dict:
    import torch

    from sae_audit.sae import SAEConfig, TopKSAE
    from sae_audit.suites import PairContext, SuiteContext, available_suites

    SUITES = available_suites()
    from sae_audit.suites.base import SuiteBatch
    from sae_audit.suites.coverage import CoverageAccumulator, compare

    if not args.no_mallopt:
        from sae_audit.memory import limit_heap_fragmentation

        limit_heap_fragmentation()  # as `sae-audit run` does
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    sae = TopKSAE(SAEConfig(d_in=args.d_in, d_sae=args.d_sae, k=args.k), seed=0)
    ctx = SuiteContext(sae, "random judge", args.d_e, 0)
    g = torch.Generator().manual_seed(1)

    spent = {name: 0.0 for name in ["coverage", *SUITES]}

    def timed(name, fn, *a):
        t = time.perf_counter()
        out = fn(*a)
        spent[name] += time.perf_counter() - t
        return out

    def run_set(n: int, offset: float):
        cov = CoverageAccumulator(sae.d_sae, sae.d_in, sae.k)
        accs = {name: info.factory(ctx) for name, info in SUITES.items()}
        for start in range(0, n, args.batch):
            b = min(args.batch, n - start)
            images = torch.arange(start, start + b)
            labels = images % 10
            x = torch.randn(b * args.tokens, args.d_in, generator=g) + offset
            with torch.no_grad():
                codes = sae.encode(x)
                x_hat = sae.decode(codes)
            batch = SuiteBatch(x, codes, x_hat, images.repeat_interleave(args.tokens),
                               labels.repeat_interleave(args.tokens), images=images, image_labels=labels,
                               embeddings=torch.randn(b, args.d_e, generator=g))
            timed("coverage", cov.accumulate, batch)
            for name, acc in accs.items():
                timed(name, acc.accumulate, batch)
        return cov, accs

    checkpoints = {}

    def mark(what: str) -> None:
        checkpoints[what] = round(_rss_mib(), 1)

    t0 = time.perf_counter()
    mark("start")
    cov_id, id_accs = run_set(n_images, 0.0)
    mark("ID streamed")
    cov_ood, ood_accs = run_set(max(2, n_images // 10), 0.5)
    mark("OOD streamed")
    stats_id, stats_ood = cov_id.finish(), cov_ood.finish()
    pair = compare(stats_id, stats_ood)
    for name, info in SUITES.items():
        timed(name, id_accs[name].finish)
        timed(name, ood_accs[name].finish)
        if info.compare is not None:
            timed(name, info.compare, id_accs[name], ood_accs[name], PairContext(None, None, pair))
        mark(f"{name} finished")
    seconds = time.perf_counter() - t0
    return {
        "images": n_images,
        "tokens": n_images * args.tokens,
        "codes_bytes": n_images * args.tokens * args.k * (8 + 4),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "seconds": round(seconds, 1),
        "suite_seconds": {k: round(v, 1) for k, v in spent.items()},
        "rss_mib": checkpoints,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, nargs=2, default=[2000, 20000])
    p.add_argument("--tokens", type=int, default=16, help="tokens per image (default 16)")
    p.add_argument("--d-in", type=int, default=384)
    p.add_argument("--d-sae", type=int, default=1536)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--d-e", type=int, default=384, help="judge embedding width")
    p.add_argument("--batch", type=int, default=64, help="images per batch")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-mallopt", action="store_true",
                   help="leave glibc's dynamic mmap threshold on (shows the heap fragmentation it causes)")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args)))
        return 0
    rows = []
    for n in args.images:
        cmd = [sys.executable, __file__, "--child", str(n)] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
            if k not in ("images", "child", "no_mallopt")] + (["--no-mallopt"] if args.no_mallopt else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{r['images']:>7,} images ({r['tokens']:,} tokens): peak RSS {r['peak_rss_bytes'] / 2**20:8.1f} MiB, "
              f"sparse codes {r['codes_bytes'] / 2**20:7.1f} MiB, {r['seconds']} s", flush=True)
        print("    current RSS (MiB) at: " + ", ".join(f"{k} {v}" for k, v in r["rss_mib"].items()), flush=True)
        print("    seconds per suite (accumulate + finish + compare): "
              + ", ".join(f"{k} {v}" for k, v in r["suite_seconds"].items()), flush=True)
    small, large = rows
    growth = large["peak_rss_bytes"] - small["peak_rss_bytes"]
    allowed = 1.10 * large["codes_bytes"]
    print(f"growth {growth / 2**20:.1f} MiB; allowed: sparse codes of the larger run + 10 % = {allowed / 2**20:.1f} MiB"
          f" -> {'OK' if growth <= allowed else 'EXCEEDED'}")
    return 0 if growth <= allowed else 1


if __name__ == "__main__":
    sys.exit(main())
