"""`giant bench`: steps/s, clips/s, achieved TFLOP/s, MFU and peak memory of real training steps
(giant/stages/bench.py builds the engine and times it)."""
from __future__ import annotations

import argparse
import json

from giant.commands._args import ArgumentParser, nonnegative_int, positive_int, ratio
from giant.console import out

PROG = "giant bench"
DESCRIPTION = "`giant bench`: steps/s, clips/s, achieved TFLOP/s, MFU and peak memory of real training steps."


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ArgumentParser(prog=PROG, description=DESCRIPTION)
    p.add_argument("--model", default="tiny", help="size name (tiny, vit_s ... vit_g)")
    p.add_argument("--frames", type=positive_int, default=16)
    p.add_argument("--img-size", type=positive_int, default=224)
    p.add_argument("--batch", type=positive_int, default=2, help="clips per device per micro-step")
    p.add_argument("--zero", type=int, default=2, choices=[0, 1, 2, 3], help="ZeRO stage")
    p.add_argument("--ds", default=None, help="DeepSpeed JSON (default ds_configs/zero{N}.json)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="encoder precision (auto: bf16 on GPU, fp16 without BF16; bf16 on a CPU "
                        "with native BF16, else fp32)")
    p.add_argument("--act-ckpt", default="off", help="off | all | first:N")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every block (engine.compile; the warmup steps absorb compilation)")
    p.add_argument("--mask-ratio", type=ratio, default=0.9)
    p.add_argument("--decoder-mask-ratio", type=ratio, default=0.5)
    p.add_argument("--steps", type=positive_int, default=10, help="timed steps")
    p.add_argument("--warmup", type=nonnegative_int, default=3, help="untimed steps first")
    p.add_argument("--device", default="", help="cpu | cuda (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--teacher", default="", help="distillation mode: a frozen teacher of this size (random "
                   "weights) runs forward on each batch, then the student (--model, a classifier) trains")
    p.add_argument("--teacher-precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="distillation mode: the teacher's weights (as distill.teacher_precision)")
    p.add_argument("--classes", type=positive_int, default=400, help="distillation mode: classes of both heads")
    p.add_argument("overrides", nargs="*", help="extra dotted config overrides")
    return p.parse_args(argv)



def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv or [])
    import torch

    from giant.stages.bench import run, run_distill

    result = run_distill(args) if args.teacher else run(args)
    if torch.distributed.get_rank() == 0:
        if args.json:
            out(json.dumps(result))
        else:
            mfu = f"{100 * result['mfu']:.1f}%" if "mfu" in result else "n/a (unknown peak)"
            mem = ", ".join(f"{k} {v:.2f}" for k, v in result.items() if k.startswith("mem_"))
            out(f"{result['model']} {result['frames']}x{result['img_size']} batch "
                  f"{result['batch_per_device']}/device x {result['world_size']} | ZeRO-{result['zero']} "
                  f"{result['precision']} ckpt={result['act_ckpt']}{' compiled' if result['compile'] else ''} "
                  f"on {result['device']}\n"
                  f"  {result['steps_per_s']:.3f} steps/s, {result['clips_per_s']:.2f} clips/s, "
                  f"{result['tflops']:.3f} TFLOP/s/device, MFU {mfu}, {mem}")
            if args.teacher:
                out(f"  teacher {result['teacher']} ({result['teacher_precision']}): "
                    f"{result['teacher_s_per_step']:.3f} s/step forward = {100 * result['teacher_share']:.1f}% "
                    f"of the step")
    return 0
