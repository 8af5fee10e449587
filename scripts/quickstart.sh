#!/usr/bin/env bash
# Quickstart: set up .venv, write synthetic motion videos, and run the progressive pipeline demo
# (launch/pipelines/demo.yaml) on 2 DeepSpeed CPU ranks per stage (gloo, ZeRO-2): pre-train →
# post-pre-train → fine-tune → distil → evaluate teacher and student (and the same student
# trained on the labels alone, the distillation baseline; each student compared with the teacher
# video by video); it ends with the
# `giant pipeline status` table. Running it again finishes at once (every stage is done);
# `giant pipeline run launch/pipelines/demo.yaml --force pretrain` redoes the demo. The console
# shows one live line per stage; each stage's full output is in runs/demo/<stage>/stage.log.
# Arguments go to `giant pipeline run`: `bash scripts/quickstart.sh --verbose` streams every
# stage's output here too, `bash scripts/quickstart.sh --force pretrain` redoes the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)

bash scripts/setup.sh core   # no extras: the demo needs none (bash scripts/test.sh adds them)
. .venv/bin/activate
export TORCH_EXTENSIONS_DIR="$PWD/.cache/torch_extensions"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # 2 ranks on 2 cores: one thread each
PIPELINE=${PIPELINE:-launch/pipelines/demo.yaml}

# 800 small videos (600 train / 200 held out, ~35 s to write); 150 of the 600 train labels are
# wrong on purpose, as in annotated datasets (the held-out labels are true). New data make
# earlier demo results meaningless (the pipeline's hashes cover configs, not data), so every
# demo stage is redone.
stamp=data/.giant-demo-synth-800x48-bright-noise25  # bump when the renderer or the data change
redo_all=""
if [ ! -f "$stamp" ]; then
  # giant data synth writes over only its own earlier output (data/synth/synth.json) and refuses a
  # folder of anyone else's files; stamps of older quickstarts inside it are ours to drop
  if [ -d data/synth ] && [ ! -f data/synth/synth.json ] && compgen -G 'data/synth/.giant-demo-*' > /dev/null; then
    old=data/synth.before-$(date +%Y%m%d%H%M%S)   # an older quickstart's data (no synth.json): kept, set aside
    mv data/synth "$old" && echo "quickstart: older demo data moved to $old (delete it when you like)"
  fi
  rm -f data/synth/.giant-demo-*
  giant data synth data/synth --num-videos 800 --height 48 --width 48 --label-noise 0.25
  touch "$stamp"
  # new data: every demo stage is redone; --force deletes only run dirs this pipeline recorded
  redo_all="--force $(giant pipeline plan "$PIPELINE" --no-flops --json 2>/dev/null | python -c '
import json, sys; print(json.load(sys.stdin)["stages"][0]["name"])' 2>/dev/null || echo pretrain)"
fi

# The demo's runs are disposable: a stage whose recipe changed since the last quickstart (a newer
# giant) is redone with --force instead of refused. Real pipelines keep the refusal. A pipeline
# file that does not resolve is left to `giant pipeline run` below, which names the mistake.
force=$(giant pipeline plan "$PIPELINE" --no-flops --json 2>/dev/null | python -c '
import json, sys
stale = [s["name"] for s in json.load(sys.stdin)["stages"] if s["status"] == "changed"]
print(" ".join(f"--force {n}" for n in stale))' 2>/dev/null || true)
[ -n "$force" ] && echo "quickstart: redoing stages from another giant version: $force"
[ -n "$redo_all" ] && force=$redo_all
echo "quickstart: giant pipeline run $PIPELINE (2 DeepSpeed CPU ranks per stage; the whole demo takes ~6 min on 2 cores)"
giant pipeline run "$PIPELINE" --launcher deepspeed --nproc 2 $force "$@"

python - "$(( $(date +%s) - t0 ))" <<'PY'
import json, sys
from pathlib import Path

rows = {r["stage"]: r for r in json.loads(Path("runs/demo/status.json").read_text())["stages"]}
print(f"\n== giant quickstart done in {sys.argv[1]} s ==")
pre = rows.get("pretrain", {})
if pre.get("last_loss") is not None:
    print(f"pre-training loss {pre['first_loss']:.3f} -> {pre['last_loss']:.3f}")
clean = Path("data/synth/train_clean.csv")
if clean.is_file():
    true, given = (f.read_text().splitlines()[1:] for f in (clean, Path("data/synth/train.csv")))
    wrong = sum(a != b for a, b in zip(true, given))
    print(f"training labels: {wrong} of {len(true)} wrong on purpose "
          "(the teacher and the labels-only student learn from them, the distilled student from the "
          "teacher alone; data/synth/train_clean.csv has the truth)")
teacher = rows.get("eval_teacher", {}).get("test_top1")
if teacher is not None:
    print(f"fine-tuned teacher:            top-1 {teacher:.1f}% on 200 held-out videos (chance 25%)")
for name, what in (("eval_student", "distilled student:          "),
                   ("eval_student_hard", "same student on labels only:")):
    r = rows.get(name, {})
    if r.get("test_top1") is None:
        continue
    line = f"{what}   top-1 {r['test_top1']:.1f}%"
    if r.get("agreement_top1") is not None:
        line += f", agrees with the teacher on {r['agreement_top1']:.1f}% (KL {r['kl_from_reference']:.3f})"
    print(line)
print("TensorBoard:  tensorboard --logdir runs/demo   ·   table as JSON: runs/demo/status.json   ·   "
      "a stage's full output: runs/demo/<stage>/stage.log")
if pre.get("last_loss") is not None and pre["last_loss"] >= pre["first_loss"]:
    sys.exit("error: the pre-training loss did not fall")
PY
