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

import logging
from pathlib import Path
from typing import Any

import torch

from giant.errors import CheckpointError

log = logging.getLogger(__name__)

_DECODER = (("decoder_embed.", "encoder_to_decoder."), ("decoder_cls_token", "decoder.cls_token"),
            ("decoder_pos_embed_", "decoder.pos_embed_"), ("decoder_blocks.", "decoder.blocks."),
            ("decoder_norm.", "decoder.norm."), ("decoder_pred.", "decoder.head."))
KINDS = ("pretrain", "classifier")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
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
    obj = safe_load.load(path, [safe_load.OFFICIAL_ARGS], trust_pickle,
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
    from giant.artifact import write_artifact

    official = read_official(src, trust_pickle)
    kind = kind or guess_kind(official)
    state = official_to_giant(official, kind)
    weights, _ = write_artifact(out_dir, state, {
        "kind": kind, "model": {**model, "arch": "maest"}, "mask": None,
        "provenance": {"converted_from": str(Path(src).resolve()), "source": "facebookresearch/mae_st"}})
    log.info("converted %d official MAE-ST tensors (%s) from %s to %s", len(state), kind, src, out_dir)
    return weights
