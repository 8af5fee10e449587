#!/usr/bin/env bash
# One-GPU check of giant at ViT-g scale, in about 8 minutes on an 80-141 GB GPU (issue 19):
#   env        GPU, driver, torch / cuDNN / DeepSpeed versions
#   sdpa       which SDPA kernel runs at giant's shapes (head dim 88 / 64) and what each costs
#   decoder    the ViT-g decoder step in true FP32 vs TF32 vs BF16
#   pretrain   ViT-g pre-training clips/s, MFU and peak memory with today's defaults ("new") and as
#              shipped before issue 19 ("shipped"), each beside the memory planner's estimate
#   finetune   ViT-g fine-tuning at 12 clips per micro-step
#   distill    a ViT-B distillation step under a frozen ViT-g teacher
#   reshard    a ZeRO-2 checkpoint written by 2 CPU ranks resumed as ZeRO-1 on this GPU (fused AdamW)
#   official   the official VideoMAE V2 step on the same GPU (needs .whl/VideoMAEv2, see below)
#   loader     the pre-training loader's cost per video and the cores this GPU's rate needs
#   saved      giant.memory's activation model against the bytes autograd saves on CUDA
# Each section has its own time limit and fails soft: a failure (an out-of-memory too) is
# recorded and the next section runs. Sections past the overall budget are skipped, named.
#
# Setup from what the repo carries: the GPU machine reaches no package registry, so
# scripts/bench/fetch_wheels.sh first fills the git-ignored .whl/ here (DeepSpeed, PyAV, decord,
# ...; --official DIR adds the official VideoMAE V2 code); carry .whl with the working tree.
# Packages already importable are used as they are.
#
#   scripts/bench/gpu_check.sh                 # results in $OUT (or /tmp/gpu_check_out)
#   scripts/bench/gpu_check.sh --out DIR --budget 480 --only env,sdpa,pretrain
#   scripts/bench/gpu_check.sh --dry-run       # check the setup and arguments, run nothing
# Results: DIR/gpu_check.json (every section: status, seconds, its JSON), DIR/gpu_check.md (the
# tables for docs/PERFORMANCE.md), DIR/gpu_check.log (each section's log tail).
set -u
cd "$(dirname "$0")/../.."
REPO=$PWD
OUT_DIR=${OUT:-${TMPDIR:-/tmp}/gpu_check_out}
BUDGET=${GPU_CHECK_BUDGET:-470}
ONLY=""
DRY=0
TINY=""
SECTIONS="env sdpa decoder pretrain_new pretrain_shipped finetune distill reshard official loader saved"

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_DIR=${2:?--out needs a folder}; shift 2 ;;
    --budget) BUDGET=${2:?--budget needs seconds}; shift 2 ;;
    --only) ONLY=${2:?--only needs section names}; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --tiny) TINY="--tiny"; shift ;;  # tiny models on whatever device: a smoke test of this script
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: error: unknown argument '$1' (--out DIR, --budget S, --only a,b, --dry-run)" >&2; exit 2 ;;
  esac
done
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_check.sh: error: --budget '$BUDGET': give whole seconds, e.g. 470" >&2; exit 2 ;; esac
if [ -n "$ONLY" ]; then
  for s in ${ONLY//,/ }; do
    case " $SECTIONS pretrain " in *" $s "*) ;; *) echo "gpu_check.sh: error: --only: unknown section '$s' (sections: $SECTIONS)" >&2; exit 2 ;; esac
  done
fi
wanted() { [ -z "$ONLY" ] && return 0; case ",$ONLY," in *",$1,"*|*",${1%%_*},"*) return 0 ;; esac; return 1; }

PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || PY=python
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
export PY WORK TINY REPO ONLY  # the functions below also run in child shells (section → bash -c)
START=$(date +%s)

# ----------------------------------------------------------------------------- setup
setup() {  # missing packages from the offline cache .whl/ into a private site folder
  local missing
  missing=$("$PY" - <<'PY'
import importlib.util
print(" ".join(m for m in ("deepspeed", "av", "decord", "hjson", "pydantic") if importlib.util.find_spec(m) is None))
PY
)
  if [ -n "$missing" ]; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
      echo "setup: missing $missing and no wheels in .whl/ (run scripts/bench/fetch_wheels.sh where pip works)"
      return 1
    fi
    echo "setup: installing from .whl/ (missing: $missing)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/giant-site .whl/*.whl || return 1
    export PYTHONPATH=/tmp/giant-site${PYTHONPATH:+:$PYTHONPATH}
  fi
  export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
  export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$WORK/torch_extensions}
  "$PY" -c "import torch, deepspeed, giant.memory, giant.stages.bench; print('setup: torch', torch.__version__, '| deepspeed', deepspeed.__version__, '| cuda', torch.cuda.is_available())"
}

