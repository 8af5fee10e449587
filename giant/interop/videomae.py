"""Official VideoMAE (MCG-NJU/VideoMAE) and VideoMAE V2 (OpenGVLab/VideoMAEv2) checkpoints ↔ giant.

giant keeps the official parameter names, so importing is unwrapping and normalising what the
releases vary in:
- the state dict is the whole file or sits under `model` (torch saves), `module` (DeepSpeed
  saves) or `state_dict`; other top-level entries (optimizer, epoch, `args`) are ignored, except
  that `args.num_frames` / `args.input_size` give the input geometry;
- keys may carry `module.` (DDP), `_orig_mod.` (torch.compile) and `backbone.` prefixes;
  pre-training files keep the encoder under `encoder.`, classifiers at the top level;
- some releases (the distilled ViT-S/B) are stored in FP16: every tensor is loaded as FP32;
- attention biases as `q_bias` / `v_bias`, or as one `qkv.bias` (V1 ports); its k third is
  dropped: a key bias adds q·b_k to every score of a query alike, and softmax ignores that;
- a stored `pos_embed` must be the fixed sin-cos table (giant has no learned one); its length
  gives the frame count when the image size is known.
Exports are `{"model": state_dict}` (what the official fine-tune and resume code read) plus a
`giant` entry with the model config and labels, which official code ignores.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch

from giant.errors import CheckpointError
import giant.interop.layout as layout
from giant.models.pos_embed import sincos_table

log = logging.getLogger(__name__)

NESTED = ("model", "module", "state_dict")  # the official loaders' model_key order, then Lightning-style
STRIP = ("module.", "_orig_mod.", "backbone.")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")


def read_file(path: Path, trust_pickle: bool = False) -> Any:
    """The file's object. Pickles load with weights_only (plus argparse.Namespace, which the
    official training scripts save as `args`); `trust_pickle` unpickles unrestricted only a file
    that needs it. A file that is not a checkpoint at all is one error line either way."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    from giant.engine import safe_load

    return safe_load.load(path, [safe_load.OFFICIAL_ARGS], trust_pickle,
                          expected="an official VideoMAE / V2 checkpoint (.pth, .pt, .bin, .safetensors)",
                          fix="if you trust the file, convert it once with "
                              "`giant convert SRC DST --trust-pickle`")


def _is_state(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())


def unwrap(obj: Any, src: str) -> tuple[dict, dict]:
    """(state dict, the dict that held it): the file itself or under model / module / state_dict,
    possibly nested (a DeepSpeed `module` inside a torch `model` save)."""
    holder = obj
    for _ in range(3):
        if _is_state(holder):
            return dict(holder), obj if isinstance(obj, dict) else {}
        if not isinstance(holder, dict):
            break
        key = next((k for k in NESTED if k in holder), None)
        if key is None:
            break
        log.info("%s: weights under %r", src, key)
        holder = holder[key]
    top = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(f"{src}: no state dict found (top level: {top}); expected tensors at the top "
                          f"level or under one of {list(NESTED)}")


def strip_prefixes(state: dict) -> dict:
    """Drop wrapper prefixes (`module.`, `_orig_mod.` anywhere, `backbone.`)."""
    out = {}
    for key, value in state.items():
        key = key.replace("._orig_mod.", ".")
        while key.startswith(STRIP):
            key = key[key.index(".") + 1:]
        out[key] = value
    return out


def to_giant_layout(state: dict) -> tuple[dict, str]:
    """Pre-training keeps the encoder under `encoder.`; classifiers have it at the top level."""
    kind = layout.kind_of(state)
    out = {}
    for key, value in state.items():
        if kind == "classifier" and key.startswith("encoder."):
            key = key[len("encoder."):]
        elif kind == "pretrain" and key.startswith(("patch_embed.", "blocks.", "norm.", "pos_embed")):
            key = "encoder." + key
        out[key] = value
    return out, kind


