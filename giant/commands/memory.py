"""`giant memory --recipe R.yaml`: per-GPU peak memory of a stage and the fastest activation
checkpointing that fits (giant/memory.py holds the model of what a GPU holds).

    giant memory --recipe launch/recipes/pretrain_vitg_hybrid.yaml --world 64
    giant memory --recipe launch/recipes/finetune_vitg_k400.yaml --gpu-mem 79.6,140.4 --max-batch
    giant memory --recipe launch/recipes/pretrain_vitg_hybrid.yaml --zero 1,2,3 --batch 8,16,32
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Optional

from giant.commands._args import ArgumentParser, positive_int
from giant.console import out
from giant.errors import ConfigError
from giant.memory import (CONTEXT_GIB, DEFAULT_GPU_GIB, FRAGMENTATION, GIB, KINDS, Plan, Stage, Zero,
                          candidates, evaluate, plan, stage_from_config)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise ConfigError(f"{what} {text!r}: give whole numbers separated by commas, e.g. 8,16,32")
    return values


def _gib(x: int) -> str:
    return f"{x / GIB:.1f}"


def describe(stage: Stage, ds_name: Optional[str], batch_per_row: bool = False) -> str:
    """One line naming what is planned; ds_name None: the ZeRO stage varies per row."""
    from giant.models import resolve as resolve_model
    m, z, cfg = resolve_model(stage.cfg.model), Zero.from_json(stage.ds), stage.cfg
    extra = f", teacher {stage.teacher.name}" if stage.teacher is not None else ""
    batch = (f"{cfg.data.num_sample} clips per video" if batch_per_row else
             f"{cfg.optim.batch_size} videos x {cfg.data.num_sample} clips = "
             f"{cfg.optim.batch_size * cfg.data.num_sample} clips per GPU")
    zero = "ds_configs/zeroN.json per row" if ds_name is None else f"ZeRO-{z.stage} ({ds_name})"
    return (f"{stage.kind} {m.name} {m.num_frames}x{m.img_size}, {batch}; {zero}, {stage.world} ranks; "
            f"encoder {cfg.precision.encoder}{extra}")


def breakdown(p: Plan) -> list[str]:
    """The per-line table of off / the fastest first:N that fits / all, and the verdict."""
    names = [k for k in p.rows[0].gpu if any(r.gpu[k] for r in p.rows)]
    body = [[k] + [_gib(r.gpu[k]) for r in p.rows] for k in names]
    body += [["peak"] + [_gib(r.peak) for r in p.rows],
             [f"fits {p.gpu_gib:g} GiB"] + ["yes" if r.fits(p.gpu_gib) else "no" for r in p.rows],
             ["recomputed FLOPs"] + [f"+{100 * r.recompute:.1f}%" for r in p.rows]]
    if p.max_batch:
        body.append(["max videos/GPU"] + [str(p.max_batch[r.ckpt]) for r in p.rows])
    lines = [_table(["GiB per GPU"] + [r.ckpt for r in p.rows], body)]
    host = {k: v for k, v in p.rows[0].host.items() if v}
    lines.append("host per rank: " + ", ".join(f"{k} {v / 1e9:.1f} GB" for k, v in host.items()))
    if p.fastest is None:
        lines.append(f"nothing fits {p.gpu_gib:g} GiB at this batch: lower optim.batch_size or use a higher "
                     "ZeRO stage")
    else:
        lines.append(f"fastest that fits {p.gpu_gib:g} GiB: engine.activation_checkpointing={p.fastest.ckpt} "
                     f"({_gib(p.fastest.peak)} GiB, recomputes +{100 * p.fastest.recompute:.1f}% of the "
                     "step's FLOPs)")
    return lines


def sweep_row(stage: Stage, videos: int, gpus: list[float]) -> list[str]:
    """ZeRO stage, batch, the peak with off and all, the fastest setting per GPU size."""
    off, full = evaluate(stage, "off", videos), evaluate(stage, "all", videos)
    cells = [str(Zero.from_json(stage.ds).stage), f"{videos} ({off.clips})", _gib(off.peak), _gib(full.peak)]
    settings = [evaluate(stage, c, videos) for c in candidates(stage)]
    for gib in gpus:
        best = next((s for s in settings if s.fits(gib)), None)
        cells.append("-" if best is None else f"{best.ckpt} ({_gib(best.peak)}, +{100 * best.recompute:.0f}%)")
    return cells


def allowance_note() -> str:
    return (f"estimates from the model's shapes (giant/memory.py); allowance = {CONTEXT_GIB:g} GiB CUDA "
            f"context/workspaces/NCCL + {100 * FRAGMENTATION:.0f}% of the allocated peak for fragmentation")


def plan_json(p: Plan) -> dict:
    return {"kind": p.stage.kind, "world": p.stage.world, "gpu_gib": p.gpu_gib,
            "zero": Zero.from_json(p.stage.ds).stage,
            "fastest": None if p.fastest is None else p.fastest.ckpt, "max_batch": p.max_batch,
            "rows": [{"ckpt": r.ckpt, "videos": r.videos, "clips": r.clips, "peak_gib": r.peak / GIB,
                      "fits": r.fits(p.gpu_gib), "recompute": r.recompute,
                      "gpu_gib": {k: v / GIB for k, v in r.gpu.items()},
                      "host_gb": {k: v / 1e9 for k, v in r.host.items()}} for r in p.rows]}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ArgumentParser(prog="giant memory", description=__doc__.split("\n")[0])
    p.add_argument("--recipe", required=True, help="launch/recipes/*.yaml")
    p.add_argument("overrides", nargs="*", help="dotted config overrides (optim.batch_size=16)")
    p.add_argument("--ds", default=None, help="DeepSpeed JSON (default: the recipe's engine.ds_config)")
    p.add_argument("--zero", default=None, help="compare ZeRO stages, e.g. 1,2,3 (ds_configs/zeroN.json)")
    p.add_argument("--world", type=positive_int, default=8, help="ranks (default 8, one node)")
    p.add_argument("--gpu-mem", default=str(DEFAULT_GPU_GIB),
                   help="GiB per GPU (nvidia-smi's total / 1024), comma list allowed; default "
                        f"{DEFAULT_GPU_GIB} = an 80 GB A100/H100, an H200 is 140.4")
    p.add_argument("--kind", choices=KINDS, default=None, help="default: from the recipe")
    p.add_argument("--batch", default=None, help="videos per GPU (optim.batch_size), comma list allowed")
    p.add_argument("--max-batch", action="store_true", help="also the most videos per GPU that fit")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p.parse_args(argv)


def _gpus(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise ConfigError(f"--gpu-mem {text!r}: give GiB per GPU, e.g. 79.6 or 79.6,140.4")
    return values


def main(argv: Optional[list] = None) -> int:
    from giant.config import load_config

    args = parse_args(list(argv or []))
    gpus = _gpus(args.gpu_mem)
    cfg = load_config(args.recipe, args.overrides)
    zeros = _ints(args.zero, "--zero") if args.zero else [None]
    batches = _ints(args.batch, "--batch") if args.batch else [cfg.optim.batch_size]
    if min(batches) < 1:
        raise ConfigError(f"--batch {args.batch}: videos per GPU must be >= 1")
    ds_names = [f"ds_configs/zero{z}.json" if z is not None else (args.ds or cfg.engine.ds_config) for z in zeros]
    stages = [stage_from_config(cfg, args.kind, args.world, name) for name in ds_names]
    if len(stages) > 1 or len(batches) > 1:
        header = ["ZeRO", "videos (clips)", "off GiB", "all GiB"] + [f"fastest fitting {g:g} GiB" for g in gpus]
        rows = [sweep_row(s, b, gpus) for s in stages for b in batches]
        title = f"{args.recipe}: {describe(stages[0], None if len(stages) > 1 else ds_names[0], True)}"
        out(json.dumps({"header": header, "rows": rows}) if args.json else
            "\n".join([title, _table(header, rows), allowance_note()]))
        return 0
    stage = dataclasses.replace(stages[0], cfg=dataclasses.replace(
        cfg, optim=dataclasses.replace(cfg.optim, batch_size=batches[0])))
    for gib in gpus:
        result = plan(stage, gib, args.max_batch)
        out(json.dumps(plan_json(result)) if args.json else
            "\n".join([f"{args.recipe}: {describe(stage, ds_names[0])}", *breakdown(result), allowance_note()]))
    return 0
