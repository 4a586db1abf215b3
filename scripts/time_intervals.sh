#!/usr/bin/env bash
# What the intervals (the Poisson bootstrap and the noise floor) and the fidelity suite cost: times
# `sae-audit run` on the real DINOv2 ViT-S/14 (112 px, block 8, patch tokens, as the demo) with N images per
# set (ID fashion-mnist:test; OOD digits and clipart), with and without `--bootstrap 0` and `--suite fidelity`.
# Trains one small SAE first (k 16, d_sae 1536, like the demo's; cached under $WORK). For each configuration
# it prints the audit's wall time (results.json settings.wall_seconds: after the model and SAEs are loaded)
# and the CPU time of the whole command (user + system, model loading included: the same in every row).
# Runs use one thread (OMP_NUM_THREADS=1, THREADS to change it), so the CPU time measures the work itself
# even on a machine other jobs are using; the configurations are interleaved over REPEAT rounds so a busy
# machine slows all of them alike. The README quotes its output.
#
#   scripts/time_intervals.sh [N=200] [REPEAT=2]        (WORK=folder, PYTHON=interpreter, THREADS=1)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200}
REPEAT=${2:-2}
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
MODEL=.cache/models/dinov2-small-imgfocus
WORK=${WORK:-.cache/timing}
SAE=$WORK/sae
COMMON=(--image-size 112 --batch-size 64 --seed 0 --device cpu -q)
mkdir -p "$WORK"
if [ ! -f "$SAE/config.json" ]; then
  "$PY" -m sae_audit.cli train "$MODEL" --hook block.8 --tokens patch --data fashion-mnist:train "${COMMON[@]}" \
    --k 16 --expansion 4 --max-vectors 50000 --out "$SAE" --overwrite
fi
# Runs one audit in-process and prints "<audit wall s> <process CPU s>".
MEASURE='
import json, resource, sys
from sae_audit.cli import main
code = main(sys.argv[2:])
if code != 0:
    sys.exit(code)
u = resource.getrusage(resource.RUSAGE_SELF)
wall = json.load(open(sys.argv[1] + "/results.json"))["settings"]["wall_seconds"]
print(f"{wall} {u.ru_utime + u.ru_stime:.1f}")
'
CONFIGS=(
  "coverage, --bootstrap 0|--bootstrap 0"
  "coverage, --bootstrap 200 (default)|"
  "coverage + fidelity, --bootstrap 0|--bootstrap 0 --suite fidelity"
  "coverage + fidelity, --bootstrap 200|--suite fidelity"
  "--suite all, --bootstrap 0|--bootstrap 0 --suite all"
  "--suite all, --bootstrap 200|--suite all"
)
echo "==> sae-audit run, $N images per set (3 sets), 1 SAE (d_sae 1536, k 16), 112 px, $OMP_NUM_THREADS thread(s), $(getconf _NPROCESSORS_ONLN) CPU cores"
echo "    load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$REPEAT"); do
  for c in "${CONFIGS[@]}"; do
    label=${c%%|*}
    read -r -a extra <<< "${c#*|}"
    read -r wall cpu < <("$PY" -c "$MEASURE" "$WORK/out" run "$MODEL" --sae "$SAE" --id fashion-mnist:test \
      --ood digits --ood clipart --max-images "$N" "${COMMON[@]}" --out "$WORK/out" --overwrite "${extra[@]}")
    printf '%-38s round %d: audit %6.1f s wall, command %6.1f s CPU\n' "$label" "$r" "$wall" "$cpu"
  done
done
echo "    load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
