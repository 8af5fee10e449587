#!/usr/bin/env bash
# Set up (idempotent) and run the whole CPU test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export TORCH_EXTENSIONS_DIR="$PWD/.cache/torch_extensions"
exec python -m pytest -q --timeout 600 "$@"
