#!/usr/bin/env bash
# One-step environment: .venv with a torch that has an importable torchvision (timm needs it),
# then giant and its deps constrained to that torch and to the DeepSpeed release pyproject.toml
# names as its floor (so the suite runs on the oldest versions giant claims, docs/install.md).
# `bash scripts/setup.sh` installs giant with the test extra (pytest and the hf, wandb, mlflow
# extras: what the suite needs); `bash scripts/setup.sh core` installs giant alone (what the demo
# needs, as `pip install giant` would). Idempotent: a second run is a no-op check.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-test}
case "$extras" in
  test) spec=".[test]" ;;
  core) spec="." ;;
  *) echo "usage: bash scripts/setup.sh [test|core]   (test: giant + every extra the suite needs; core: giant alone)" >&2
     exit 2 ;;
esac
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
stamp=.venv/.giant-setup-$extras-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)
# pip's own output (and whatever a machine's pip config makes it warn about) goes to a log; the
# console gets one line per install, and the log's end if an install fails
log=.venv/setup.log
pip_quiet() {
  echo "setup: pip install $* (log: $log)"
  if ! pip install -q "$@" >>"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "setup: pip install failed; the whole output is in $log" >&2
    exit 1
  fi
}
if [ ! -f "$stamp" ]; then
  # torch first and pinned, so no later requirement drags in another build (docs/install.md).
  if ! python -c "import torch, torchvision" 2>/dev/null; then
    pip_quiet "torch==${GIANT_TORCH:-2.14.1}" "torchvision==${GIANT_TORCHVISION:-0.29.1}"
  fi
  tv=$(python -c "import torch;print(torch.__version__.split('+')[0])")
  tvv=$(python -c "import torchvision;print(torchvision.__version__.split('+')[0])")
  printf 'torch==%s\ntorchvision==%s\ndeepspeed==%s\n' "$tv" "$tvv" "${GIANT_DEEPSPEED:-0.19.8}" \
    > .venv/torch-constraint.txt
  pip_quiet -c .venv/torch-constraint.txt -e "$spec"
  touch "$stamp"
fi
# Where DeepSpeed would JIT-build an op (giant skips its CPU shm op): a cache we own.
mkdir -p .cache/torch_extensions
