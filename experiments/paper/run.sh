#!/usr/bin/env bash
# The paper experiment (arXiv 2606.27321, SPEC section 6) on real data, end to end; writes reports/paper/.
# Run from the repository root after scripts/setup.sh. Every step resumes: rerun the script after an
# interruption and it continues (finished caches, seeds and SAE evaluations are skipped).
#
#   experiments/paper/run.sh            the full configuration: 3 seeds x 22 SAEs, STEPS=3000 optimiser steps
#   STEPS=350 ID_IMAGES=500 OOD_IMAGES=200 REPLICATES=100 experiments/paper/run.sh
#                                       what produced the committed reports/paper/ (see its README)
#
# Seeds train in parallel processes (one torch thread each); set JOBS=1 to run them one after another.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PY=${PY:-.venv/bin/python}
MODEL=${MODEL:-.cache/models/dinov2-small-imgfocus}
W=${W:-.cache/paper}
SEEDS=${SEEDS:-"0 1 2"}
STEPS=${STEPS:-3000}
ID_IMAGES=${ID_IMAGES:-1000}
OOD_IMAGES=${OOD_IMAGES:-500}
REPLICATES=${REPLICATES:-200}
JOBS=${JOBS:-3}
mkdir -p "$W"
start=$(date +%s)

# 1. Activations (block 8, patch tokens, 112 px): 5,000 Fashion-MNIST training images, 1,000 test
#    images, 500 each of digits, clip art and two corruptions of the test images.
W="$W" MODEL="$MODEL" OOD_IMAGES=500 experiments/paper/cache.sh
t_cache=$(date +%s)

# 2. Paired sweeps, one process per seed. A run stopped early (touch $W/saes/STOP) writes its SAEs at
#    the next checkpoint; the learning rate does not depend on STEPS, so a run of N steps is exactly the
#    first N steps of a longer one.
pids=()
for s in $SEEDS; do
  nice -n 5 $PY experiments/paper/train.py --cache $W/cache-train --heldout-cache $W/cache-test --out $W/saes \
    --seeds $s --steps "$STEPS" --eval-every 50 --checkpoint-every 50 --curve-images 64 > $W/train-seed$s.log 2>&1 &
  pids+=($!)
  if [ ${#pids[@]} -ge "$JOBS" ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p"; done
t_train=$(date +%s)

# 3. Evaluation of every SAE on held-out images with the audit suites' accumulators.
$PY experiments/paper/evaluate.py --saes $W/saes/seed0 --caches $W --model "$MODEL" \
  --judge-cache $W/judge-test.pt --out $W/eval/seed0 --id-images "$ID_IMAGES" --judge-only
pids=()
for s in $SEEDS; do
  nice -n 5 $PY experiments/paper/evaluate.py --saes $W/saes/seed$s --caches $W --model "$MODEL" \
    --judge-cache $W/judge-test.pt --out $W/eval/seed$s --id-images "$ID_IMAGES" --ood-images "$OOD_IMAGES" \
    --k-curve-images 128 --replicates "$REPLICATES" > $W/eval-seed$s.log 2>&1 &
  pids+=($!)
  if [ ${#pids[@]} -ge "$JOBS" ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p"; done
t_eval=$(date +%s)

# 4. Aggregation: results.json and plots (the verdicts in reports/paper/README.md are written from them).
cat > $W/compute.json <<JSON
{"this_invocation_seconds": {"cache": $((t_cache - start)), "train": $((t_train - t_cache)), "evaluate": $((t_eval - t_train))},
 "steps": $STEPS, "id_images": $ID_IMAGES, "ood_images": $OOD_IMAGES, "replicates": $REPLICATES, "seeds": "$SEEDS",
 "cpu": "$(nproc) cores", "note": "seconds of this invocation only (a resumed run skips finished work); per-seed training seconds are in results.json training"}
JSON
$PY experiments/paper/aggregate.py --eval $W/eval --saes $W/saes --out reports/paper --compute $W/compute.json