# ----------------------------------------------------------------------------- sections
record() {  # name status seconds limit
  printf '{"section": "%s", "status": "%s", "seconds": %s, "limit": %s}\n' "$1" "$2" "$3" "$4" >"$WORK/$1.status"
}

section() {  # name limit command...: run under a limit cut to the overall budget; never aborts
  local name=$1 limit=$2; shift 2
  wanted "$name" || return 0
  local left=$(( BUDGET - ($(date +%s) - START) - 15 ))  # 15 s stay for the report
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 20 ]; then
    record "$name" "skipped: out of time (--budget $BUDGET)" 0 "$limit"; echo "[$name] skipped: out of time"; return 0
  fi
  echo "[$name] up to ${limit}s: $*"
  local t0=$(date +%s) rc
  if declare -F "$1" >/dev/null; then  # a function of this script: run it in a child bash
    timeout -k 10 "$limit" bash -c '"$@"' _ "$@" >"$WORK/$name.json" 2>"$WORK/$name.log"
  else
    timeout -k 10 "$limit" "$@" >"$WORK/$name.json" 2>"$WORK/$name.log"
  fi
  rc=$?
  local status=ok
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && status="timeout after ${limit}s"
  [ "$status" = ok ] && [ "$rc" -ne 0 ] && status="failed (exit $rc)"
  record "$name" "$status" $(( $(date +%s) - t0 )) "$limit"
  echo "[$name] $status in $(( $(date +%s) - t0 ))s"
}

background_cpu_work() {  # CPU-only preparation, started early: videos, the 2-rank ZeRO-2 checkpoint
  export OMP_NUM_THREADS=1
  "$PY" -m giant.cli data synth "$WORK/tiny" --num-videos 12 --frames 32 --height 64 --width 64 >"$WORK/bg_tiny.log" 2>&1
  if wanted reshard; then
    "$PY" -m torch.distributed.run --nproc_per_node 2 --master_port 29511 launch/pretrain.py \
      $(reshard_args "$WORK/rs_full" ds_configs/zero2.json) stage.device=cpu >"$WORK/bg_reshard.log" 2>&1
    echo $? >"$WORK/bg_reshard.rc"
  fi
  if wanted loader; then
    "$PY" -m giant.cli data synth "$WORK/cam" --num-videos 24 --frames 72 --height 240 --width 320 \
      --style camera >"$WORK/bg_cam.log" 2>&1
    echo $? >"$WORK/bg_cam.rc"
  fi
}

reshard_args() {  # run dir, DeepSpeed JSON: the tiny 4-step run of tests/test_pretrain_reshard.py
  echo --ds "$2" --recipe launch/recipes/demo_pretrain.yaml data.manifest="$WORK/tiny/train.csv" \
    stage.run_dir="$1" model.img_size=32 model.patch_size=8 model.num_frames=4 data.sampling_rate=2 \
    data.num_sample=1 data.num_workers=0 optim.batch_size=1 optim.total_steps=4 optim.warmup_steps=1 \
    checkpoint.every_steps=1 precision.encoder=fp32 precision.decoder_matmul=fp32 logging.image_every=0 \
    logging.progress=false
}

wait_for() {  # file, seconds: wait for a background result
  local waited=0
  while [ ! -f "$1" ] && [ "$waited" -lt "$2" ]; do sleep 2; waited=$((waited + 2)); done
  [ -f "$1" ]
}

run_reshard() {  # resume the 2-rank ZeRO-2 run's step-3 checkpoint as ZeRO-1 on this GPU
  wait_for "$WORK/bg_reshard.rc" 120 && [ "$(cat "$WORK/bg_reshard.rc")" = 0 ] || {
    echo "the 2-rank CPU run did not finish: $(tail -n 5 "$WORK/bg_reshard.log" 2>/dev/null)" >&2; return 1; }
  local dev=cuda; [ -n "$TINY" ] && dev=cpu
  "$PY" tests/_resume_fused_worker.py "$WORK/reshard_report.json" \
    $(reshard_args "$WORK/rs_gpu" ds_configs/zero1.json) optim.accum_steps=2 \
    checkpoint.resume="$WORK/rs_full/checkpoints/step_00000003" stage.device=$dev >&2 || return 1
  "$PY" - "$WORK/reshard_report.json" "$WORK/rs_full" "$WORK/rs_gpu" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
loss = lambda run: {r["step"]: r["loss"] for r in map(json.loads, open(f"{run}/metrics.jsonl"))}
full, gpu = loss(sys.argv[2]), loss(sys.argv[3])
report.update(loss_2ranks_cpu=full.get(4), loss_resumed_gpu=gpu.get(4),
              ok=report.get("rc") == 0 and report.get("resumed_at") == 3 and all(report.get("fused") or [False]))
print(json.dumps(report))
PY
}

