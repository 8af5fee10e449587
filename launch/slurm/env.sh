#!/usr/bin/env bash
# Shared by every giant sbatch script: rendezvous, NCCL and cache settings for one task per GPU.
# Source it from the batch script; `giant_srun CMD...` then starts CMD once per GPU with
# RANK/LOCAL_RANK/WORLD_SIZE taken from Slurm, so SIGUSR1/SIGTERM reach the Python processes
# directly (no launcher in between that would swallow them).
set -euo pipefail

GIANT_ROOT=${GIANT_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
cd "$GIANT_ROOT"
[ -f .venv/bin/activate ] && . .venv/bin/activate

export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$GIANT_ROOT/.cache/torch_extensions}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
export NCCL_ASYNC_ERROR_HANDLING=1
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
# Set NCCL_SOCKET_IFNAME / NCCL_IB_HCA for your fabric here if auto-detection picks wrong.

giant_srun() {
  # srun does not inherit sbatch's --cpus-per-task (Slurm >= 22.05): pass it, or every task
  # gets one core and its loader workers starve the GPU.
  srun --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" --kill-on-bad-exit=1 --export=ALL bash -c \
    'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS; exec "$@"' _ "$@"
}

# After the job step ends: if training stopped on a preemption/timeout signal it leaves
# RUN_DIR/PREEMPTED; requeue so the next allocation auto-resumes from the latest checkpoint.
giant_requeue_if_preempted() {
  local run_dir=$1
  if [ -f "$run_dir/PREEMPTED" ]; then
    rm -f "$run_dir/PREEMPTED"
    echo "giant: preempted, requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
  fi
}
