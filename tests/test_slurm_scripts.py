"""The Slurm scripts' shell logic, with stand-ins for srun/scontrol/python on PATH: one task per
GPU gets RANK/LOCAL_RANK/WORLD_SIZE from Slurm, srun is given the CPUs per task, and a run that
stopped on a preemption signal requeues the job (a stale marker from an earlier job does not).
submit_pipeline.sh against a stand-in scheduler (sbatch/scontrol/squeue that record their
arguments and run the job): the afterok chain, skip-finished, a requeued stage holding its
dependants, a configuration error releasing nothing, refusal of a changed stage and --force."""
from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from test_safety import files, record, snapshot

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


# ----------------------------------------------------------------------------- pipeline chain
# A tiny scheduler: sbatch runs the job at once (its output to a log), after checking that every
# afterok dependency completed with 0; a job that asked `scontrol requeue` for itself runs
# again under the same id before sbatch returns, so its dependants see it only once it
# completes. States: STATE/<id> = the exit code, or "never" (a dependency failed: cancelled).
SBATCH = r"""#!/usr/bin/env bash
echo "sbatch RUN_DIR=$RUN_DIR $*" >> "$CALLS"
deps="" name="" run_dir=$RUN_DIR  # sbatch --export=ALL: the job sees the submitter's environment
while [[ "$1" == -* ]]; do
  case "$1" in
    --dependency=afterok:*) deps=${1#--dependency=afterok:} ;;
    --job-name=*) name=${1#--job-name=} ;;
  esac
  shift
done
script=$1; shift
id=$(( $(cat "$STATE/last" 2>/dev/null || echo 0) + 1 )); echo $id > "$STATE/last"
for d in ${deps//:/ }; do
  if [ "$(cat "$STATE/$d")" != 0 ]; then echo never > "$STATE/$id"; echo $id; exit 0; fi
done
for attempt in 1 2 3 4 5; do
  rc=0
  SLURM_JOB_ID=$id SLURM_JOB_NAME=$name RUN_DIR=$run_dir SLURM_JOB_NODELIST=node1 SLURM_CPUS_PER_TASK=2 \
    SLURM_SUBMIT_DIR=$PWD bash "$script" "$@" >> "$STATE/$id.out" 2>&1 || rc=$?
  [ -f "$STATE/requeue-$id" ] || break
  rm "$STATE/requeue-$id"
done
echo $rc > "$STATE/$id"
echo $id
"""
SCONTROL_Q = """#!/usr/bin/env bash
if [ "$1" = show ]; then echo node1; exit 0; fi
echo "scontrol $*" >> "$CALLS"
[ "$1" = requeue ] && touch "$STATE/requeue-$2"
"""
SQUEUE = """#!/usr/bin/env bash
echo "squeue $*" >> "$CALLS"
cat "$STATE/squeue" 2>/dev/null || true
"""
# Stands in for the stage trainers (launch/*.py): writes what a completed stage leaves (or
# PREEMPTED once / ERROR, on request); anything else is the real interpreter (giant's plan).
PY_STAGE = r"""#!/usr/bin/env bash
case "$1" in launch/*) ;; *) exec "$REAL_PYTHON" "$@" ;; esac
echo "python RANK=$RANK WORLD_SIZE=$WORLD_SIZE $*" >> "$CALLS"
run="" prev=""
for a in "$@"; do
  case "$a" in stage.run_dir=*) run="${a#stage.run_dir=}";; esac
  [ "$prev" = --out ] && run=$a
  prev=$a
done
stage=$(basename "$run")
mkdir -p "$run"
if [ "$stage" = "${FAKE_PREEMPT_ONCE:-}" ] && [ ! -f "$run/.was_preempted" ]; then
  touch "$run/.was_preempted"; echo signal:SIGUSR1 > "$run/PREEMPTED"; exit 0
fi
if [ "$stage" = "${FAKE_ERROR:-}" ]; then echo "ConfigError: bad value" > "$run/ERROR"; exit 2; fi
if [ "$1" = launch/evaluate.py ]; then echo '{"top1": 90.0, "top5": 100.0}' > "$run/results.json"; echo x > "$run/scores.npz"; exit 0; fi
echo '{"reason": "completed", "steps": 4, "last_loss": 0.5}' > "$run/summary.json"
echo '{}' > "$run/model.json"; echo x > "$run/weights.safetensors"
"""
PIPELINE = """name: t
root: runs/t
defaults: {gpus: 2}
stages:
  - {name: pretrain, kind: pretrain, recipe: launch/recipes/demo_pretrain.yaml}
  - {name: ft, kind: finetune, recipe: launch/recipes/demo_finetune.yaml, init_from: pretrain,
     overrides: {optim.total_steps: 40}}
  - {name: ev, kind: evaluate, target: ft}
"""


