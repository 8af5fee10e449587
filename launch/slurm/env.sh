#!/usr/bin/env bash
# Shared by every giant sbatch script: rendezvous, NCCL and cache settings for one task per GPU.
# Source it from the batch script; `giant_srun CMD...` then starts CMD once per GPU with
# RANK/LOCAL_RANK/WORLD_SIZE taken from Slurm, so SIGUSR1/SIGTERM reach the Python processes
# directly (no launcher in between with a grace period of its own). Slurm signals every process
# of the step, data-loader workers included: workers leave the signal to their rank, which
# finishes its step, saves, writes RUN_DIR/PREEMPTED and exits 0 (repeats are ignored).
set -euo pipefail

GIANT_ROOT=${GIANT_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
cd "$GIANT_ROOT"
[ -f .venv/bin/activate ] && . .venv/bin/activate

export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$GIANT_ROOT/.cache/torch_extensions}
# Intra-op threads of each rank: the CPUs Slurm grants the task (--cpus-per-task; 1 when it is
# not set, as giant_srun asks for then). Loader workers run one thread each (giant/data/loader.py).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export NCCL_ASYNC_ERROR_HANDLING=1
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
# Set NCCL_SOCKET_IFNAME / NCCL_IB_HCA for your fabric here if auto-detection picks wrong.

giant_srun() {
  # srun does not inherit sbatch's --cpus-per-task (Slurm >= 22.05): pass it, or every task
  # gets one core and its loader workers starve the GPU.
  srun --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" --kill-on-bad-exit=1 --export=ALL bash -c \
    'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS; exec "$@"' _ "$@"
}

# After the job step ends (RUN_DIR, the step's exit code):
# - training stopped on a preemption/timeout signal (it leaves RUN_DIR/PREEMPTED): requeue, and
#   the next allocation auto-resumes from the latest checkpoint;
# - it crashed (a dead node, an NCCL timeout, a killed rank: any exit code but 0 and giant's 2,
#   and no RUN_DIR/ERROR, which giant writes for an error a person must fix): requeue too, but at most GIANT_MAX_CRASH_RESTARTS
#   (default 3) times in a row without a new checkpoint, so a crash that repeats at the same
#   step does not loop forever. RUN_DIR/CRASH_RESTARTS holds "count latest-tag".
giant_requeue() {
  local run_dir=$1 rc=$2
  if [ -f "$run_dir/PREEMPTED" ]; then
    rm -f "$run_dir/PREEMPTED"
    echo "giant: preempted, requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    return 0
  fi
  if [ -f "$run_dir/ERROR" ]; then   # giant explained it in one line; requeueing cannot help
    echo "giant: not requeueing: $(cat "$run_dir/ERROR")" >&2
    return 0
  fi
  [ "$rc" -eq 0 ] || [ "$rc" -eq 2 ] && return 0
  local max=${GIANT_MAX_CRASH_RESTARTS:-3} state="$run_dir/CRASH_RESTARTS" count=0 last="" latest
  latest=$(cat "$run_dir/checkpoints/latest" 2>/dev/null || echo none)
  [ -f "$state" ] && read -r count last < "$state"
  [ "$last" = "$latest" ] || count=0   # a new checkpoint since the last crash: progress
  if [ "$count" -ge "$max" ]; then
    echo "giant: exit $rc after $count restarts without a new checkpoint (latest: $latest); not" \
         "requeueing - fix the cause, then sbatch again (it resumes)" >&2
    return 0
  fi
  mkdir -p "$run_dir"
  echo "$((count + 1)) $latest" > "$state"
  echo "giant: job step failed (exit $rc); requeue $((count + 1))/$max, resuming from $latest"
  scontrol requeue "$SLURM_JOB_ID"
}

# A time limit that leaves no room before the checkpoint signal (`sbatch --time=10` on a script
# with --signal=USR1@600): Slurm would signal the job as it starts and every requeue would train
# a step or none, so the stage refuses with exit 2 before starting anything. The lead is
# GIANT_SIGNAL_LEAD (submit_pipeline.sh sets it from its own --signal), else SBATCH_SIGNAL, else
# the batch script's #SBATCH --signal line. Slurm signals up to 30 s early: at least 30 s must
# be left.
giant_seconds() {  # squeue's %l (M:SS, H:MM:SS, D-HH:MM:SS) -> seconds; nothing for UNLIMITED
  local t=$1 d=0 a b c
  case "$t" in *[!0-9:-]*|"") return 0 ;; *-*) d=${t%%-*}; t=${t#*-} ;; esac
  IFS=: read -r a b c <<< "$t"
  if [ -n "$c" ]; then echo $((d * 86400 + 10#$a * 3600 + 10#$b * 60 + 10#$c))
  elif [ -n "$b" ]; then echo $((d * 86400 + 10#$a * 60 + 10#$b))
  else echo $((d * 86400 + 10#$a * 60)); fi
}

giant_check_time_limit() {
  local lead limit seconds
  lead=${GIANT_SIGNAL_LEAD:-}
  [ -z "$lead" ] && [ -n "${SBATCH_SIGNAL:-}" ] && lead=${SBATCH_SIGNAL##*@}
  [ -z "$lead" ] && lead=$(sed -n 's/^#SBATCH[[:space:]]*--signal=[^@]*@\([0-9]*\).*/\1/p' "$0" 2>/dev/null | tail -n 1)
  case "$lead" in ""|*[!0-9]*) return 0 ;; esac
  limit=$(squeue --noheader --format=%l --jobs="$SLURM_JOB_ID" 2>/dev/null | head -n 1 || true)
  seconds=$(giant_seconds "${limit// /}")
  [ -n "$seconds" ] || return 0
  if [ "$seconds" -lt $((lead + 30)) ]; then
    echo "giant: time limit $limit (${seconds} s) leaves no time before the checkpoint signal," \
         "sent ${lead} s before the end (--signal=...@${lead}): every requeue would train a step or" \
         "none. Give the job at least $((lead + 30)) s (sbatch --time), or a shorter lead: sbatch" \
         "--signal=USR1@N with GIANT_SIGNAL_LEAD=N (submit_pipeline.sh ... -- --signal=USR1@N sets" \
         "it). Nothing was started." >&2
    exit 2
  fi
}

# The whole job step of every stage script: clear the markers of an earlier job (this one
# decides anew), start SCRIPT once per GPU, requeue on preemption or a crash (giant_requeue),
# and exit with the step's code. A requeued job keeps its id, so jobs depending on it with
# --dependency=afterok keep waiting until it really completes.
#   giant_run_stage RUN_DIR launch/<stage>.py ARGS...
giant_run_stage() {
  local run_dir=$1 rc=0
  shift
  giant_check_time_limit
  rm -f "$run_dir/PREEMPTED" "$run_dir/ERROR"
  giant_srun python "$@" || rc=$?
  giant_requeue "$run_dir" "$rc"
  exit "$rc"
}
