"""`giant pipeline run|plan|status PIPELINE.yaml`: run the progressive pipeline stage by stage.

`run` launches each stage that is not done as a subprocess with the named launcher, in its own
process group (a stop signal to `giant pipeline` is forwarded to the whole stage: launcher,
ranks, loader workers; Ctrl-C becomes SIGTERM, so the stage saves and can resume), skips done
stages, relaunches a partial one (it resumes from its own checkpoint), and stops at the first
stage that fails or is interrupted. Exit codes: 0 every stage done; a failing stage's own exit
code; 3 a stage was interrupted or stopped early (re-run the same command to resume).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

from giant import safety
from giant.console import ArgumentParser, out, positive_int
from giant.errors import ConfigError, GiantError
from giant.stages.pipeline import (Pipeline, Resolved, State, artifact_complete, deletion, downstream,
                                   load_pipeline, mark_completed, plan_numbers, planned_state, read_json,
                                   read_record, resolve, status_row, write_record)

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


def run_child(cmd: list[str], env: dict) -> tuple[int, Optional[str]]:
    """Run one stage in its own process group; forward stop signals to the whole group.
    → (exit code, name of the first signal received or None)."""
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
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
        rc = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return rc, (got[0] if got else None)


# ----------------------------------------------------------------------------- run
def _world(r: Resolved, args: argparse.Namespace) -> int:
    if getattr(args, "launcher", None) == "python":
        return 1
    return args.nproc or r.spec.gpus


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
    return resolved, states, forced, doomed


def cmd_run(args: argparse.Namespace) -> int:
    pipe = load_pipeline(args.file)
    resolved, states, forced, doomed = prepare(pipe, args.force)
    now = [name for name in forced if name in doomed]
    for name in now:  # the whole list first, then the deletions
        out(f"[{name}] --force: will delete {doomed[name]}")
    for name in now:
        safety.remove_run_dir(pipe.stage(name).run_dir, pipe.name, name, pipe.protected())
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
        out(f"[{name}] {st.label()}: {'resuming' if st.status == 'partial' else 'starting'} {r.spec.kind}")
        rc = launch(r, pipe, args)
        if rc:
            return rc
    out(f"\nevery stage of {pipe.name} is done")
    return cmd_status(args)


def launch(r: Resolved, pipe: Pipeline, args: argparse.Namespace) -> int:
    """Run one stage to its end; 0 when its artifact is complete, else the code to exit with."""
    run_dir, name, world = r.spec.run_dir, r.spec.name, _world(r, args)
    rec = read_record(run_dir)
    if rec is None or rec.get("hash") != r.hash:
        write_record(r, pipe, launcher=args.launcher, world_size=world)
    for marker in ("PREEMPTED", "ERROR"):  # an earlier attempt's; this one decides anew
        (run_dir / marker).unlink(missing_ok=True)
    cmd, env = command(args.launcher, world, args.master_port or _free_port(), r.script, r.args)
    out(f"[{name}] $ {shlex.join(cmd)}")
    rc, sig = run_child(cmd, env)
    if sig or (run_dir / "PREEMPTED").is_file():  # launchers exit non-zero after a signal
        out(f"[{name}] interrupted ({sig or 'PREEMPTED'}, exit {rc}): re-run the same command to resume "
            f"from its checkpoint ({run_dir})", err=True)
        return INTERRUPTED
    if rc != 0:
        error = (run_dir / "ERROR").read_text().strip() if (run_dir / "ERROR").is_file() else ""
        out(f"[{name}] failed with exit code {rc}; run dir {run_dir}"
            + (f"\n[{name}] ERROR: {error}" if error else " (see the log above)"), err=True)
        return rc
    if not artifact_complete(r.spec.kind, run_dir):
        summary = read_json(run_dir / "summary.json") or {}
        out(f"[{name}] stopped before its end ({summary.get('reason', 'no summary.json')} at step "
            f"{summary.get('steps', '?')}): re-run the same command to continue", err=True)
        return INTERRUPTED
    mark_completed(run_dir)
    out(f"[{name}] done ({run_dir})")
    return 0


# ----------------------------------------------------------------------------- plan / status
def _fmt(x, spec: str = ".4g") -> str:
    return "-" if x is None else format(x, spec)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def plan_rows(pipe: Pipeline, args: argparse.Namespace) -> list[dict]:
    forced = downstream(pipe, args.force)
    resolved = resolve(pipe)
    by_name = {r.spec.name: r for r in resolved}
    states = {r.spec.name: planned_state(r, r.spec.name in forced) for r in resolved}
    doomed, refused = deletions(pipe, resolved, states, forced)
    rows = []
    for r in resolved:
        st = states[r.spec.name]
        world = _world(r, args)
        error = r.error or refused.get(r.spec.name)
        row = {"name": r.spec.name, "kind": r.spec.kind, "status": st.status, "label": st.label(),
               "step": st.step, "changed": st.changed, "note": st.note, "error": error,
               "delete": str(doomed[r.spec.name]) if r.spec.name in doomed else None,
               "run_dir": str(r.spec.run_dir), "script": r.script, "args": r.args, "hash": r.hash,
               "sbatch": f"launch/slurm/{r.spec.kind}.sbatch", "sbatch_args": r.sbatch_args,
               "forced": r.spec.name in forced or st.redo,  # submit_pipeline.sh clears the run dir
               "inputs": sorted({v for v in r.spec.inputs.values() if isinstance(v, str)}),
               "nodes": math.ceil(world / pipe.gpus_per_node), "tasks_per_node": min(world, pipe.gpus_per_node),
               "record": {"pipeline": pipe.name, "pipeline_file": str(pipe.path), "stage": r.spec.name,
                          "kind": r.spec.kind, "hash": r.hash, "config": r.tree, "launcher": "sbatch",
                          "world_size": world, "completed_at": None},
               **plan_numbers(r, world, by_name, flops=not getattr(args, "no_flops", False))}
        rows.append(row)
    return rows


def _human(x: float) -> str:
    """FLOPs with an SI prefix up to zetta (a ViT-g pre-training is ~2.3 ZFLOP)."""
    for scale, suffix in ((1e21, "Z"), (1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if x >= scale:
            return f"{x / scale:.3g} {suffix}"
    return f"{x:.3g}"


def cmd_plan(args: argparse.Namespace) -> int:
    pipe = load_pipeline(args.file)
    rows = plan_rows(pipe, args)
    if args.json:
        out(json.dumps({"pipeline": pipe.name, "file": str(pipe.path), "root": str(pipe.root),
                        "gpus_per_node": pipe.gpus_per_node, "stages": rows}, indent=1, default=str))
        return 2 if any(r["error"] for r in rows) else 0
    header = ["stage", "kind", "status", "world", "global batch", "lr", "steps", "train FLOPs"]
    if args.gpu_tflops:
        header.append(f"GPU-h @{args.gpu_tflops:g} TFLOP/s")
    table = []
    for r in rows:
        flops = r["flops"]
        per_video = r.get("flops_per_video")
        cell = _human(flops) if flops else (f"{_human(per_video)}/video" if per_video else "-")
        cells = [r["name"], r["kind"], "error" if r["error"] else
                 ("changed" if r["status"] == "changed" else r["label"]), r["world"],
                 _fmt(r["global_batch"], "d"), _fmt(r["lr"], ".3g"), _fmt(r["steps"], "d"), cell]
        if args.gpu_tflops:
            cells.append(f"{flops / (args.gpu_tflops * 1e12) / 3600:,.0f}" if flops else "-")
        table.append(cells)
    out(f"pipeline {pipe.name} ({pipe.path}); run dirs under {pipe.root}")
    out(_table(header, table))
    for r in rows:
        for text in [r["error"] or r["note"]] + r["changed"]:
            if not text:
                continue
            out(f"  {r['name']}: {text}")
    for r in rows:  # what `run` with the same --force (and the redone evaluations) deletes first
        if r["delete"]:
            out(f"  {r['name']}: would delete: {r['delete']}")
    out("global batch in clips (videos × repeated clips); train FLOPs = 3 × forward, teacher "
        "forward included for distill; evaluate: views × forward per test video")
    for line in memory_warnings(pipe, args):
        out(line)
    return 2 if any(r["error"] for r in rows) else 0


def memory_warnings(pipe: Pipeline, args: argparse.Namespace) -> list[str]:
    """`plan --gpu-mem GiB`: a line for each training stage giant.memory says will not fit."""
    if not getattr(args, "gpu_mem", None):
        return []
    from giant.memory import KINDS, fit_warning, stage_from_config
    from giant.stages.pipeline import _input_model

    resolved = resolve(pipe)
    by_name = {r.spec.name: r for r in resolved}
    lines = []
    for r in resolved:
        if r.cfg is None or r.error or r.spec.kind not in KINDS:
            continue
        source = r.spec.inputs.get("teacher") if r.spec.kind == "distill" else None
        try:
            teacher = _input_model(source, by_name) if source else None
            stage = stage_from_config(r.cfg, r.spec.kind, _world(r, args), teacher=teacher)
            warning = fit_warning(stage, args.gpu_mem)
        except GiantError as exc:
            warning = f"memory not estimated: {exc}"
        if warning:
            lines.append(f"  {r.spec.name}: {warning}")
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    pipe = load_pipeline(args.file)
    rows = [status_row(r) for r in resolve(pipe)]
    header = ["stage", "kind", "status", "steps", "loss first → last", "val top-1 (best)", "test top-1",
              "test top-5", "agreement (KL)"]
    table = [[r["stage"], r["kind"] + (f" {r['target']}" if r["target"] else ""), r["status"],
              _fmt(r["steps"], "d"),
              "-" if r["last_loss"] is None else f"{_fmt(r['first_loss'], '.4f')} → {_fmt(r['last_loss'], '.4f')}",
              _fmt(r["best_val_top1"], ".2f"), _fmt(r["test_top1"], ".2f"), _fmt(r["test_top5"], ".2f"),
              "-" if r["agreement_top1"] is None else
              f"{r['agreement_top1']:.2f} with {r['reference']} ({_fmt(r['kl_from_reference'], '.4f')})"]
             for r in rows]
    path = Path(getattr(args, "json", None) or pipe.root / "status.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pipeline": pipe.name, "file": str(pipe.path), "stages": rows}, indent=1) + "\n")
    out(f"\npipeline {pipe.name}: final metrics (top-1/top-5 in %; test = multi-view evaluation; "
        "agreement = % of test videos with the reference's top-1, KL = mean KL(reference ‖ this) in nats)")
    out(_table(header, table))
    out(f"written to {path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="giant pipeline", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="launch every stage that is not done, in order")
    plan = sub.add_parser("plan", help="dry run: each stage's status, world size, batch, lr, steps, FLOPs")
    status = sub.add_parser("status", help="one table of every stage's final metrics, also written as JSON")
    for q in (run, plan, status):
        q.add_argument("file", help="pipeline YAML (launch/pipelines/*.yaml)")
    for q in (run, plan):
        q.add_argument("--nproc", type=positive_int, default=None,
                       help="ranks per stage (default: each stage's `gpus` in the file; python: 1)")
        q.add_argument("--force", action="append", default=[], metavar="STAGE",
                       help="redo STAGE and every stage after it: their run dirs are deleted first, "
                            "only where their pipeline_stage.json names this pipeline and stage"
                            + (" (plan: lists them, deletes nothing)" if q is plan else ""))
    run.add_argument("--launcher", choices=LAUNCHERS, default="deepspeed",
                     help="deepspeed --num_gpus N | torchrun (python -m torch.distributed.run) | srun "
                          "(inside a Slurm allocation, one task per GPU) | python (one rank)")
    run.add_argument("--master-port", type=positive_int, default=None, help="rendezvous port (default: a free one per stage)")
    run.add_argument("--json", default=None, help="where the final status table is written (default ROOT/status.json)")
    plan.add_argument("--json", action="store_true",
                      help="print one JSON object (launch/slurm/submit_pipeline.sh reads it)")
    plan.add_argument("--no-flops", action="store_true",
                      help="skip the FLOPs estimate, which imports the model code (submit_pipeline.sh)")
    plan.add_argument("--gpu-tflops", type=float, default=None,
                      help="achieved TFLOP/s per GPU: adds an estimated GPU-hours column")
    plan.add_argument("--gpu-mem", type=float, default=None, metavar="GiB",
                      help="GPU memory (nvidia-smi's total / 1024; 79.6 for 80 GB): warn about stages "
                           "that will not fit (giant memory --recipe R for the breakdown)")
    status.add_argument("--json", default=None, help="output JSON path (default: ROOT/status.json)")
    return p


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


def main(argv: Optional[list] = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "run":
        check_launcher(args.launcher)
    return {"run": cmd_run, "plan": cmd_plan, "status": cmd_status}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