def _setup(root: Path) -> None:
    """A giant root: a copy of launch/ and ds_configs/, the fake scheduler in ../bin."""
    bin_dir, state = root.parent / "bin", root.parent / "state"
    if not (root / "launch").exists():  # (a test may have put a p.yaml or run dirs there first)
        shutil.copytree(REPO / "launch", root / "launch", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(REPO / "ds_configs", root / "ds_configs")
        bin_dir.mkdir(exist_ok=True)
        state.mkdir(exist_ok=True)
        for name, text in (("sbatch", SBATCH), ("scontrol", SCONTROL_Q), ("squeue", SQUEUE),
                           ("srun", SRUN), ("python", PY_STAGE)):
            _tool(bin_dir, name, text)
    if not (root / "p.yaml").exists():
        (root / "p.yaml").write_text(PIPELINE)


def _submit(root: Path, *args: str, **fake: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """launch/slurm/submit_pipeline.sh on a copy of launch/ with the fake scheduler on PATH."""
    _setup(root)
    bin_dir, state = root.parent / "bin", root.parent / "state"
    calls = root.parent / "calls.log"
    calls.write_text("")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls), "STATE": str(state),
           "REAL_PYTHON": sys.executable, "PYTHONPATH": str(REPO), "HOME": str(root.parent),
           "GIANT_ROOT": str(root), **fake}
    proc = subprocess.run(["bash", str(root / "launch/slurm/submit_pipeline.sh"), "p.yaml", *args],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)
    return proc, calls.read_text().splitlines()


def _state(root: Path, job: int) -> str:
    return (root.parent / "state" / str(job)).read_text().strip()


def test_submit_chain_dependencies_then_skip_finished(tmp_path):
    root = tmp_path / "giant"
    proc, calls = _submit(root)
    assert proc.returncode == 0, proc.stderr
    sb = [c for c in calls if c.startswith("sbatch")]
    assert len(sb) == 3
    assert "--job-name=t:pretrain" in sb[0] and "--dependency" not in sb[0]
    assert "--job-name=t:ft" in sb[1] and "--dependency=afterok:1 --kill-on-invalid-dep=yes" in sb[1]
    assert "--job-name=t:ev" in sb[2] and "--dependency=afterok:2 " in sb[2]
    assert "--nodes=1 --ntasks-per-node=2" in sb[0] and "--export=ALL " in sb[0]
    assert sb[0].startswith("sbatch RUN_DIR=runs/t/pretrain ")  # by the environment: commas survive
    assert sb[0].endswith("launch/slurm/pretrain.sbatch launch/recipes/demo_pretrain.yaml "
                          "ds_configs/zero2.json stage.run_dir=runs/t/pretrain")
    assert sb[1].endswith("launch/slurm/finetune.sbatch launch/recipes/demo_finetune.yaml ds_configs/zero2.json "
                          "optim.total_steps=40 stage.run_dir=runs/t/ft checkpoint.init_from=runs/t/pretrain")
    assert sb[2].endswith("launch/slurm/evaluate.sbatch runs/t/ft")
    py = [c for c in calls if c.startswith("python")]
    assert py[0].startswith("python RANK=0 WORLD_SIZE=1 launch/pretrain.py --recipe launch/recipes/demo_pretrain.yaml")
    assert py[2] == "python RANK=0 WORLD_SIZE=1 launch/evaluate.py runs/t/ft --out runs/t/ev"
    assert [_state(root, j) for j in (1, 2, 3)] == ["0", "0", "0"]
    assert not any(c.startswith("scontrol") for c in calls)
    assert json.loads((root / "runs/t/ft/pipeline_stage.json").read_text())["stage"] == "ft"

    proc, calls = _submit(root)  # everything done: nothing submitted
    assert proc.returncode == 0, proc.stderr
    assert not any(c.startswith("sbatch") for c in calls)
    assert proc.stdout.count("done, skipped") == 3


def test_preempted_stage_requeues_and_dependants_wait(tmp_path):
    root = tmp_path / "giant"
    proc, calls = _submit(root, FAKE_PREEMPT_ONCE="ft")
    assert proc.returncode == 0, proc.stderr
    ft_runs = [i for i, c in enumerate(calls) if c.startswith("python") and "launch/finetune.py" in c]
    ev_run = next(i for i, c in enumerate(calls) if c.startswith("python") and "launch/evaluate.py" in c)
    assert len(ft_runs) == 2 and calls[ft_runs[0] + 1] == "scontrol requeue 2"  # same job id again
    assert ft_runs[1] < ev_run  # the evaluation (afterok:2) ran only after the requeued job completed
    assert [_state(root, j) for j in (1, 2, 3)] == ["0", "0", "0"]
    assert not (root / "runs/t/ft/PREEMPTED").exists()


def test_configuration_error_neither_requeues_nor_releases_dependants(tmp_path):
    root = tmp_path / "giant"
    proc, calls = _submit(root, FAKE_ERROR="ft")
    assert proc.returncode == 0, proc.stderr  # submission itself succeeded
    assert not any(c.startswith("scontrol") for c in calls)
    assert [_state(root, j) for j in (1, 2, 3)] == ["0", "2", "never"]
    assert not any("launch/evaluate.py" in c for c in calls)
    proc, calls = _submit(root)  # fixed: re-submitting skips pretrain, reruns ft, then ev
    assert proc.returncode == 0, proc.stderr
    sb = [c for c in calls if c.startswith("sbatch")]
    assert len(sb) == 2 and "--job-name=t:ft" in sb[0] and "--dependency" not in sb[0]
    assert "--dependency=afterok:4 " in sb[1]


