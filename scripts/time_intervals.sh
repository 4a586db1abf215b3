#!/usr/bin/env bash
# What the intervals (the Poisson bootstrap and the noise floor) and the fidelity suite cost: times
# `sae-audit run` on the real DINOv2 ViT-S/14 (112 px, block 8, patch tokens, as the demo) with N images per
# set (ID fashion-mnist:test; OOD digits and clipart), with and without `--bootstrap 0` and `--suite fidelity`.
# Trains one small SAE first (k 16, d_sae 1536, like the demo's; cached under .cache/timing/). Prints the
# audit's own wall time (results.json settings.wall_seconds: after the model and SAEs are loaded) per
# configuration, REPEAT times each. The README quotes its output.
#
#   scripts/time_intervals.sh [N=200] [REPEAT=2]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200}
REPEAT=${2:-2}
PY=${PYTHON:-.venv/bin/python}
SA=("$PY" -m sae_audit.cli)
MODEL=.cache/models/dinov2-small-imgfocus
WORK=${WORK:-.cache/timing}
SAE=$WORK/sae
COMMON=(--image-size 112 --batch-size 64 --seed 0 --device cpu -q)
mkdir -p "$WORK"
if [ ! -f "$SAE/config.json" ]; then
  "${SA[@]}" train "$MODEL" --hook block.8 --tokens patch --data fashion-mnist:train "${COMMON[@]}" \
    --k 16 --expansion 4 --max-vectors 50000 --out "$SAE" --overwrite
fi
CONFIGS=(
  "coverage, --bootstrap 0|--bootstrap 0"
  "coverage, --bootstrap 200 (default)|"
  "coverage + fidelity, --bootstrap 0|--bootstrap 0 --suite fidelity"
  "coverage + fidelity, --bootstrap 200|--suite fidelity"
  "--suite all, --bootstrap 0|--bootstrap 0 --suite all"
  "--suite all, --bootstrap 200|--suite all"
)
echo "==> sae-audit run, $N images per set (3 sets), 1 SAE (d_sae 1536, k 16), 112 px, $(nproc) CPU cores"
echo "    (configurations interleaved, REPEAT=$REPEAT rounds, so a busy machine slows all of them alike)"
for r in $(seq "$REPEAT"); do
  for c in "${CONFIGS[@]}"; do
    label=${c%%|*}
    read -r -a extra <<< "${c#*|}"
    "${SA[@]}" run "$MODEL" --sae "$SAE" --id fashion-mnist:test --ood digits --ood clipart \
      --max-images "$N" "${COMMON[@]}" --out "$WORK/out" --overwrite "${extra[@]}"
    s=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['settings']['wall_seconds'])" "$WORK/out/results.json")
    printf '%-40s round %d: %6.1f s\n' "$label" "$r" "$s"
  done
done
