#!/usr/bin/env bash
# One-step environment: .venv with a torch that has an importable torchvision (timm needs it),
# then giant and its deps constrained to that torch. Idempotent: a second run is a no-op check.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
stamp=.venv/.giant-setup-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  # torch first and pinned, so no later requirement drags in another build (see README).
  if ! python -c "import torch, torchvision" 2>/dev/null; then
    pip install -q "torch==${GIANT_TORCH:-2.14.1}" "torchvision==${GIANT_TORCHVISION:-0.29.1}"
  fi
  tv=$(python -c "import torch;print(torch.__version__.split('+')[0])")
  tvv=$(python -c "import torchvision;print(torchvision.__version__.split('+')[0])")
  printf 'torch==%s\ntorchvision==%s\n' "$tv" "$tvv" > .venv/torch-constraint.txt
  pip install -q -c .venv/torch-constraint.txt -e ".[test]"
  touch "$stamp"
fi
# Where DeepSpeed would JIT-build an op (giant skips its CPU shm op): a cache we own.
mkdir -p .cache/torch_extensions
