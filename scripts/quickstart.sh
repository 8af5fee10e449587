#!/usr/bin/env bash
# Quickstart: set up .venv, write synthetic motion videos, and run the progressive pipeline demo
# (launch/pipelines/demo.yaml) on 2 DeepSpeed CPU ranks per stage (gloo, ZeRO-2): pre-train →
# post-pre-train → fine-tune → distil → evaluate teacher and student (and the same student
# trained on the labels alone, the distillation baseline); it ends with the
# `giant pipeline status` table. Running it again finishes at once (every stage is done);
# `rm -rf runs/demo` starts the demo afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)

bash scripts/setup.sh
. .venv/bin/activate
export TORCH_EXTENSIONS_DIR="$PWD/.cache/torch_extensions"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # 2 ranks on 2 cores: one thread each
PIPELINE=${PIPELINE:-launch/pipelines/demo.yaml}

# 800 small videos (600 train / 200 held out, ~30 s to write). New videos make earlier demo
# results meaningless (the pipeline's hashes cover configs, not data), so runs/demo goes too.
stamp=data/synth/.giant-demo-800x48-bright  # bump when the renderer changes
if [ ! -f "$stamp" ]; then
  rm -rf data/synth runs/demo
  giant data synth data/synth --num-videos 800 --height 48 --width 48
  touch "$stamp"
fi

giant pipeline run "$PIPELINE" --launcher deepspeed --nproc 2

python - "$(( $(date +%s) - t0 ))" <<'PY'
import json, sys
from pathlib import Path

rows = {r["stage"]: r for r in json.loads(Path("runs/demo/status.json").read_text())["stages"]}
print(f"\n== giant quickstart done in {sys.argv[1]} s ==")
pre = rows.get("pretrain", {})
if pre.get("last_loss") is not None:
    print(f"pre-training loss {pre['first_loss']:.3f} -> {pre['last_loss']:.3f}")
top1 = {k: rows.get(k, {}).get("test_top1") for k in ("eval_teacher", "eval_student", "eval_student_hard")}
teacher, student, hard = top1["eval_teacher"], top1["eval_student"], top1["eval_student_hard"]
if teacher is not None:
    print(f"fine-tuned teacher:            top-1 {teacher:.1f}% on 200 held-out videos (chance 25%)")
if teacher is not None and student is not None:
    print(f"distilled student:             top-1 {student:.1f}% ({student - teacher:+.1f} points from its teacher)")
if hard is not None:
    print(f"same student on labels only:   top-1 {hard:.1f}% (same recipe and steps)")
print("TensorBoard:  tensorboard --logdir runs/demo   ·   table as JSON: runs/demo/status.json")
if pre.get("last_loss") is not None and pre["last_loss"] >= pre["first_loss"]:
    sys.exit("error: the pre-training loss did not fall")
PY
