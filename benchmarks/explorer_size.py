"""Size and render time of the latent explorer (latents.html), as is and widened to many latents.

Renders ``latents.html`` from a results file (default: the committed demo),
then from the same file with every SAE widened to ``--latents`` latents, all
alive on every set (the worst case: every latent is a row), and prints, as
JSON, the file sizes, the number of pictures and the render time. Pictures
stay those the pictures suite kept, so only the numbers grow.

    PYTHONPATH=. python benchmarks/explorer_size.py
    PYTHONPATH=. python benchmarks/explorer_size.py some/results.json --latents 65536 131072
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np


def widen(results: dict, d_sae: int, seed: int = 0) -> dict:
    """``results`` with every SAE widened to ``d_sae`` latents, all alive on every set."""
    rng = np.random.default_rng(seed)
    big = copy.deepcopy(results)
    for s in big["saes"]:
        s["config"]["d_sae"] = d_sae
        for stats in s["datasets"].values():
            stats["frequencies"] = (10 ** rng.uniform(-5, -0.5, d_sae)).round(8).tolist()
            stats["mean_activation"] = rng.uniform(0, 3, d_sae).round(4).tolist()
        for suite in (s.get("suites") or {}).values():
            for stats in suite.get("datasets", {}).values():
                if "per_latent" in stats:
                    stats["per_latent"] = rng.uniform(0, 1, d_sae).round(4).tolist()
    return big


def measure(results: dict) -> dict:
    from sae_audit.report.explorer import render_explorer

    t = time.perf_counter()
    html = render_explorer(results).encode("utf-8")
    return {"latents_per_sae": [s["config"]["d_sae"] for s in results["saes"]],
            "bytes": len(html), "mib": round(len(html) / 2**20, 2), "pictures": html.count(b"<img "),
            "rows": html.count(b"<tr><th scope=row>"), "seconds": round(time.perf_counter() - t, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="?", default="reports/demo/results.json")
    p.add_argument("--latents", type=int, nargs="*", default=[65_536])
    args = p.parse_args()

    from sae_audit.results.document import load_results

    results = load_results(args.results)
    out = {"results": args.results, "as_is": measure(results)}
    out["widened"] = [measure(widen(results, n)) for n in args.latents]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
