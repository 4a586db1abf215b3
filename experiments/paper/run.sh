#!/usr/bin/env bash
# The paper experiment (arXiv 2606.27321) on real data, end to end; writes reports/paper/.
# Run from the repository root after scripts/setup.sh. Each step resumes if interrupted
# (rerun the script); the activation caches make reruns of the later steps cheap.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
SA="$PY -m sae_audit.cli"
MODEL=${MODEL:-.cache/models/dinov2-small-imgfocus}
W=.cache/paper
COMMON=(--hook block.8 --tokens patch --image-size 112 --batch-size 64 --seed 0 --device cpu -q)

# 1. Activations: 5,000 training images (320,000 patch vectors) and 1,000 test images (64,000).
[ -f $W/cache-train/meta.json ] && R=--resume || R=
$SA cache "$MODEL" "${COMMON[@]}" --data fashion-mnist:train --max-images 5000 --out $W/cache-train $R
[ -f $W/cache-test/meta.json ] && R=--resume || R=
$SA cache "$MODEL" "${COMMON[@]}" --data fashion-mnist:test --max-images 1000 --out $W/cache-test $R

# 2. Ten SAEs from one pass: k in {8, 32} x {fixed-k, off-support L1 at 1e-4 and 1e-3,
#    L1/L2 ratio at 3e-3 and 3e-2}; d_sae 1536; 150,000 training vectors.
if [ ! -f $W/saes/training.json ]; then
  [ -f $W/saes/.checkpoint/state.pt ] && R=--resume || R=
  $PY experiments/paper/train.py --cache $W/cache-train --out $W/saes $R
fi

# 3. Held-out evaluation (first 500 test images = 32,000 patch vectors) and the report.
$PY experiments/paper/evaluate.py --saes $W/saes --test-cache $W/cache-test --model "$MODEL" \
  --judge-cache $W/judge.pt --eval-images 500 --out reports/paper
