"""`giant pipeline run|plan|status PIPELINE.yaml`: run the progressive pipeline stage by stage.

`run` launches each stage that is not done as a subprocess with the named launcher, in its own
process group (a stop signal to `giant pipeline` is forwarded to the whole stage: launcher,
ranks, loader workers; Ctrl-C becomes SIGTERM, so the stage saves and can resume), skips done
stages, relaunches a partial one (it resumes from its own checkpoint), and stops at the first
stage that fails or is interrupted. Exit codes: 0 every stage done; a failing stage's own exit
code; 3 a stage was interrupted or stopped early (re-run the same command to resume). Each
stage's full output goes to RUN_DIR/stage.log; the console shows one live line per stage
(giant/stages/pipeline_console.py), or everything with --verbose.
"""
from __future__ import annotations

import argparse
import json
from typing import Optional

from giant.commands._args import ArgumentParser, positive_int
from giant.console import out


def _fmt(x, spec: str = ".4g") -> str:
    return "-" if x is None else format(x, spec)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _human(x: float) -> str:
    """FLOPs with an SI prefix up to zetta (a ViT-g pre-training is ~2.3 ZFLOP)."""
    for scale, suffix in ((1e21, "Z"), (1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if x >= scale:
            return f"{x / scale:.3g} {suffix}"
    return f"{x:.3g}"


def _plan_cells(r: dict, gpu_tflops: Optional[float]) -> list:
    flops = r["flops"]
    per_video = r.get("flops_per_video")
    cell = _human(flops) if flops else (f"{_human(per_video)}/video" if per_video else "-")
    cells = [r["name"], r["kind"], "error" if r["error"] else
             ("changed" if r["status"] == "changed" else r["label"]), r["world"],
             _fmt(r["global_batch"], "d"), _fmt(r["lr"], ".3g"), _fmt(r["steps"], "d"), cell]
    if gpu_tflops:
        cells.append(f"{flops / (gpu_tflops * 1e12) / 3600:,.0f}" if flops else "-")
    return cells


def cmd_plan(args: argparse.Namespace) -> int:
    from giant.stages.pipeline import load_pipeline
    from giant.stages.pipeline_run import memory_warnings, plan_rows

    pipe = load_pipeline(args.file)
    rows = plan_rows(pipe, args.force, args.nproc, flops=not args.no_flops)
    if args.json:
        out(json.dumps({"pipeline": pipe.name, "file": str(pipe.path), "root": str(pipe.root),
                        "gpus_per_node": pipe.gpus_per_node, "stages": rows}, indent=1, default=str))
        return 2 if any(r["error"] for r in rows) else 0
    header = ["stage", "kind", "status", "world", "global batch", "lr", "steps", "train FLOPs"]
    if args.gpu_tflops:
        header.append(f"GPU-h @{args.gpu_tflops:g} TFLOP/s")
    out(f"pipeline {pipe.name} ({pipe.path}); run dirs under {pipe.root}")
    out(_table(header, [_plan_cells(r, args.gpu_tflops) for r in rows]))
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
    for line in memory_warnings(pipe, args.gpu_mem, args.nproc):
        out(line)
    return 2 if any(r["error"] for r in rows) else 0


def _exported(row: dict) -> str:
    """Which weights the next stage reads: the last step, or the best one and its step."""
    if row.get("exported") == "best" and row.get("best_step") is not None:
        return f"best @{row['best_step']}"
    return row.get("exported") or "-"


def cmd_status(args: argparse.Namespace) -> int:
    from giant.stages.pipeline import load_pipeline
    from giant.stages.pipeline_run import write_status

    pipe = load_pipeline(args.file)
    rows, path = write_status(pipe, args.json)
    header = ["stage", "kind", "status", "steps", "loss first → last", "val top-1 (best)", "test top-1",
              "test top-5", "agreement (KL)", "exported"]
    table = [[r["stage"], r["kind"] + (f" {r['target']}" if r["target"] else ""), r["status"],
              _fmt(r["steps"], "d"),
              "-" if r["last_loss"] is None else f"{_fmt(r['first_loss'], '.4f')} → {_fmt(r['last_loss'], '.4f')}",
              _fmt(r["best_val_top1"], ".2f"), _fmt(r["test_top1"], ".2f"), _fmt(r["test_top5"], ".2f"),
              "-" if r["agreement_top1"] is None else
              f"{r['agreement_top1']:.2f} with {r['reference']} ({_fmt(r['kl_from_reference'], '.4f')})",
              _exported(r)]
             for r in rows]
    out(f"\npipeline {pipe.name}: final metrics (top-1/top-5 in %; test = multi-view evaluation; "
        "agreement = % of test videos with the reference's top-1, KL = mean KL(reference ‖ this) in nats)")
    out(_table(header, table))
    out(f"written to {path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from giant.stages.pipeline_run import check_launcher, run_pipeline

    check_launcher(args.launcher)
    rc = run_pipeline(args.file, args.force, args.launcher, args.nproc, args.master_port, args.verbose)
    return rc or cmd_status(args)


def _add_run_plan(run: argparse.ArgumentParser, plan: argparse.ArgumentParser) -> None:
    from giant.stages.pipeline_run import LAUNCHERS  # no torch (yaml and the stage registry)

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
    run.add_argument("--verbose", action="store_true",
                     help="stream each stage's full output (launcher, every rank's log lines) to the console; "
                          "without it the console shows one live line per stage and the output goes only to "
                          "RUN_DIR/stage.log (the last lines are shown when a stage fails)")
    plan.add_argument("--json", action="store_true",
                      help="print one JSON object (launch/slurm/submit_pipeline.sh reads it)")
    plan.add_argument("--no-flops", action="store_true",
                      help="skip the FLOPs estimate, which imports the model code (submit_pipeline.sh)")
    plan.add_argument("--gpu-tflops", type=float, default=None,
                      help="achieved TFLOP/s per GPU: adds an estimated GPU-hours column")
    plan.add_argument("--gpu-mem", type=float, default=None, metavar="GiB",
                      help="GPU memory (nvidia-smi's total / 1024; 79.6 for 80 GB): warn about stages "
                           "that will not fit (giant memory --recipe R for the breakdown)")


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="giant pipeline", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="launch every stage that is not done, in order")
    plan = sub.add_parser("plan", help="dry run: each stage's status, world size, batch, lr, steps, FLOPs")
    status = sub.add_parser("status", help="one table of every stage's final metrics, also written as JSON")
    for q in (run, plan, status):
        q.add_argument("file", help="pipeline YAML (launch/pipelines/*.yaml)")
    _add_run_plan(run, plan)
    status.add_argument("--json", default=None, help="output JSON path (default: ROOT/status.json)")
    return p


def main(argv: Optional[list] = None) -> int:
    args = _parser().parse_args(argv)
    return {"run": cmd_run, "plan": cmd_plan, "status": cmd_status}[args.cmd](args)
