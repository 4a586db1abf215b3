#!/usr/bin/env bash
# The paper experiment (arXiv 2606.27321, SPEC section 6) on real data, end to end; writes reports/paper/.
# Run from the repository root after scripts/setup.sh. Every step resumes: rerun the script after an
# interruption and it continues (finished caches, seeds, evaluations and fidelity files are skipped).
#
#   experiments/paper/run.sh     what produced the committed reports/paper/ (see its README for the time)
#
# Two ID sets, each with its own paired sweeps:
#   - Fashion-MNIST (reports/paper/): k in {8, 32}, 22 SAEs per seed, STEPS optimiser steps;
#   - Openclipart categories (reports/paper/clipart/): k = 32, 9 SAEs per seed, CLIPART_STEPS steps.
# Training processes run in parallel (one torch thread each; JOBS at a time).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PY=${PY:-.venv/bin/python}
MODEL=${MODEL:-.cache/models/dinov2-small-imgfocus}
W=${W:-.cache/paper}
SEEDS=${SEEDS:-"0 1 2"}
STEPS=${STEPS:-2500}
DECAY_STEPS=${DECAY_STEPS:-500}
CLIPART_STEPS=${CLIPART_STEPS:-2400}
CLIPART_DECAY_STEPS=${CLIPART_DECAY_STEPS:-400}
ID_IMAGES=${ID_IMAGES:-1000}
OOD_IMAGES=${OOD_IMAGES:-300}
FIDELITY_ID_IMAGES=${FIDELITY_ID_IMAGES:-300}
FIDELITY_OOD_IMAGES=${FIDELITY_OOD_IMAGES:-150}
REPLICATES=${REPLICATES:-200}
JOBS=${JOBS:-6}
mkdir -p "$W"
start=$(date +%s)

# 1. Activations (block 8, patch tokens, 112 px): 5,000 Fashion-MNIST training images, 1,000 test images,
#    500 each of digits, clip art and two corruptions of the test images; the clip-art ID set's 3,865
#    training and 1,005 test images and 500 near-OOD images.
W="$W" MODEL="$MODEL" OOD_IMAGES=500 experiments/paper/cache.sh
t_cache=$(date +%s)

