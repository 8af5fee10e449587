#!/usr/bin/env bash
# Fill ./.whl/ (git-ignored) with what scripts/bench/gpu_check.sh installs on a GPU machine that
# reaches no package registry and has PyTorch but not DeepSpeed or the video decoders:
#   DeepSpeed (built here into a pure-Python wheel: PyPI has only its sdist; its ops JIT-build on
#   first use), the requirements it adds to such an image (hjson, pydantic + pydantic-core,
#   annotated-types, typing-inspection, a typing-extensions new enough for them), PyAV and decord.
# Versions: this environment's (what giant's tests ran with); target Python 3.12, x86-64 Linux.
# With --official DIR (a checkout of OpenGVLab/VideoMAEv2), also copies its models/ to
# .whl/VideoMAEv2 for the baseline step (scripts/bench/official_videomae_step.py); never
# vendored into giant, and this script does not download it.
#   scripts/bench/fetch_wheels.sh            # then carry .whl with the working tree
#   scripts/bench/fetch_wheels.sh --official /path/to/VideoMAEv2
#   PY_VERSION=3.11 scripts/bench/fetch_wheels.sh
set -euo pipefail
official=""
if [ "${1:-}" = "--official" ]; then
  official=${2:?--official needs the path of a VideoMAEv2 checkout}
  [ -f "$official/models/modeling_pretrain.py" ] || { echo "fetch_wheels.sh: $official/models/modeling_pretrain.py not found" >&2; exit 2; }
  official=$(cd "$official" && pwd)
fi
cd "$(dirname "$0")/../.."
PY_VERSION=${PY_VERSION:-3.12}
PYTHON=${PYTHON:-python}

version() {  # installed version of $1 here, else $2
  "$PYTHON" - "$1" "$2" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    print(version(sys.argv[1]))
except PackageNotFoundError:
    print(sys.argv[2])
PY
}

mkdir -p .whl
pins=()
for spec in hjson:3.1.0 pydantic:2.14.4 pydantic-core:2.50.5 annotated-types:0.7.0 typing-inspection:0.4.5 \
            typing-extensions:4.16.0 av:18.1.0 decord:0.6.0; do
  name=${spec%%:*}
  pins+=("$name==$(version "$name" "${spec#*:}")")
done
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux2010_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
  --implementation cp "${platforms[@]}" -d .whl "${pins[@]}"
ds="deepspeed==$(version deepspeed 0.19.8)"
if ! ls .whl/deepspeed-*.whl >/dev/null 2>&1; then
  # setup.py imports torch: build against this environment's (no ops are compiled into the wheel)
  DS_BUILD_OPS=0 "$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation -w .whl "$ds"
fi
if [ -n "$official" ]; then
  mkdir -p .whl/VideoMAEv2 && cp -r "$official/models" .whl/VideoMAEv2/
fi
du -ch .whl/*.whl | tail -n 1
ls .whl
