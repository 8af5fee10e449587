"""The Slurm scripts' shell logic, with stand-ins for srun/scontrol/python on PATH: one task per
GPU gets RANK/LOCAL_RANK/WORLD_SIZE from Slurm, srun is given the CPUs per task, and a run that
stopped on a preemption signal requeues the job (a stale marker from an earlier job does not)."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SRUN = """#!/usr/bin/env bash
echo "srun $*" >> "$CALLS"
while [[ "$1" == --* ]]; do shift; done   # options, then: bash -c SCRIPT _ CMD...
SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_NTASKS=1 exec "$@"
"""
SCONTROL = """#!/usr/bin/env bash
if [ "$1" = show ]; then echo node1; else echo "scontrol $*" >> "$CALLS"; fi
"""
PYTHON = """#!/usr/bin/env bash
echo "python RANK=$RANK LOCAL_RANK=$LOCAL_RANK WORLD_SIZE=$WORLD_SIZE MASTER_ADDR=$MASTER_ADDR $*" >> "$CALLS"
for a in "$@"; do case "$a" in stage.run_dir=*) run="${a#stage.run_dir=}";; esac; done
mkdir -p "$run"
[ -n "${FAKE_PREEMPT:-}" ] && echo signal:SIGUSR1 > "$run/PREEMPTED"
[ -n "${FAKE_ERROR:-}" ] && echo "DataError: 3 of 8 video reads failed" > "$run/ERROR"
[ -n "${FAKE_LATEST:-}" ] && mkdir -p "$run/checkpoints" && echo "$FAKE_LATEST" > "$run/checkpoints/latest"
exit "${FAKE_RC:-0}"
"""


def _tool(folder: Path, name: str, text: str) -> None:
    path = folder / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _sbatch(tmp: Path, preempt: bool = False, stale_marker: bool = False, rc: int = 0,
            latest: str = "", error: bool = False) -> list[str]:
    """One job (or one requeued restart of it: call again with the same tmp)."""
    root = tmp / "giant"
    bin_dir = tmp / "bin"
    if not root.exists():
        shutil.copytree(REPO / "launch" / "slurm", root / "launch" / "slurm")
        bin_dir.mkdir()
        for name, text in (("srun", SRUN), ("scontrol", SCONTROL), ("python", PYTHON)):
            _tool(bin_dir, name, text)
    calls = tmp / "calls.log"
    calls.write_text("")
    if stale_marker:
        (root / "runs" / "r").mkdir(parents=True)
        (root / "runs" / "r" / "PREEMPTED").write_text("old\n")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls), "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "node1", "SLURM_CPUS_PER_TASK": "12", "GIANT_ROOT": str(root),
           "RUN_DIR": "runs/r", "HOME": str(tmp), "FAKE_RC": str(rc), "FAKE_LATEST": latest,
           **({"FAKE_PREEMPT": "1"} if preempt else {}), **({"FAKE_ERROR": "1"} if error else {})}
    proc = subprocess.run(["bash", str(root / "launch/slurm/pretrain.sbatch")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == rc, proc.stderr
    return calls.read_text().splitlines()


def test_preempted_run_requeues_with_slurm_ranks(tmp_path):
    calls = _sbatch(tmp_path, preempt=True, stale_marker=False)
    assert calls[0].startswith("srun --cpus-per-task=12 --kill-on-bad-exit=1")
    assert calls[1].startswith("python RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 MASTER_ADDR=node1 "
                               "launch/pretrain.py --recipe launch/recipes/pretrain_vitg_hybrid.yaml "
                               "--ds ds_configs/zero2.json stage.run_dir=runs/r")
    assert calls[2] == "scontrol requeue 4242"
    assert not (tmp_path / "giant" / "runs" / "r" / "PREEMPTED").exists()


def test_finished_run_with_stale_marker_does_not_requeue(tmp_path):
    calls = _sbatch(tmp_path, preempt=False, stale_marker=True)
    assert len(calls) == 2 and not any(c.startswith("scontrol") for c in calls)


def test_crash_requeues_while_training_makes_progress(tmp_path):
    requeued = lambda calls: "scontrol requeue 4242" in calls  # noqa: E731
    assert requeued(_sbatch(tmp_path, rc=1, latest="step_00000100"))    # a dead node: restart 1
    assert requeued(_sbatch(tmp_path, rc=137, latest="step_00000100"))  # killed again, same ckpt: 2
    assert requeued(_sbatch(tmp_path, rc=1, latest="step_00000200"))    # progress resets the count
    state = tmp_path / "giant" / "runs" / "r" / "CRASH_RESTARTS"
    assert state.read_text().split() == ["1", "step_00000200"]
    assert requeued(_sbatch(tmp_path, rc=1, latest="step_00000200"))
    assert requeued(_sbatch(tmp_path, rc=1, latest="step_00000200"))
    assert not requeued(_sbatch(tmp_path, rc=1, latest="step_00000200"))  # 3 in a row: a person looks


def test_user_error_exit_2_never_requeues(tmp_path):
    assert not any(c.startswith("scontrol") for c in _sbatch(tmp_path, rc=2))
    # srun reports the killed peers' code, not giant's 2: the ERROR marker decides
    assert not any(c.startswith("scontrol") for c in _sbatch(tmp_path, rc=137, error=True))
    # an ERROR left by an earlier job does not stop this job's crash restart
    assert "scontrol requeue 4242" in _sbatch(tmp_path, rc=1)