run_loader() {  # per-core cost of one video (profile) and a real loader run with most of the cores
  wait_for "$WORK/bg_cam.rc" 150 && [ "$(cat "$WORK/bg_cam.rc")" = 0 ] || {
    echo "synthetic camera videos missing: $(tail -n 5 "$WORK/bg_cam.log" 2>/dev/null)" >&2; return 1; }
  local backend=decord cores workers
  "$PY" -c "import decord" 2>/dev/null || backend=pyav
  cores=$(nproc); workers=$(( cores > 4 ? cores - 4 : 1 ))
  "$PY" -m giant.cli data bench "$WORK/cam/train.csv" --backend $backend --profile --videos 24 --patch 14 \
    >"$WORK/loader_profile.out" 2>&1 || return 1
  "$PY" -m giant.cli data bench "$WORK/cam/train.csv" --backend $backend --workers $workers --batch-size 4 \
    --patch 14 --videos 96 >"$WORK/loader_run.out" 2>&1 || return 1
  "$PY" - "$WORK/loader_profile.out" "$WORK/loader_run.out" "$cores" <<'PY'
import json, sys
def first_json(path):
    text = open(path).read()
    return json.loads(text[text.index("{"): text.rindex("}") + 1])
print(json.dumps({"profile": first_json(sys.argv[1]), "loader": first_json(sys.argv[2]), "cores": int(sys.argv[3])}))
PY
}

export -f wanted reshard_args wait_for run_reshard run_loader

# ----------------------------------------------------------------------------- main
echo "gpu_check: budget ${BUDGET}s, results in $OUT_DIR, work dir $WORK"
if [ "$DRY" = 1 ]; then
  setup_status=0
  setup || setup_status=$?
  for f in gpu_kernels gpu_steps official_videomae_step gpu_report; do
    "$PY" -c "import ast, sys; ast.parse(open('scripts/bench/$f.py').read())" || exit 1
  done
  "$PY" scripts/bench/gpu_steps.py --help >/dev/null && "$PY" scripts/bench/gpu_kernels.py --help >/dev/null || exit 1
  echo "gpu_check: dry run: sections $(for s in $SECTIONS; do wanted "$s" && printf '%s ' "$s"; done)"
  [ -f .whl/VideoMAEv2/models/modeling_pretrain.py ] || echo "gpu_check: official: no .whl/VideoMAEv2 (section will be skipped)"
  rmdir "$WORK" 2>/dev/null || echo "gpu_check: dry-run logs kept in $WORK"
  exit "$setup_status"
fi

mkdir -p "$OUT_DIR"
if ! setup >"$WORK/setup.log" 2>&1; then
  cat "$WORK/setup.log"
  echo "gpu_check: setup failed: nothing can run" >&2
  record setup "failed" 0 0
else
  cat "$WORK/setup.log"
  record setup ok $(( $(date +%s) - START )) 0
  set -m  # the background work in a process group of its own, to end it (by its id) at the end
  background_cpu_work &
  BG=$!
  set +m
  STEPS=(--steps 4 --warmup 2)
  section env 40 "$PY" scripts/bench/gpu_kernels.py env
  section sdpa 75 "$PY" scripts/bench/gpu_kernels.py sdpa
  section decoder 50 "$PY" scripts/bench/gpu_kernels.py decoder
  section pretrain_new 110 "$PY" scripts/bench/gpu_steps.py pretrain --variant new "${STEPS[@]}" $TINY
  section pretrain_shipped 110 "$PY" scripts/bench/gpu_steps.py pretrain --variant shipped "${STEPS[@]}" $TINY
  section finetune 80 "$PY" scripts/bench/gpu_steps.py finetune --clips 12 "${STEPS[@]}" $TINY
  section distill 80 "$PY" scripts/bench/gpu_steps.py distill --clips 16 "${STEPS[@]}" $TINY
  section reshard 90 run_reshard
  section official 90 "$PY" scripts/bench/official_videomae_step.py --official .whl/VideoMAEv2 \
    --clips 128 --steps 3 --warmup 2 $TINY
  section loader 90 run_loader
  section saved 40 "$PY" scripts/bench/gpu_kernels.py saved
  kill -- -"$BG" 2>/dev/null
  wait "$BG" 2>/dev/null
fi
"$PY" scripts/bench/gpu_report.py "$WORK" "$OUT_DIR" --budget "$BUDGET" --elapsed $(( $(date +%s) - START ))
rc=$?
echo "gpu_check: section logs kept in $WORK (the report in $OUT_DIR has what matters)"
exit $rc
