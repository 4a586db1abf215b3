#!/usr/bin/env bash
# Create the benchmark environment: a virtual environment of its own (default
# benchmarks/.venv, or $BENCH_VENV) holding sae-audit *and* the peers it is
# measured against, SAELens and EleutherAI sparsify, on one torch, so that every
# implementation runs in the same interpreter, interleaved, on the same build.
#
# Never run by CI and never installed into the project's .venv: the peers pull
# in large dependency trees (transformer-lens, datasets, accelerate ...) that
# sae-audit does not need.
#
#   benchmarks/setup_peers.sh            # then: benchmarks/run_all.sh
#
# Versions are pinned to the ones the committed results were measured with;
# override with SAELENS_VERSION / SPARSIFY_VERSION / TORCH_SPEC.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${BENCH_VENV:-benchmarks/.venv}
SAELENS_VERSION=${SAELENS_VERSION:-6.54.12}
SPARSIFY_VERSION=${SPARSIFY_VERSION:-1.3.3}  # EleutherAI sparsify is published as eai-sparsify
# The CPU build where no CUDA GPU is present (as scripts/setup.sh picks it).
if [ -z "${TORCH_SPEC:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    TORCH_SPEC="torch==2.13.0"
  else
    TORCH_SPEC="torch==2.13.0+cpu"
  fi
fi

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "==> installing $TORCH_SPEC"
  # A local CPU wheel in pip's find-links is taken first; elsewhere the CPU
  # build comes from PyTorch's own index ($TORCH_INDEX_URL).
  "${PIP[@]}" install "$TORCH_SPEC" 2>/dev/null || \
    "${PIP[@]}" install "$TORCH_SPEC" --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" \
      --extra-index-url https://pypi.org/simple
fi
echo "==> installing sae-audit, sae-lens==$SAELENS_VERSION and eai-sparsify==$SPARSIFY_VERSION (torch kept)"
torch_now=$("$VENV/bin/python" -c "import torch; print(torch.__version__)")
echo "torch==$torch_now" > "$VENV/torch-pin.txt"
"${PIP[@]}" install -c "$VENV/torch-pin.txt" -e . "sae-lens==$SAELENS_VERSION" "eai-sparsify==$SPARSIFY_VERSION" py-spy
"$VENV/bin/python" - <<'PY'
import importlib.metadata as m
for d in ("torch", "sae-audit", "sae-lens", "eai-sparsify", "transformers"):
    print(f"  {d} {m.version(d)}")
PY
echo "==> benchmark environment ready in $(( $(date +%s) - start )) s: $VENV ($(du -sh "$VENV" | cut -f1))"
