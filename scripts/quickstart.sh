#!/usr/bin/env bash
# Quickstart: set up .venv, write synthetic videos, pre-train a tiny VideoMAE V2 on 2 DeepSpeed
# CPU ranks (gloo, ZeRO-2), then print loss start → end and where the outputs are.
# Re-running starts the demo afresh (runs/demo_pretrain is the demo's own scratch directory).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)

bash scripts/setup.sh
. .venv/bin/activate
export TORCH_EXTENSIONS_DIR="$PWD/.cache/torch_extensions"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # 2 ranks on 2 cores: one thread each
RUN_DIR=${RUN_DIR:-runs/demo_pretrain}

if [ ! -f data/synth/train.csv ]; then
  giant data synth data/synth --num-videos 48 --height 128 --width 128
fi

rm -rf "$RUN_DIR"
PORT=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
deepspeed --num_gpus 2 --master_port "$PORT" launch/pretrain.py \
  --ds ds_configs/zero2.json --recipe launch/recipes/demo_pretrain.yaml \
  stage.run_dir="$RUN_DIR" logging.progress=false

python - "$RUN_DIR" "$(( $(date +%s) - t0 ))" <<'PY'
import json, sys
from pathlib import Path

run, seconds = Path(sys.argv[1]), int(sys.argv[2])
summary = json.loads((run / "summary.json").read_text())
losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").open()]
k = min(10, len(losses))
head, tail = sum(losses[:k]) / k, sum(losses[-k:]) / k
print(f"\n== giant quickstart done in {seconds} s ==")
print(f"loss: {losses[0]:.3f} (step 1) -> {losses[-1]:.3f} (step {len(losses)}); "
      f"mean of first {k} steps {head:.3f} -> last {k} {tail:.3f} ({100 * (1 - tail / head):.0f}% lower)")
print(f"TensorBoard:      tensorboard --logdir {run / 'tensorboard'}")
print(f"reconstructions:  {', '.join(summary['images']) or 'none'}")
print(f"metrics (JSONL):  {run / 'metrics.jsonl'}")
print(f"weights:          {summary.get('weights')} (+ model.json) for the next stage")
if tail >= head:
    sys.exit("error: the loss did not fall")
PY
