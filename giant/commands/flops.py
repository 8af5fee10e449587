"""`giant flops MODEL`: analytic parameters, forward MACs and training FLOPs (giant/flops.py)."""
from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Optional

from giant.commands._args import ArgumentParser, positive_int, ratio
from giant.console import fail, out

STAGES = ("pretrain", "finetune")  # the kinds giant.flops counts
PROG = "giant flops"


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description="Analytic parameters, forward MACs (the papers' 'FLOPs') and training FLOPs per clip.",
    )
    p.add_argument("model", help="model size name, e.g. vit_b or vit_g")
    p.add_argument("--stage", choices=STAGES, default="pretrain")
    p.add_argument("--frames", type=positive_int, default=16, help="input frames per clip")
    p.add_argument("--img-size", type=positive_int, default=224)
    p.add_argument("--mask-ratio", type=ratio, default=0.9, help="encoder mask ratio")
    p.add_argument("--mask-type", default="tube", choices=("tube", "random", "frame", "block", "adaptive"),
                   help="encoder mask; adaptive = AdaMAE (counts its sampler)")
    p.add_argument("--arch", default="videomae", choices=("videomae", "maest"),
                   help="maest = MAE-ST (cls token, separable positions, sub-sampled target)")
    p.add_argument("--pred-t-dim", type=positive_int, default=None, help="MAE-ST target frames (default T/tubelet)")
    p.add_argument("--decoder-mask-ratio", type=ratio, default=0.5, help="running-cell ratio; 0 = VideoMAE V1")
    p.add_argument("--num-classes", type=positive_int, default=710, help="classifier rows (finetune)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv: Optional[list] = None) -> int:
    """`giant flops MODEL ...`; returns the process exit code."""
    args = _parser().parse_args(argv)
    from giant.config import MaskConfig, ModelConfig
    from giant.errors import GiantError
    from giant.flops import _human, count

    model = ModelConfig(name=args.model, num_frames=args.frames, img_size=args.img_size, num_classes=args.num_classes,
                        arch=args.arch, pred_t_dim=args.pred_t_dim,
                        sampler="adaptive" if args.mask_type == "adaptive" else "none")
    dec = "none" if args.decoder_mask_ratio == 0 else "running_cell"
    mask = MaskConfig(encoder=args.mask_type, ratio=args.mask_ratio, decoder=dec, decoder_ratio=args.decoder_mask_ratio)
    try:
        r = count(model, args.stage, mask)
    except GiantError as e:
        return fail(PROG, e)
    if args.json:
        r["mask"] = dataclasses.asdict(mask) if args.stage == "pretrain" else None
        out(json.dumps(r, indent=2))
        return 0
    lines = [
        f"{r['model']} {r['stage']} {r['num_frames']}x{r['img_size']} ({r['tokens']} tokens)",
        f"  params        {r['params']:,}",
        f"  forward MACs  {_human(r['macs'])}  (papers' 'FLOPs')",
        f"  train FLOPs   {_human(r['train_flops'])}  (3 x 2 x MACs per clip)",
        f"  encoder       {_human(r['encoder_macs'])} MACs in blocks on {r['encoder_tokens']} tokens",
    ]
    if r["stage"] == "pretrain":
        lines.append(f"  decoder       {_human(r['decoder_macs'])} MACs in blocks on {r['decoder_tokens']} tokens")
    lines += [f"    {k:<20}{_human(v)}" for k, v in r["parts_macs"].items()]
    out("\n".join(lines))
    return 0
