"""Official facebookresearch/mae_st checkpoints ↔ giant (model.arch: maest).

Fine-tuning models already share the official keys (`cls_token`, `pos_embed_*`, `blocks.N.attn.q`,
`norm`, `head`): nothing to rename. Pre-training models are flat officially and split into
`encoder.` / `decoder.` in giant (the engine autocasts the encoder and checkpoints both block
lists):

    official                      giant
    decoder_embed.*               encoder_to_decoder.*
    mask_token                    mask_token
    decoder_cls_token             decoder.cls_token
    decoder_pos_embed_{s,t,class} decoder.pos_embed_{s,t,class}
    decoder_blocks.N.*            decoder.blocks.N.*
    decoder_norm.*                decoder.norm.*
    decoder_pred.*                decoder.head.*
    anything else                 encoder.<same name>

Official .pyth files hold the weights under `model` (save_model) or `model_state` (released
checkpoints), possibly prefixed `module.`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from giant.console import ArgumentParser, nonnegative_int, positive_int
from giant.errors import CheckpointError

log = logging.getLogger(__name__)

_DECODER = (("decoder_embed.", "encoder_to_decoder."), ("decoder_cls_token", "decoder.cls_token"),
            ("decoder_pos_embed_", "decoder.pos_embed_"), ("decoder_blocks.", "decoder.blocks."),
            ("decoder_norm.", "decoder.norm."), ("decoder_pred.", "decoder.head."))
_KINDS = ("pretrain", "classifier")


def _check_kind(kind: str) -> None:
    if kind not in _KINDS:
        raise CheckpointError(f"kind={kind!r}: use pretrain or classifier")


def official_key_to_giant(key: str, kind: str = "pretrain") -> str:
    _check_kind(kind)
    if kind == "classifier" or key == "mask_token":
        return key
    for official, ours in _DECODER:
        if key.startswith(official):
            return ours + key[len(official):]
    return "encoder." + key


def giant_key_to_official(key: str, kind: str = "pretrain") -> str:
    _check_kind(kind)
    if kind == "classifier" or key == "mask_token":
        return key
    for official, ours in _DECODER:
        if key.startswith(ours):
            return official + key[len(ours):]
    if not key.startswith("encoder."):
        raise CheckpointError(f"{key}: not a giant MAE-ST pre-training key (encoder./decoder./"
                              "encoder_to_decoder/mask_token)")
    return key[len("encoder."):]


def official_to_giant(state: dict[str, Any], kind: str = "pretrain") -> dict[str, Any]:
    """Rename an official state dict (values untouched, order kept)."""
    return {official_key_to_giant(k, kind): v for k, v in unwrap(state).items()}


def giant_to_official(state: dict[str, Any], kind: str = "pretrain") -> dict[str, Any]:
    return {giant_key_to_official(k, kind): v for k, v in state.items()}


def unwrap(obj: dict[str, Any]) -> dict[str, Any]:
    """The weights inside an official checkpoint dict: `model` / `model_state`, `module.` off."""
    for key in ("model", "model_state"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def guess_kind(state: dict[str, Any]) -> str:
    """pretrain when decoder weights are present, else classifier."""
    return "pretrain" if any(k.startswith(("decoder_", "mask_token")) for k in state) else "classifier"


def read_official(path: str | Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of an official .pyth / .pth file (weights-only: argparse.Namespace, which the
    official save_model stores, is the only non-tensor type allowed unless `trust_pickle`)."""
    from giant.engine import safe_load

    path = Path(path)
    obj = safe_load.load(path, [argparse.Namespace], trust_pickle,
                         expected="an official MAE-ST checkpoint (.pyth / .pth)",
                         fix="if you trust the file, re-run with --trust-pickle")
    state = unwrap(obj) if isinstance(obj, dict) else {}
    tensors = {k: v for k, v in state.items() if torch.is_tensor(v)}
    if not tensors:
        raise CheckpointError(f"{path}: no weights found (expected a 'model' or 'model_state' dict)")
    return tensors


def convert(src: str | Path, out_dir: str | Path, model: dict, kind: str = "",
            trust_pickle: bool = False) -> Path:
    """Official checkpoint → out_dir/weights.safetensors + model.json (giant's export format),
    ready for `checkpoint.init_from`. `model`: the ModelConfig fields (arch=maest, sizes)."""
    from safetensors.torch import save_file

    from giant.engine.checkpoint import FORMAT, MODEL_JSON, WEIGHTS

    official = read_official(src, trust_pickle)
    kind = kind or guess_kind(official)
    state = {k: v.detach().float().contiguous().clone() for k, v in official_to_giant(official, kind).items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / WEIGHTS), metadata={"format": FORMAT})
    info = {"format": FORMAT, "kind": kind, "model": {**model, "arch": "maest"}, "mask": None,
            "num_params": int(sum(t.numel() for t in state.values())),
            "provenance": {"converted_from": str(Path(src).resolve()), "source": "facebookresearch/mae_st"}}
    (out / MODEL_JSON).write_text(json.dumps(info, indent=2) + "\n")
    log.info("converted %d official MAE-ST tensors (%s) from %s to %s", len(state), kind, src, out)
    return out / WEIGHTS


def main(argv: list | None = None) -> int:
    """`python -m giant.interop.maest SRC OUT_DIR --model vit_l`: an official MAE-ST checkpoint →
    OUT_DIR/weights.safetensors + model.json (for `checkpoint.init_from`)."""
    from giant.config import ModelConfig
    from giant.models.maest import resolve_maest_config

    p = ArgumentParser(prog="giant convert-maest", description=main.__doc__)
    p.add_argument("src", help="official .pyth / .pth (pre-training or fine-tuned)")
    p.add_argument("out", help="output directory")
    p.add_argument("--model", default="vit_l", help="size name (vit_b, vit_l, vit_h)")
    p.add_argument("--kind", choices=_KINDS, default="", help="default: guessed from the keys")
    p.add_argument("--frames", type=positive_int, default=16)
    p.add_argument("--img-size", type=positive_int, default=224)
    p.add_argument("--num-classes", type=nonnegative_int, default=0, help="fine-tuned checkpoints: head rows")
    p.add_argument("--decoder-heads", type=positive_int, default=16, help="official MAE-ST decoders use 16")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load a file that holds Python objects beyond tensors and argparse args "
                        "(runs code from the file: only for files you trust)")
    args = p.parse_args(argv)
    cfg = resolve_maest_config(ModelConfig(name=args.model, arch="maest", num_frames=args.frames,
                                           img_size=args.img_size, num_classes=args.num_classes,
                                           decoder_num_heads=args.decoder_heads))
    convert(args.src, args.out, dataclasses.asdict(cfg), args.kind, args.trust_pickle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
