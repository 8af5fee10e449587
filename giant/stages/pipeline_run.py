"""Running the progressive pipeline stage by stage (`giant pipeline`, giant/commands/pipeline.py).

`run_pipeline` launches each stage that is not done as a subprocess with the named launcher, in its own
process group (a stop signal to `giant pipeline` is forwarded to the whole stage: launcher,
ranks, loader workers; Ctrl-C becomes SIGTERM, so the stage saves and can resume), skips done
stages, relaunches a partial one (it resumes from its own checkpoint), and stops at the first
stage that fails or is interrupted. Exit codes: 0 every stage done; a failing stage's own exit
code; 3 a stage was interrupted or stopped early (re-run the same command to resume). A stage's
output goes to RUN_DIR/stage.log; what the console shows is giant/stages/pipeline_console.py.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Callable, Optional

from giant import safety
from giant.console import out
from giant.errors import ConfigError, GiantError
from giant.stages.pipeline import Pipeline, Resolved, input_errors, load_pipeline, resolve
from giant.stages.pipeline_console import LOG, StageConsole, log_tail, open_log, tee, took
from giant.stages.pipeline_state import (State, artifact_complete, deletion, downstream, mark_completed,
                                         plan_numbers, planned_state, read_json, read_record, status_row,
                                         write_record)
from giant.stages.registry import KINDS

LAUNCHERS = ("deepspeed", "torchrun", "srun", "python")
INTERRUPTED = 3
REPO = Path(__file__).resolve().parents[2]
# srun starts one task per GPU; each takes its rank from Slurm (as launch/slurm/env.sh does)
SRUN_RANKS = 'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS; exec "$@"'


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _script(script: str) -> str:
    """launch/<kind>.py relative to the cwd (where the pipeline's relative paths live), else the
    source checkout's."""
    return script if Path(script).is_file() else str(REPO / script)


def command(launcher: str, nproc: int, port: int, script: str, args: list[str]) -> tuple[list[str], dict]:
    """The argv and environment that start `script args` on `nproc` ranks with `launcher`."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    script, py = _script(script), sys.executable
    if launcher == "python":
        return [py, script, *args], env
    if launcher == "torchrun":
        return [py, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
                str(port), script, *args], env
    if launcher == "deepspeed":
        exe = shutil.which("deepspeed") or str(Path(py).parent / "deepspeed")
        return [exe, "--num_gpus", str(nproc), "--master_port", str(port), script, *args], env
    if launcher == "srun":
        env.setdefault("MASTER_ADDR", _first_host())
        env["MASTER_PORT"] = str(port)
        # srun does not inherit the allocation's --cpus-per-task (Slurm >= 22.05): pass it on
        cpus = [f"--cpus-per-task={env['SLURM_CPUS_PER_TASK']}"] if env.get("SLURM_CPUS_PER_TASK") else []
        return ["srun", f"--ntasks={nproc}", *cpus, "--kill-on-bad-exit=1", "--export=ALL", "bash", "-c",
                SRUN_RANKS, "_", py, script, *args], env
    raise ConfigError(f"--launcher {launcher!r}: use one of {', '.join(LAUNCHERS)}")


def _first_host() -> str:
    nodes = os.environ.get("SLURM_JOB_NODELIST")
    if nodes:
        try:
            return subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True,
                                  text=True, check=True).stdout.split()[0]
        except (OSError, subprocess.CalledProcessError, IndexError):
            pass
    import socket

    return socket.gethostname()


def run_child(cmd: list[str], env: dict, log: Optional[IO[bytes]] = None, verbose: bool = False,
              tick: Optional[Callable[[], None]] = None, every: float = 1.0) -> tuple[int, Optional[str]]:
    """Run one stage in its own process group; forward stop signals to the whole group. Its
    stdout+stderr go to `log` when given (with `verbose`, to the console too), else to ours;
    `tick` runs every `every` seconds while it runs. → (exit code, first signal's name or None)."""
    piped = log is not None and verbose
    proc = subprocess.Popen(cmd, env=env, start_new_session=True,
                            stdout=subprocess.PIPE if piped else log,
                            stderr=None if log is None else subprocess.STDOUT)
    pump = tee(proc.stdout, log, sys.stdout) if piped else None
    got: list[str] = []

    def forward(signum: int, _frame) -> None:
        got.append(signal.Signals(signum).name)
        sig = signum
        if signum == signal.SIGINT:  # Ctrl-C: let the stage save (SIGTERM); a second one kills it
            sig = signal.SIGKILL if got.count("SIGINT") > 1 else signal.SIGTERM
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    try:
        while True:
            try:
                rc = proc.wait(timeout=every if tick else None)
                break
            except subprocess.TimeoutExpired:
                tick()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if pump is not None:  # the rest of the output (a rank that outlives its launcher: not waited for)
            pump.join(timeout=10)
    return rc, (got[0] if got else None)


# ----------------------------------------------------------------------------- run
def world_size(r: Resolved, nproc: Optional[int], launcher: Optional[str] = None) -> int:
    """Ranks of one stage: 1 with the python launcher, else --nproc or the stage's `gpus`."""
    if launcher == "python":
        return 1
    return nproc or r.spec.gpus


def _refusal(pipe: Pipeline, bad: list[tuple[Resolved, State]]) -> str:
    lines = []
    for r, st in bad:
        after = downstream(pipe, [r.spec.name])
        if st.status == "unrecorded":  # --force cannot help: giant never deletes what it did not create
            lines.append(f"stage {r.spec.name!r}: {st.note}")
            continue
        if st.status == "changed":
            lines.append(f"stage {r.spec.name!r} ({r.spec.run_dir}) was produced from another config than "
                         f"{pipe.path} now gives it; changed: " + "; ".join(st.changed))
        else:
            lines.append(f"stage {r.spec.name!r}: {st.note}")
        lines.append(f"  revert the change, or add --force {r.spec.name} to redo it and every stage after "
                     f"it ({', '.join(after)}); its run dir is deleted first")
    return "\n".join(lines)


def deletions(pipe: Pipeline, resolved: list[Resolved], states: dict[str, State],
              forced: list[str]) -> tuple[dict[str, Path], dict[str, str]]:
    """What run --force and the redone evaluations delete, by giant.safety's rule (checked
    before anything is deleted). → ({stage: folder}, {stage: refusal})."""
    doomed, refused = {}, {}
    for r in resolved:
        st = states[r.spec.name]
        if (r.spec.name in forced or st.redo) and st.status not in ("error", "unrecorded"):
            try:
                path = deletion(pipe, r)
            except GiantError as exc:
                refused[r.spec.name] = str(exc)
                continue
            if path is not None:
                doomed[r.spec.name] = path
    return doomed, refused


def prepare(pipe: Pipeline, force: list[str]) -> tuple[list[Resolved], dict[str, State], list[str], dict]:
    """Resolve every stage and decide what to do; raises (before anything runs or is deleted) on
    an invalid stage, a done stage whose config changed, a run dir this stage did not write, or a
    deletion giant.safety refuses. → (stages, states, forced names, {stage: folder to delete})."""
    forced = downstream(pipe, force)
    resolved = resolve(pipe)
    errors = [f"stage {r.spec.name}: {r.error}" for r in resolved if r.error]
    if errors:
        raise ConfigError(f"{pipe.path}: " + "\n".join(errors))
    states = {r.spec.name: planned_state(r, r.spec.name in forced) for r in resolved}
    bad = [(r, states[r.spec.name]) for r in resolved if states[r.spec.name].status in ("changed", "unrecorded")]
    if bad:
        raise ConfigError(_refusal(pipe, bad))
    doomed, refused = deletions(pipe, resolved, states, forced)
    if refused:
        raise safety.DeletionRefused("\n".join(f"stage {n!r}: {why}" for n, why in refused.items()))
    # outside inputs of the stages still to run (manifests, weights): wrong ones fail now, not
    # after the stages before them have trained
    errors = input_errors(resolved, {n for n, s in states.items() if s.status != "done"})
    if errors:
        raise ConfigError(f"{pipe.path}: " + "\n".join(errors))
    return resolved, states, forced, doomed


def run_pipeline(file: str, force: list[str], launcher: str, nproc: Optional[int] = None,
                 master_port: Optional[int] = None, verbose: bool = False) -> int:
    """Run every stage that is not done, in order; 0 when all are done, else the exit code."""
    pipe = load_pipeline(file)
    resolved, states, forced, doomed = prepare(pipe, force)
    now = [name for name in forced if name in doomed]
    for name in now:  # the whole list first, then the deletions
        out(f"[{name}] --force: will delete {doomed[name]}")
    for name in now:
        safety.remove_run_dir(pipe.stage(name).run_dir, pipe.name, name, pipe.protected())
    told = False
    for r in resolved:
        name, st = r.spec.name, states[r.spec.name]
        if st.status == "done":
            if not st.reused:  # another pipeline's record is not this one's to write
                mark_completed(r.spec.run_dir)
            out(f"[{name}] done, skipped ({r.spec.run_dir})" + (f": {st.note}" if st.reused else ""))
            continue
        if st.redo and name in doomed:
            out(f"[{name}] {st.note} ({'; '.join(st.changed)}): deleting {doomed[name]}")
            safety.remove_run_dir(r.spec.run_dir, pipe.name, name, pipe.protected())
        if not told:
            out(f"each stage's full output goes to its run dir's {LOG} ({r.spec.run_dir / LOG}, ...)"
                + ("" if verbose else "; --verbose shows it here too"))
            told = True
        out(f"[{name}] {st.label()}: {'resuming' if st.status == 'partial' else 'starting'} {r.spec.kind}")
        rc = launch(r, pipe, launcher, nproc, master_port, verbose)
        if rc:
            return rc
    out(f"\nevery stage of {pipe.name} is done")
    return 0


def _attempt(r: Resolved, pipe: Pipeline, cmd: list[str], env: dict, verbose: bool) -> tuple[int, Optional[str], StageConsole]:
    """One run of the stage, its output appended to RUN_DIR/stage.log: only into the run dir
    whose record (written just before) names this stage, never into a folder giant did not record."""
    run_dir, name = r.spec.run_dir, r.spec.name
    if safety.read_owner(run_dir) != (pipe.name, name):
        raise GiantError(f"{run_dir}: its {safety.RECORD} does not name stage {name!r} of {pipe.name!r}; "
                         "nothing launched or written there")
    trains = KINDS[r.spec.kind].trains
    total = r.cfg.optim.total_steps if trains and r.cfg is not None else None
    console = StageConsole(name, run_dir, total, trains)
    env = {**env, "PYTHONUNBUFFERED": env.get("PYTHONUNBUFFERED", "1")}  # stage.log as it happens (tail -f)
    with open_log(run_dir, cmd) as log:
        if verbose:
            out(f"[{name}] $ {shlex.join(cmd)}")
        rc, sig = run_child(cmd, env, log, verbose, None if verbose else console.tick, console.poll)
    console.clear()
    return rc, sig, console


def launch(r: Resolved, pipe: Pipeline, launcher: str, nproc: Optional[int] = None,
           master_port: Optional[int] = None, verbose: bool = False) -> int:
    """Run one stage to its end; 0 when its artifact is complete, else the code to exit with."""
    run_dir, name, world = r.spec.run_dir, r.spec.name, world_size(r, nproc, launcher)
    rec = read_record(run_dir)
    if rec is None or rec.get("hash") != r.hash:
        write_record(r, pipe, launcher=launcher, world_size=world)
    for marker in ("PREEMPTED", "ERROR"):  # an earlier attempt's; this one decides anew
        (run_dir / marker).unlink(missing_ok=True)
    cmd, env = command(launcher, world, master_port or _free_port(), r.script, r.args)
    rc, sig, console = _attempt(r, pipe, cmd, env, verbose)
    log = run_dir / LOG
    if sig or (run_dir / "PREEMPTED").is_file():  # launchers exit non-zero after a signal
        out(f"[{name}] interrupted ({sig or 'PREEMPTED'}, exit {rc}): re-run the same command to resume "
            f"from its checkpoint ({run_dir}); its output: {log}", err=True)
        return INTERRUPTED
    if rc != 0:
        error = (run_dir / "ERROR").read_text().strip() if (run_dir / "ERROR").is_file() else ""
        tail = [] if verbose else log_tail(log)
        if tail:
            out(f"[{name}] the last {len(tail)} lines of {log}:\n" + "\n".join(f"    {line}" for line in tail),
                err=True)
        out(f"[{name}] failed with exit code {rc} after {took(console.elapsed())}; run dir {run_dir}; "
            f"full output: {log}" + (f"\n[{name}] ERROR: {error}" if error else
                                     " (see the log above)" if verbose else ""), err=True)
        return rc
    if not artifact_complete(r.spec.kind, run_dir):
        summary = read_json(run_dir / "summary.json") or {}
        out(f"[{name}] stopped before its end ({summary.get('reason', 'no summary.json')} at step "
            f"{summary.get('steps', '?')}): re-run the same command to continue; its output: {log}", err=True)
        return INTERRUPTED
    mark_completed(run_dir)
    out(console.final(status_row(r)))
    return 0


# ----------------------------------------------------------------------------- plan / status
def plan_rows(pipe: Pipeline, force: list[str], nproc: Optional[int] = None, flops: bool = True) -> list[dict]:
    """One dict per stage: what `plan` shows and launch/slurm/submit_pipeline.sh reads."""
    forced = downstream(pipe, force)
    resolved = resolve(pipe)
    by_name = {r.spec.name: r for r in resolved}
    states = {r.spec.name: planned_state(r, r.spec.name in forced) for r in resolved}
    doomed, refused = deletions(pipe, resolved, states, forced)
    rows = []
    for r in resolved:
        st = states[r.spec.name]
        world = world_size(r, nproc)
        error = r.error or refused.get(r.spec.name)
        row = {"name": r.spec.name, "kind": r.spec.kind, "status": st.status, "label": st.label(),
               "step": st.step, "changed": st.changed, "note": st.note, "error": error,
               "delete": str(doomed[r.spec.name]) if r.spec.name in doomed else None,
               "run_dir": str(r.spec.run_dir), "script": r.script, "args": r.args, "hash": r.hash,
               "sbatch": KINDS[r.spec.kind].sbatch, "sbatch_args": r.sbatch_args,
               "forced": r.spec.name in forced or st.redo,  # submit_pipeline.sh clears the run dir
               "inputs": sorted({v for v in r.spec.inputs.values() if isinstance(v, str)}),
               "nodes": math.ceil(world / pipe.gpus_per_node), "tasks_per_node": min(world, pipe.gpus_per_node),
               "record": {"pipeline": pipe.name, "pipeline_file": str(pipe.path), "stage": r.spec.name,
                          "kind": r.spec.kind, "hash": r.hash, "config": r.tree, "launcher": "sbatch",
                          "world_size": world, "completed_at": None},
               **plan_numbers(r, world, by_name, flops=flops)}
        rows.append(row)
    return rows


def memory_warnings(pipe: Pipeline, gpu_mem: Optional[float], nproc: Optional[int] = None) -> list[str]:
    """`plan --gpu-mem GiB`: a line for each training stage giant.memory says will not fit."""
    if not gpu_mem:
        return []
    from giant.memory import KINDS as PLANNED, fit_warning, stage_from_config
    from giant.stages.pipeline_state import _input_model

    resolved = resolve(pipe)
    by_name = {r.spec.name: r for r in resolved}
    lines = []
    for r in resolved:
        if r.cfg is None or r.error or r.spec.kind not in PLANNED:
            continue
        source = r.spec.inputs.get("teacher")  # a kind that takes a teacher holds it in memory too
        try:
            teacher = _input_model(source, by_name) if source else None
            stage = stage_from_config(r.cfg, r.spec.kind, world_size(r, nproc), teacher=teacher)
            warning = fit_warning(stage, gpu_mem)
        except GiantError as exc:
            warning = f"memory not estimated: {exc}"
        if warning:
            lines.append(f"  {r.spec.name}: {warning}")
    return lines


def write_status(pipe: Pipeline, json_path: Optional[str] = None) -> tuple[list[dict], Path]:
    """Every stage's final metrics, also written to json_path (default ROOT/status.json)."""
    rows = [status_row(r) for r in resolve(pipe)]
    path = Path(json_path or pipe.root / "status.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pipeline": pipe.name, "file": str(pipe.path), "stages": rows}, indent=1) + "\n")
    return rows, path


def check_launcher(launcher: str) -> None:
    """A launcher binary that is not there is one line before anything is planned or written
    (python and torchrun are this interpreter)."""
    if launcher not in ("srun", "deepspeed"):
        return
    if shutil.which(launcher) or (launcher == "deepspeed" and (Path(sys.executable).parent / "deepspeed").is_file()):
        return
    fix = ("run inside a Slurm allocation, or pick --launcher deepspeed, torchrun or python" if launcher == "srun"
           else "pip install deepspeed, or pick --launcher torchrun or python")
    raise ConfigError(f"--launcher {launcher}: {launcher} is not on PATH ({fix})")