# 2. Paired sweeps, one process per seed and ID set: Adam at a constant learning rate after the warm-up,
#    then a linear decay to 0 over the last DECAY_STEPS. A run stopped early (touch $W/saes/STOP) writes its
#    SAEs at the next checkpoint; the constant phase does not depend on STEPS, so such a run can be resumed
#    with the decay (delete its training.json and rerun) and equals an uninterrupted one.
pids=()
launch() {  # launch LOG COMMAND...: run in the background, at most JOBS at a time
  local log=$1; shift
  nice -n 5 "$@" >> "$log" 2>&1 &  # appended: a resumed run keeps the log of the first
  pids+=($!)
  if [ ${#pids[@]} -ge "$JOBS" ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
}
for s in $SEEDS; do
  launch $W/train-seed$s.log $PY experiments/paper/train.py --cache $W/cache-train --heldout-cache $W/cache-test \
    --out $W/saes --seeds $s --steps "$STEPS" --decay-steps "$DECAY_STEPS" --eval-every 100 --checkpoint-every 100 --curve-images 64
  launch $W/train-clipart-seed$s.log $PY experiments/paper/train.py --cache $W/cache-clipart-id-train \
    --heldout-cache $W/cache-clipart-id-test --out $W/saes-clipart --seeds $s --k 32 --l1-off 3e-4 1e-3 3e-3 \
    --l1-l2-ratio 1e-2 3e-2 1e-1 --steps "$CLIPART_STEPS" --decay-steps "$CLIPART_DECAY_STEPS" --eval-every 100 --checkpoint-every 100 --curve-images 64
done
for p in "${pids[@]}"; do wait "$p"; done
pids=()
t_train=$(date +%s)

# 3. Evaluation of every SAE on held-out images with the audit suites' accumulators, then downstream
#    fidelity (the model run on with each SAE spliced in).
$PY experiments/paper/evaluate.py --saes $W/saes/seed0 --caches $W --model "$MODEL" \
  --judge-cache $W/judge-test.pt --out $W/eval/seed0 --id-images "$ID_IMAGES" --judge-only
$PY experiments/paper/evaluate.py --saes $W/saes-clipart/seed0 --caches $W --id-cache clipart-id-test \
  --model "$MODEL" --judge-cache $W/judge-clipart-id-test.pt --out $W/eval-clipart/seed0 --id-images "$ID_IMAGES" --judge-only
CLIPART_OOD=(near-ood=clipart-near-ood digits=digits fashion-mnist=test)
for s in $SEEDS; do
  launch $W/eval-seed$s.log $PY experiments/paper/evaluate.py --saes $W/saes/seed$s --caches $W --model "$MODEL" \
    --judge-cache $W/judge-test.pt --out $W/eval/seed$s --id-images "$ID_IMAGES" --ood-images "$OOD_IMAGES" \
    --k-curve-images 250 --replicates "$REPLICATES"
  launch $W/eval-clipart-seed$s.log $PY experiments/paper/evaluate.py --saes $W/saes-clipart/seed$s --caches $W \
    --id-cache clipart-id-test --ood "${CLIPART_OOD[@]}" --model "$MODEL" --judge-cache $W/judge-clipart-id-test.pt \
    --out $W/eval-clipart/seed$s --id-images "$ID_IMAGES" --ood-images "$OOD_IMAGES" --k-curve-images 250 \
    --replicates "$REPLICATES"
done
for p in "${pids[@]}"; do wait "$p"; done
pids=()
FID=(--model "$MODEL" --id-images "$FIDELITY_ID_IMAGES" --ood-images "$FIDELITY_OOD_IMAGES" --replicates "$REPLICATES" --threads 1)
for s in $SEEDS; do
  launch $W/fidelity-seed$s.log $PY experiments/paper/fidelity.py --saes $W/saes/seed$s \
    --id-cache $W/cache-test --ood-cache digits=$W/cache-digits clipart=$W/cache-clipart \
    gaussian_noise:3=$W/cache-noise gaussian_blur:3=$W/cache-blur --out $W/eval "${FID[@]}"
  launch $W/fidelity-clipart-seed$s.log $PY experiments/paper/fidelity.py \
    --saes $W/saes-clipart/seed$s --id-cache $W/cache-clipart-id-test --ood-cache near-ood=$W/cache-clipart-near-ood \
    digits=$W/cache-digits fashion-mnist=$W/cache-test --out $W/eval-clipart "${FID[@]}"
done
for p in "${pids[@]}"; do wait "$p"; done
t_eval=$(date +%s)

# 4. Aggregation: results.json and plots per ID set (the verdicts in reports/paper/README.md are written from them).
cat > $W/compute.json <<JSON
{"this_invocation_seconds": {"cache": $((t_cache - start)), "train": $((t_train - t_cache)), "evaluate": $((t_eval - t_train))},
 "steps": $STEPS, "decay_steps": $DECAY_STEPS, "clipart_steps": $CLIPART_STEPS, "clipart_decay_steps": $CLIPART_DECAY_STEPS, "id_images": $ID_IMAGES, "ood_images": $OOD_IMAGES,
 "fidelity_id_images": $FIDELITY_ID_IMAGES, "fidelity_ood_images": $FIDELITY_OOD_IMAGES, "replicates": $REPLICATES,
 "seeds": "$SEEDS", "cpu": "$(nproc) cores",
 "note": "seconds of this invocation only (a resumed run skips finished work); per-seed training seconds are in results.json training"}
JSON
$PY experiments/paper/aggregate.py --eval $W/eval --saes $W/saes --out reports/paper --compute $W/compute.json
$PY experiments/paper/aggregate.py --eval $W/eval-clipart --saes $W/saes-clipart --out reports/paper/clipart \
  --compute $W/compute.json