def to_fp32(state: dict, src: str) -> dict:
    low = sorted({str(v.dtype) for v in state.values() if v.is_floating_point() and v.dtype != torch.float32})
    if low:
        log.info("%s: stored as %s; converted to float32", src, ", ".join(low))
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def split_qkv_bias(state: dict, src: str) -> dict:
    """`attn.qkv.bias` (3·D) → `attn.q_bias` + `attn.v_bias`; the k third is dropped (exact)."""
    out, worst = {}, 0.0
    for key, value in state.items():
        if not key.endswith("attn.qkv.bias"):
            out[key] = value
            continue
        q, k, v = value.chunk(3)
        worst = max(worst, k.abs().max().item())
        base = key[: -len("qkv.bias")]
        out[base + "q_bias"], out[base + "v_bias"] = q.clone(), v.clone()
    if worst > 0:
        log.warning("%s: the key part of qkv.bias is non-zero (max |b_k| %.3g); dropped: it shifts every "
                    "attention score of a query by the same q·b_k, which softmax cancels", src, worst)
    return out


def take_pos_table(state: dict, src: str) -> Optional[int]:
    """Remove stored position tables after checking they are the fixed sin-cos one → length."""
    n_tokens = None
    for key in [k for k in state if k.split(".")[-1] == "pos_embed"]:
        table = state.pop(key)
        table = table.reshape(-1, table.shape[-1])
        fixed = sincos_table(table.shape[0], table.shape[-1])
        diff = (table - fixed).abs().max().item()
        if diff > 1e-3:  # FP16 storage rounds the fixed table by < 5e-4
            raise CheckpointError(
                f"{src}: '{key}' is a learned position table (differs from the fixed sin-cos table by "
                f"{diff:.3g}); giant uses the fixed table only (as every released VideoMAE / V2 model)")
        n_tokens = table.shape[0]  # encoder and decoder tables cover the same tokens
    return n_tokens


def hints_from(holder: dict) -> tuple[dict, dict]:
    """(config hints, extras) from what was saved next to the weights: giant's own entry
    (config + labels), or the official scripts' `args` (frames, input size)."""
    meta = holder.get("giant") if isinstance(holder.get("giant"), dict) else None
    if meta:
        return dict(meta.get("model") or {}), {"labels": meta.get("labels")}
    args = holder.get("args")
    # an argparse.Namespace (--trust-pickle) or safe_load.SavedArgs (weights-only): both hold __dict__
    args = args if isinstance(args, dict) else vars(args) if hasattr(args, "__dict__") else {}
    hints = {"num_frames": args.get("num_frames"), "img_size": args.get("input_size")}
    return {k: int(v) for k, v in hints.items() if isinstance(v, int) and v > 0}, {}


def load_official(path: str | Path, overrides: Optional[dict] = None, trust_pickle: bool = False,
                  require_geometry: bool = True) -> tuple[dict, dict]:
    """(giant state dict in FP32, model.json-style info) from an official checkpoint file."""
    path = Path(path)
    src = str(path)
    state, holder = unwrap(read_file(path, trust_pickle), src)
    state, kind = to_giant_layout(strip_prefixes(state))
    state = split_qkv_bias(to_fp32(state, src), src)
    n_pos = take_pos_table(state, src)
    hints, extras = hints_from(holder)
    # giant's own entry restores every field; user overrides still win
    merged = {k: v for k, v in hints.items() if k not in layout.SHAPE_FIELDS and v is not None}
    merged.update(overrides or {})
    cfg, unknown = layout.infer_config(state, kind, src, merged, hints, n_pos, require_geometry)
    layout.check_fit(state, cfg, kind, src)
    info = layout.model_info(cfg, kind, state, extras.get("labels"), converted_from=str(path.resolve()),
                             source_format="official")
    if unknown:
        info["unknown"] = unknown  # geometry the file does not record; defaults were used
    return state, info


def save_official(path: str | Path, state: dict, info: dict) -> Path:
    """`{"model": state_dict, "giant": {...}}`: loads in the official fine-tune / resume code
    (model_key `model`), and back into giant with its config and labels."""
    path = Path(path)
    if path.suffix not in TORCH_SUFFIXES:
        raise CheckpointError(f"{path}: an official checkpoint is one torch file; name it *.pth")
    path.parent.mkdir(parents=True, exist_ok=True)
    unknown = set(info.get("unknown", ()))  # defaults stood in for these: do not record them as facts
    meta = {"kind": info["kind"], "model": {k: v for k, v in info["model"].items() if k not in unknown}}
    if info.get("labels") is not None:
        meta["labels"] = list(info["labels"])
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": {k: v.detach().float().contiguous() for k, v in state.items()},
                "giant": meta}, tmp)
    tmp.replace(path)
    return path
