#!/usr/bin/env bash
# The AuxK pilot behind the paper experiment's settings (reports/paper/README.md, "A live k=8 baseline"):
# the k=8 fixed-k SAE alone (seed 0) trained with four AuxK settings for 600 steps and three for 2,000
# steps, then its dead fraction and FVU on the first 500 held-out Fashion-MNIST test images.
# Needs the caches of experiments/paper/cache.sh. About 5 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
W=${W:-.cache/paper}
P=${P:-.cache/pilot}
mkdir -p "$P"
pids=()
for cfg in "a 4096 0.03125 600" "b 4096 0.25 600" "c 1024 0.03125 600" "d 1024 0.25 600" \
           "a2 4096 0.03125 2000" "e2 4096 0.125 2000" "b2 4096 0.25 2000"; do
  set -- $cfg
  $PY experiments/paper/train.py --cache $W/cache-train --heldout-cache $W/cache-test --out $P/$1 --seeds 0 --k 8 \
    --frontier --l1-off --l1-l2-ratio --steps $4 --eval-every 250 --checkpoint-every 250 --curve-images 64 \
    --dead-after $2 --aux-alpha $3 > $P/$1.log 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
$PY - "$W" "$P" <<'PY'
import sys
from pathlib import Path

import torch

sys.path.insert(0, "experiments/paper")
from evaluate import read_cache  # noqa: E402

from sae_audit import metrics  # noqa: E402
from sae_audit.sae import load_sae  # noqa: E402

w, p = Path(sys.argv[1]), Path(sys.argv[2])
x, _, _ = read_cache(w / "cache-test", 500)
print("| run | steps | dead_after | aux_alpha | dead on held-out | held-out FVU |\n|---|---|---|---|---|---|")
for run, (steps, after, alpha) in {"a": (600, 4096, "1/32"), "b": (600, 4096, "1/4"), "c": (600, 1024, "1/32"),
                                   "d": (600, 1024, "1/4"), "a2": (2000, 4096, "1/32"), "e2": (2000, 4096, "1/8"),
                                   "b2": (2000, 4096, "1/4")}.items():
    sae = load_sae(p / run / "seed0" / "k8-off0-ratio0").eval()
    with torch.no_grad():
        codes = sae.encode(x)
        x_hat = sae.decode(codes)
    dead = 1 - float((codes.to_dense() > 0).any(0).float().mean())
    print(f"| {run} | {steps} | {after} | {alpha} | {dead:.1%} | {float(metrics.fvu(x, x_hat)):.4f} |")
PY
