#!/usr/bin/env bash
# Command 1 of the README: set everything up, then run the demo audit on real
# data. Trains two Top-k SAEs (fixed-k, and with the L1/L2-ratio regulariser of
# arXiv 2606.27321; same k and width) on 500k patch-token activations of the
# real DINOv2 ViT-S/14 at block 8 on Fashion-MNIST training images, then
# audits them with held-out Fashion-MNIST as ID and handwritten digits, clip
# art and two corrupted copies of the ID images (Gaussian noise and blur at
# severity 3, from the first-party plugin sae-audit-corruptions) as OOD.
# Writes reports/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

SA=.venv/bin/sae-audit
MODEL=.cache/models/dinov2-small-imgfocus
SAES=.cache/demo/saes
# 112 px inputs (8x8 patches of 14 px): Fashion-MNIST is 28 px, and this keeps
# the whole demo within 15 minutes on 2 CPU cores.
COMMON=(--image-size 112 --batch-size 64 --seed 0)

start=$(date +%s)
$SA train "$MODEL" --hook block.8 --tokens patch --data fashion-mnist:train "${COMMON[@]}" \
  --k 16 --expansion 4 --l1-l2-ratio 0 0.01 --max-vectors 500000 --out "$SAES" --overwrite
$SA run "$MODEL" --sae "$SAES/k16-off0-ratio0" --sae "$SAES/k16-off0-ratio0.01" \
  --id fashion-mnist:test --ood digits --ood clipart \
  --ood corrupt:gaussian_noise:3:fashion-mnist:test --ood corrupt:gaussian_blur:3:fashion-mnist:test \
  --max-images 1000 "${COMMON[@]}" --suite all --out reports/demo --overwrite
# The model-card section this audit produces (a local card; nothing is pushed),
# and what changed against a 200-image coverage audit of the same SAEs
# (reports/examples/demo-200: its results.json is kept, its pages are not).
rm -f reports/demo/model-card.md
$SA card --results reports/demo/results.json --card reports/demo/model-card.md
tmp200=$(mktemp -d)
$SA run "$MODEL" --sae "$SAES/k16-off0-ratio0" --sae "$SAES/k16-off0-ratio0.01" \
  --id fashion-mnist:test --ood digits --ood clipart --max-images 200 "${COMMON[@]}" -q --out "$tmp200/out"
mkdir -p reports/examples/demo-200
cp "$tmp200/out/results.json" reports/examples/demo-200/results.json
rm -rf "$tmp200"
$SA report diff reports/examples/demo-200/results.json reports/demo/results.json \
  --out reports/examples/diff-200-vs-demo.md --overwrite
echo "==> demo done in $(( $(date +%s) - start )) s (after set-up): open reports/demo/report.html"
