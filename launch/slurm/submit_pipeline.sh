#!/usr/bin/env bash
# Submit a whole pipeline (launch/pipelines/*.yaml) to Slurm at once: one job per stage that is
# not done, named PIPELINE:STAGE, each waiting for the jobs of its input stages with
# --dependency=afterok. A preempted or crashed stage requeues itself under the same job id
# (launch/slurm/env.sh), so its dependants keep waiting until it really completes; when a stage
# fails for good its dependants are cancelled (--kill-on-invalid-dep): fix it and re-submit.
# Usage:
#   launch/slurm/submit_pipeline.sh PIPELINE.yaml [--force STAGE]... [-- SBATCH_OPTIONS...]
# Re-submitting skips done stages (`giant pipeline plan --json` decides), does not submit a
# stage that already has a queued or running job (it depends on that job instead), and refuses
# when a finished stage's config changed (--force STAGE redoes it and every stage after it).
set -euo pipefail
SUBMIT_DIR=$PWD  # never deleted, like the checkout: giant.safety's rule
GIANT_ROOT=${GIANT_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
cd "$GIANT_ROOT"
[ -f .venv/bin/activate ] && . .venv/bin/activate
PY=${GIANT_PYTHON:-python}

PIPELINE=${1:?usage: launch/slurm/submit_pipeline.sh PIPELINE.yaml [--force STAGE]... [-- SBATCH_OPTIONS...]}
shift
PLAN_OPTS=() SBATCH_OPTS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --force) PLAN_OPTS+=(--force "$2"); shift 2 ;;
    --) shift; SBATCH_OPTS=("$@"); break ;;
    *) echo "submit_pipeline.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

# A --signal among the sbatch options replaces the scripts' own: tell env.sh its lead (the
# time-limit check) through the job's environment.
for ((i = 0; i < ${#SBATCH_OPTS[@]}; i++)); do
  case "${SBATCH_OPTS[i]}" in
    --signal=*@*) export GIANT_SIGNAL_LEAD=${SBATCH_OPTS[i]##*@} ;;
    --signal) [ $((i + 1)) -lt ${#SBATCH_OPTS[@]} ] && export GIANT_SIGNAL_LEAD=${SBATCH_OPTS[i + 1]##*@} ;;
  esac
done

plan=$(mktemp) lines=$(mktemp)
trap 'rm -f "$plan" "$lines"' EXIT
rc=0
"$PY" -m giant.cli pipeline plan "$PIPELINE" --json --no-flops "${PLAN_OPTS[@]}" > "$plan" || rc=$?
[ -s "$plan" ] || exit $((rc ? rc : 2))   # the pipeline file itself is wrong: giant said why
# One line per stage (fields separated by \x1f, so an empty field stays a field; arguments
# shell-quoted). Stages to redo (--force) lose their run dir, only by giant.safety's rule (the
# plan has checked it for every stage before anything is deleted); every submitted stage gets
# RUN_DIR/pipeline_stage.json, the config record a later `giant pipeline plan` compares against.
"$PY" - "$plan" "$SUBMIT_DIR" > "$lines" <<'PY'
import json, shlex, sys, time
from pathlib import Path

from giant import safety
from giant.errors import GiantError

plan = json.load(open(sys.argv[1]))
protect = [plan["root"], plan["file"], sys.argv[2]]
bad = [s for s in plan["stages"] if s["error"] or s["status"] in ("changed", "unrecorded")]
for s in bad:
    why = s["error"] or s["note"] or "; ".join(s["changed"])
    print(f"submit_pipeline.sh: stage {s['name']}: {s['status'] if not s['error'] else 'error'}: {why}",
          file=sys.stderr)
if bad:
    print("submit_pipeline.sh: nothing submitted or deleted; fix the stages above (a changed one: "
          "re-submit with --force STAGE to redo it)", file=sys.stderr)
    sys.exit(2)
for s in plan["stages"]:
    if s["forced"]:
        try:
            safety.check_run_dir(s["run_dir"], plan["pipeline"], s["name"], protect)
        except GiantError as exc:
            sys.exit(f"submit_pipeline.sh: stage {s['name']}: {exc}; nothing deleted or submitted")
for s in plan["stages"]:
    if s["delete"]:
        print(f"submit_pipeline.sh: stage {s['name']}: deleting {s['delete']}", file=sys.stderr)
for s in plan["stages"]:
    run_dir = Path(s["run_dir"])
    if s["status"] == "done":
        print("\x1f".join([s["name"], "done", str(run_dir)]))
        continue
    if s["forced"]:
        safety.remove_run_dir(run_dir, plan["pipeline"], s["name"], protect)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = run_dir / "pipeline_stage.json"
    old = json.loads(record.read_text()) if record.is_file() else {}
    if old.get("hash") != s["hash"]:
        record.write_text(json.dumps({**s["record"], "launched_at": time.time()}, indent=1) + "\n")
    print("\x1f".join([s["name"], s["label"], str(run_dir), s["sbatch"], str(s["nodes"]),
                     str(s["tasks_per_node"]), ",".join(s["inputs"]), shlex.join(s["sbatch_args"])]))
PY

name=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["pipeline"])' "$plan")
declare -A JOB=()
while IFS=$'\x1f' read -r stage label run_dir script nodes tasks inputs args; do
  if [ "$label" = done ]; then
    echo "$name:$stage: done, skipped ($run_dir)"
    continue
  fi
  queued=$(squeue --noheader --format=%i --name="$name:$stage" 2>/dev/null | head -n 1 || true)
  if [ -n "$queued" ]; then
    JOB[$stage]=$queued
    echo "$name:$stage: already queued or running as job $queued; not submitted again"
    continue
  fi
  dep=""
  for input in ${inputs//,/ }; do
    [ -n "${JOB[$input]:-}" ] && dep="$dep:${JOB[$input]}"
  done
  opts=(--parsable --job-name="$name:$stage" --nodes="$nodes" --ntasks-per-node="$tasks"
        --gpus-per-node="$tasks" --export=ALL)
  # a dependant of a job that failed for good is cancelled, not left pending for ever
  [ -n "$dep" ] && opts+=(--dependency="afterok$dep" --kill-on-invalid-dep=yes)
  eval "stage_args=($args)"
  # RUN_DIR reaches the job through the environment: --export=ALL,RUN_DIR=... would split a
  # run dir that holds a comma
  id=$(RUN_DIR=$run_dir sbatch "${opts[@]}" "${SBATCH_OPTS[@]}" "$script" "${stage_args[@]}")
  JOB[$stage]=${id%%;*}
  echo "$name:$stage: $label -> job ${JOB[$stage]}${dep:+ (after ${dep#:})}"
done < "$lines"
