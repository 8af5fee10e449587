"""`giant convert-maest SRC OUT_DIR --model vit_l`: an official facebookresearch/mae_st checkpoint
→ OUT_DIR/weights.safetensors + model.json (giant/interop/maest.py converts)."""
from __future__ import annotations

from typing import Optional

from giant.commands._args import ArgumentParser, nonnegative_int, positive_int

DESCRIPTION = """`giant convert-maest SRC OUT_DIR --model vit_l`: an official MAE-ST checkpoint →
    OUT_DIR/weights.safetensors + model.json (for `checkpoint.init_from`)."""
KINDS = ("pretrain", "classifier")  # giant.interop.maest.KINDS (that module imports torch)


def main(argv: Optional[list] = None) -> int:
    p = ArgumentParser(prog="giant convert-maest", description=DESCRIPTION)
    p.add_argument("src", help="official .pyth / .pth (pre-training or fine-tuned)")
    p.add_argument("out", help="output directory")
    p.add_argument("--model", default="vit_l", help="size name (vit_b, vit_l, vit_h)")
    p.add_argument("--kind", choices=KINDS, default="", help="default: guessed from the keys")
    p.add_argument("--frames", type=positive_int, default=16)
    p.add_argument("--img-size", type=positive_int, default=224)
    p.add_argument("--num-classes", type=nonnegative_int, default=0, help="fine-tuned checkpoints: head rows")
    p.add_argument("--decoder-heads", type=positive_int, default=16, help="official MAE-ST decoders use 16")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load a file that holds Python objects beyond tensors and argparse args "
                        "(runs code from the file: only for files you trust)")
    args = p.parse_args(argv)
    import dataclasses

    from giant.config import ModelConfig
    from giant.interop.maest import convert
    from giant.models.maest import resolve_maest_config

    cfg = resolve_maest_config(ModelConfig(name=args.model, arch="maest", num_frames=args.frames,
                                           img_size=args.img_size, num_classes=args.num_classes,
                                           decoder_num_heads=args.decoder_heads))
    convert(args.src, args.out, dataclasses.asdict(cfg), args.kind, args.trust_pickle)
    return 0
