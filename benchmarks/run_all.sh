#!/usr/bin/env bash
# Run every speed benchmark, print its tables, write benchmarks/results/*.json
# and a summary (benchmarks/results/summary.json) with the four ratios:
#   audit_speedup_vs_handwritten, audit_fraction_of_roofline,
#   train_speedup_vs_best_peer, ms_speedup_vs_pairwise.
#
#   benchmarks/setup_peers.sh      # once: the benchmark environment with SAELens and sparsify
#   benchmarks/run_all.sh          # about 35 minutes on 2 busy CPU cores
#   benchmarks/run_all.sh --quick  # smaller sizes, a few minutes (not the committed numbers)
#
# Runs with benchmarks/.venv (or $BENCH_PYTHON); never part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${BENCH_PYTHON:-benchmarks/.venv/bin/python}
[ -x "$PY" ] || { echo "run_all: $PY is missing; run benchmarks/setup_peers.sh first" >&2; exit 2; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "${1:-}" = --quick ]; then
  "$PY" benchmarks/train_speed.py --quick
  "$PY" benchmarks/ms_speed.py --n 2000 --rounds 2
  "$PY" benchmarks/audit_speed.py --images 64 --rounds 2
  "$PY" benchmarks/loader_speed.py --images 64 --rounds 2
else
  "$PY" benchmarks/train_speed.py
  "$PY" benchmarks/ms_speed.py
  "$PY" benchmarks/audit_speed.py --memory
  "$PY" benchmarks/compile_speed.py
  "$PY" benchmarks/loader_speed.py
fi
"$PY" benchmarks/summary.py
