#!/usr/bin/env bash
# Loader throughput, original vs prepared files, giant (decord, PyAV) vs the official VideoMAE V2
# pipeline, 1 and 2 workers, plus single-process per-core profiles. One JSON line per run in
# $OUT/results.jsonl (each with its load average). Numbers: docs/PERFORMANCE.md.
#
#   scripts/bench/loader_matrix.sh ORIG_MANIFEST PREPARED_MANIFEST OUT [VIDEOS]
#
# Needs the official checkout for its rows (skipped with a note otherwise):
#   git clone https://github.com/OpenGVLab/VideoMAEv2 /tmp/VideoMAEv2
#   pip install --target /tmp/vmae-site --no-deps opencv-python-headless pandas python-dateutil \
#       six tzdata tensorboardX
set -euo pipefail
orig=$1 prepared=$2 out=$3 videos=${4:-60}
official=${OFFICIAL:-/tmp/VideoMAEv2} site=${OFFICIAL_SITE:-/tmp/vmae-site}
here=$(cd "$(dirname "$0")/../.." && pwd)
export OMP_NUM_THREADS=1 PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"
results="$out/results.jsonl"

giant_json() {  # giant data bench prints JSON then one summary line; keep the JSON
  python - "$@" <<'EOF'
import json, subprocess, sys
labels, cmd = dict(a.split("=", 1) for a in sys.argv[1:3]), sys.argv[3:]
proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
text = proc.stdout
result = json.loads(text[text.index("{"): text.rindex("}") + 1])
print(json.dumps({**labels, **result}))
EOF
}

for set in orig prepared; do
  manifest=$orig; [ "$set" = prepared ] && manifest=$prepared
  for backend in decord pyav; do
    giant_json set=$set pipeline=giant-$backend giant data bench "$manifest" --backend $backend \
      --profile --videos 24 >> "$results"
    for workers in 1 2; do
      giant_json set=$set pipeline=giant-$backend giant data bench "$manifest" \
        --backend $backend --workers $workers --videos "$videos" >> "$results"
    done
  done
  if [ -d "$official/dataset" ]; then
    for args in "--profile --videos 12" "--workers 1 --videos $videos" "--workers 2 --videos $videos"; do
      # shellcheck disable=SC2086
      PYTHONPATH="$here:$site:$official" python "$here/scripts/bench/official_videomae_loader.py" \
        "$manifest" $args 2>/dev/null | tail -1 | sed "s/^{/{\"set\": \"$set\", /" >> "$results"
    done
  else
    echo "no official checkout at $official: its rows are skipped" >&2
  fi
done
cat "$results"
