#!/usr/bin/env bash
# Step 1 of the paper experiment: block-8 patch activations of the real DINOv2 on every image set
# (resumable: a finished cache is skipped, an interrupted one continues).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
SA="$PY -m sae_audit.cli"
MODEL=${MODEL:-.cache/models/dinov2-small-imgfocus}
W=${W:-.cache/paper}
COMMON=(--hook block.8 --tokens patch --image-size 112 --batch-size 64 --seed 0 --device cpu -q)
cache() {  # cache NAME SET MAX_IMAGES
  local out=$W/cache-$1
  [ -f "$out/.done" ] && return 0
  local R=
  [ -f "$out/meta.json" ] && R=--resume
  $SA cache "$MODEL" "${COMMON[@]}" --data "$2" --max-images "$3" --out "$out" $R
  touch "$out/.done"
}
cache train fashion-mnist:train "${TRAIN_IMAGES:-5000}"
cache test fashion-mnist:test "${TEST_IMAGES:-1000}"
cache digits digits "${OOD_IMAGES:-500}"
cache clipart clipart "${OOD_IMAGES:-500}"
cache noise corrupt:gaussian_noise:3:fashion-mnist:test "${OOD_IMAGES:-500}"
cache blur corrupt:gaussian_blur:3:fashion-mnist:test "${OOD_IMAGES:-500}"
# The second ID set: Openclipart categories (computer, shapes, signs and symbols, recreation) as ID,
# split 80/20 by file name, and six other categories as semantic near-OOD (experiments/paper/clipart_split.py).
if [ -n "${CLIPART_ID:-1}" ] && [ "${CLIPART_ID:-1}" != 0 ]; then
  [ -d "$W/clipart-sets/clipart-near-ood" ] || $PY experiments/paper/clipart_split.py --out "$W/clipart-sets"
  cache clipart-id-train "$W/clipart-sets/clipart-id-train" "${CLIPART_TRAIN_IMAGES:-3865}"
  cache clipart-id-test "$W/clipart-sets/clipart-id-test" "${CLIPART_TEST_IMAGES:-1005}"
  cache clipart-near-ood "$W/clipart-sets/clipart-near-ood" "${OOD_IMAGES:-500}"
fi