def test_changed_finished_stage_is_refused_then_forced(tmp_path):
    root = tmp_path / "giant"
    assert _submit(root)[0].returncode == 0
    (root / "p.yaml").write_text(PIPELINE.replace("optim.total_steps: 40", "optim.total_steps: 50"))
    proc, calls = _submit(root)
    assert proc.returncode == 2
    assert "optim.total_steps: 40 → 50" in proc.stderr and "--force" in proc.stderr
    assert not any(c.startswith("sbatch") for c in calls)
    proc, calls = _submit(root, "--force", "ft")
    assert proc.returncode == 0, proc.stderr
    sb = [c for c in calls if c.startswith("sbatch")]
    assert [s.split("--job-name=")[1].split()[0] for s in sb] == ["t:ft", "t:ev"]
    assert "pretrain: done, skipped" in proc.stdout.replace("t:", "")


def test_stage_already_queued_is_not_submitted_twice(tmp_path):
    root = tmp_path / "giant"
    (tmp_path / "state").mkdir(parents=True)
    (tmp_path / "state" / "squeue").write_text("77\n")  # every name "has" job 77 queued
    (tmp_path / "state" / "77").write_text("0\n")
    proc, calls = _submit(root)
    assert proc.returncode == 0, proc.stderr
    assert not any(c.startswith("sbatch") for c in calls)
    assert proc.stdout.count("already queued or running as job 77") == 3


# ----------------------------------------------------------------------------- deletion rule
def _refused_cases(tmp_path: Path) -> list[tuple[str, Path, str, str]]:
    """(pipeline text, folder of the user's files, stage to force, what the refusal says): each
    built in its own giant root under tmp_path."""
    cases = []
    for kind in ("files", "link", "other_pipeline", "dot", "dotdot"):
        root = tmp_path / kind / "giant"
        text, stage = PIPELINE, "ft"
        if kind == "files":
            folder, why = root / "runs/t/ft", "runs/t/ft holds files this pipeline did not write"
        elif kind == "link":
            folder = tmp_path / kind / "elsewhere"
            (root / "runs/t").mkdir(parents=True)
            (root / "runs/t/ft").symlink_to(folder)
            why = f"runs/t/ft (→ {folder}) holds files"
        elif kind == "other_pipeline":
            folder, why = root / "runs/t/ft", "holds stage 'ft' of pipeline 'other'"
            record(folder, pipeline="other", stage="ft")
        elif kind == "dot":
            folder, why = root, "run_dir . holds the pipeline root"
            text = PIPELINE.replace("init_from: pretrain,", "init_from: pretrain, run_dir: .,")
        else:  # the root's parent, runs/
            folder, why, stage = root / "runs", "and not '.' or '..'", ".."
            text = PIPELINE.replace("name: ft,", "name: '..',").replace("target: ft", "target: '..'")
        folder.mkdir(parents=True, exist_ok=True)
        (root / "p.yaml").write_text(text)
        cases.append((root, folder, stage, why))
    return cases


def test_submit_refuses_what_the_pipeline_did_not_create_and_deletes_nothing(tmp_path):
    for root, folder, stage, why in _refused_cases(tmp_path):
        _setup(root)
        before = files(folder)
        for args in ((), ("--force", stage)):
            proc, calls = _submit(root, *args)
            assert proc.returncode == 2, (root, proc.stdout, proc.stderr)
            assert why in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
            assert not any(c.startswith("sbatch") for c in calls)
            assert snapshot(folder) == before, root


def test_submit_force_deletes_its_own_stage_and_never_a_protected_one(tmp_path):
    root = tmp_path / "giant"
    assert _submit(root)[0].returncode == 0
    (root / "runs/t/ft/stale.txt").write_text("from the first run\n")
    beside = files(root / "runs/t/notes")  # the user's files next to the run dirs
    proc, calls = _submit(root, "--force", "ft")
    assert proc.returncode == 0, proc.stderr
    assert f"stage ft: deleting {(root / 'runs/t/ft').resolve()}" in proc.stderr
    assert not (root / "runs/t/ft/stale.txt").exists() and (root / "runs/t/ft/summary.json").is_file()
    assert snapshot(root / "runs/t/notes") == beside

    home = tmp_path / "home"  # a run dir that is $HOME, with a record that says it is stage ft
    record(home, pipeline="t", stage="ft")
    kept = files(home)
    (root / "p.yaml").write_text(PIPELINE.replace("init_from: pretrain,", f"init_from: pretrain, run_dir: {home},"))
    proc, calls = _submit(root, "--force", "ft", HOME=str(home))
    assert proc.returncode == 2 and "which giant never deletes" in proc.stderr, proc.stderr
    assert not any(c.startswith("sbatch") for c in calls) and snapshot(home) == kept
