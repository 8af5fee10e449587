"""What a state dict in giant's layout describes, shared by the official and HF converters.

Released checkpoints carry weights, not configs: the shapes give patch, tubelet, widths, depths,
MLP ratios and the class count; head counts come from the published size table (a head count
changes no shape); the input geometry (frames, pixels) is in no weight at all, so it comes from
a stored position table, the training args saved next to the weights, or the user.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Optional

import torch

from giant.config import ModelConfig, from_dict, parse_overrides, to_dict
from giant.errors import CheckpointError, ConfigError
from giant.models import MODEL_SIZES, build_model

KINDS = ("pretrain", "classifier")
ENC = {"pretrain": "encoder.", "classifier": ""}  # where the encoder's keys live per kind
GEOMETRY = ("num_frames", "img_size")
# Fields the shapes decide: an override that disagrees is an error, not a silent reshape.
SHAPE_FIELDS = ("patch_size", "tubelet_size", "in_chans", "embed_dim", "depth", "mlp_ratio",
                "decoder_embed_dim", "decoder_depth", "decoder_mlp_ratio", "num_classes")
_RATIOS = sorted({row[k] for row in MODEL_SIZES.values() for k in ("mlp_ratio", "decoder_mlp_ratio")})


def parse_model_overrides(items: list[str] | None) -> dict:
    """`['num_frames=16', 'model.img_size=224']` → {'num_frames': 16, 'img_size': 224}, typed."""
    items = [i if i.startswith("model.") else f"model.{i}" for i in items or []]
    tree = parse_overrides(items).get("model", {})
    if not isinstance(tree, dict):
        raise ConfigError(f"--model-override {items}: expected KEY=VALUE with a ModelConfig field")
    typed = to_dict(from_dict(ModelConfig, tree, "--model-override"))
    return {k: typed[k] for k in tree}


# model.json's `kind` is the stage that wrote it: a fine-tuned or distilled run holds a classifier
STAGE_KINDS = {"pretrain": "pretrain", "classifier": "classifier", "finetune": "classifier",
               "distill": "classifier"}


def model_kind(kind: str, src: str) -> str:
    """'pretrain' | 'classifier' for a model.json kind (a stage kind or a model kind)."""
    if kind not in STAGE_KINDS:
        raise CheckpointError(f"{src}: model.json kind {kind!r} is none of {', '.join(STAGE_KINDS)}")
    return STAGE_KINDS[kind]


def kind_of(state: dict) -> str:
    """A decoder (or its mask token / projection) means pre-training; else a classifier."""
    if any(k.startswith(("decoder.", "encoder_to_decoder.")) or k == "mask_token" for k in state):
        return "pretrain"
    return "classifier"


def mlp_ratio_for(hidden: int, dim: int) -> float:
    """A ratio r with int(dim·r) == hidden, preferring the published ones (4, 48/11)."""
    for r in _RATIOS:
        if int(dim * r) == hidden:
            return r
    r = hidden / dim
    return r if int(dim * r) == hidden else (hidden + 0.5) / dim


def heads_for(dim: int, decoder: bool = False) -> Optional[int]:
    """Head count of the published size with this width (None when no size has it)."""
    key = "decoder_embed_dim" if decoder else "embed_dim"
    heads = "decoder_num_heads" if decoder else "num_heads"
    found = {row[heads] for row in MODEL_SIZES.values() if row[key] == dim}
    return found.pop() if len(found) == 1 else None


def size_name(fields: dict) -> str:
    """The MODEL_SIZES row these encoder fields reproduce, else the one of the same width."""
    enc = ("patch_size", "embed_dim", "depth", "num_heads")
    for name, row in MODEL_SIZES.items():
        if all(row[k] == fields.get(k) for k in enc) and \
                int(row["embed_dim"] * row["mlp_ratio"]) == int(fields["embed_dim"] * fields["mlp_ratio"]):
            return name
    same = [n for n, row in MODEL_SIZES.items() if row["embed_dim"] == fields.get("embed_dim")]
    return same[0] if same else "tiny"


def _num_blocks(state: dict, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"blocks\.(\d+)\.")
    idx = {int(m.group(1)) for k in state if (m := pat.match(k))}
    return max(idx) + 1 if idx else 0


def _shape(state: dict, key: str, src: str) -> tuple:
    if key not in state:
        head = sorted(state)[:6]
        raise CheckpointError(f"{src}: no '{key}' among its {len(state)} tensors (first: {head}); "
                              "not a VideoMAE / VideoMAE V2 checkpoint in a layout giant knows")
    return tuple(state[key].shape)


def shape_fields(state: dict, kind: str, src: str) -> dict:
    """Every ModelConfig field the tensor shapes decide (heads via the size table)."""
    p = ENC[kind]
    dim, chans, tub, ph, pw = _shape(state, p + "patch_embed.proj.weight", src)
    if ph != pw:
        raise CheckpointError(f"{src}: non-square patches {ph}x{pw} are not supported")
    depth = _num_blocks(state, p)
    hidden = _shape(state, f"{p}blocks.0.mlp.fc1.weight", src)[0] if depth else 4 * dim
    out = dict(patch_size=ph, tubelet_size=tub, in_chans=chans, embed_dim=dim, depth=depth,
               mlp_ratio=mlp_ratio_for(hidden, dim), num_heads=heads_for(dim))
    if kind == "pretrain":
        dec = _shape(state, "encoder_to_decoder.weight", src)[0]
        ddepth = _num_blocks(state, "decoder.")
        dhidden = _shape(state, "decoder.blocks.0.mlp.fc1.weight", src)[0] if ddepth else 4 * dec
        out.update(decoder_embed_dim=dec, decoder_depth=ddepth, decoder_num_heads=heads_for(dec, True),
                   decoder_mlp_ratio=mlp_ratio_for(dhidden, dec))
    elif "head.weight" in state:
        out["num_classes"] = int(state["head.weight"].shape[0])
    else:
        raise CheckpointError(
            f"{src}: holds an encoder without a decoder or a classification head (first keys "
            f"{sorted(state)[:4]}); giant converts pre-training (encoder + decoder) and fine-tuned "
            "classifier checkpoints")
    return out


def geometry_from_tokens(n_tokens: int, fields: dict, known: dict) -> dict:
    """Frames / pixels from a stored position table's length, given one of the two."""
    p, t = fields["patch_size"], fields["tubelet_size"]
    if known.get("img_size") and not known.get("num_frames"):
        per_slice = (known["img_size"] // p) ** 2
        if n_tokens % per_slice == 0:
            return {"num_frames": n_tokens // per_slice * t}
    if known.get("num_frames") and not known.get("img_size"):
        side = math.isqrt(n_tokens // (known["num_frames"] // t))
        if side * side * (known["num_frames"] // t) == n_tokens:
            return {"img_size": side * p}
    return {}


def infer_config(state: dict, kind: str, src: str, overrides: dict | None = None,
                 hints: dict | None = None, n_pos: Optional[int] = None,
                 require_geometry: bool = True) -> tuple[ModelConfig, list[str]]:
    """(config, fields that could not be inferred and were left at their defaults).

    Precedence: shapes (an override that disagrees raises), then `overrides`, then `hints`
    (training args stored in the file), then the position-table length."""
    from giant.models import resolve as resolve_model
    overrides, hints = dict(overrides or {}), dict(hints or {})
    fields = shape_fields(state, kind, src)
    for key, value in overrides.items():
        if key in SHAPE_FIELDS and key in fields:
            if not _same(value, fields[key], key, fields):
                raise CheckpointError(f"{src}: --model-override {key}={value} contradicts the weights "
                                      f"({key}={fields[key]} from the tensor shapes); drop it")
        else:
            fields[key] = value
    for key in ("num_heads", "decoder_num_heads"):
        if key in fields and fields[key] is None:
            width = fields["embed_dim" if key == "num_heads" else "decoder_embed_dim"]
            raise CheckpointError(f"{src}: no published model has width {width}, so {key} (which no "
                                  f"shape records) is unknown; pass --model-override {key}=N")
    known = {k: fields.get(k) or hints.get(k) for k in GEOMETRY}
    if n_pos is not None:
        known.update(geometry_from_tokens(n_pos, fields, known))
    missing = [k for k in GEOMETRY if not known.get(k)]
    if missing and require_geometry:
        pos = f"its position table holds {n_pos} tokens; " if n_pos else ""
        raise CheckpointError(
            f"{src}: the weights do not record the input size ({pos}missing {', '.join(missing)}); "
            "pass " + " ".join(f"--model-override {k}=N" for k in missing) +
            " (every official release is num_frames=16 img_size=224)")
    fields.update({k: v for k, v in known.items() if v})
    fields.setdefault("name", size_name(fields))
    try:
        cfg = resolve_model(ModelConfig(**{k: v for k, v in fields.items() if v is not None}))
    except ConfigError as exc:
        raise CheckpointError(f"{src}: {exc}") from None
    return cfg, missing


def _same(value: Any, inferred: Any, key: str, fields: dict) -> bool:
    if "mlp_ratio" in key:  # any ratio that gives the same hidden width is the same model
        dim = fields["decoder_embed_dim" if key.startswith("decoder") else "embed_dim"]
        return int(dim * value) == int(dim * inferred)
    return value == inferred


def describe(cfg: ModelConfig, kind: str) -> str:
    """One line naming the model a set of weights fits."""
    text = (f"{kind} {cfg.name} (patch {cfg.patch_size}, tubelet {cfg.tubelet_size}, width "
            f"{cfg.embed_dim}, depth {cfg.depth}, {cfg.num_heads} heads")
    if kind == "pretrain":
        text += f"; decoder width {cfg.decoder_embed_dim}, depth {cfg.decoder_depth}"
    else:
        text += f"; {cfg.num_classes} classes"
    return text + f"; {cfg.num_frames} frames x {cfg.img_size} px)"


def expected_shapes(cfg: ModelConfig, kind: str) -> dict[str, tuple]:
    with torch.device("meta"):  # shapes only: no memory, no init
        model = build_model(cfg, kind, init=False)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def listed(items: list[str], limit: int = 5) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def check_fit(state: dict, cfg: ModelConfig, kind: str, src: str,
              rename: Optional[dict] = None) -> None:
    """One error listing the first unexpected / missing / wrong-shaped tensors and the model the
    rest of the file fits. `rename` maps giant keys back to the file's names for the message."""
    want = expected_shapes(cfg, kind)
    name = (rename or {}).get
    unexpected = [name(k, k) for k in state if k not in want]
    missing = [name(k, k) for k in want if k not in state]
    wrong = [f"{name(k, k)} {tuple(state[k].shape)} (model {want[k]})" for k in state
             if k in want and tuple(state[k].shape) != want[k]]
    if not (unexpected or missing or wrong):
        return
    parts = [f"{label} {listed(items)}" for label, items in
             (("unexpected", unexpected), ("missing", missing), ("wrong shape", wrong)) if items]
    raise CheckpointError(
        f"{src}: {len(unexpected) + len(missing) + len(wrong)} tensor(s) do not fit the model its "
        f"other shapes describe, a {describe(cfg, kind)}: {'; '.join(parts)}. Unexpected keys mean "
        "a variant giant does not build (layer scale gamma_*, learned pos_embed, cos-attention "
        "scale); missing or wrong-shaped ones a truncated file or another architecture")


def model_info(cfg: ModelConfig, kind: str, state: dict, labels: Optional[list[str]] = None,
               **provenance: Any) -> dict:
    """The model.json content of a converted model (same fields as `giant export` writes)."""
    info = {"kind": kind, "model": to_dict(cfg),
            "num_params": int(sum(t.numel() for t in state.values())), "provenance": provenance}
    if labels is not None:
        info["labels"] = list(labels)
    return info


def head_rows(num_rows: int, labels: Optional[list[str]], head_labels: Optional[list[str]],
              row_map: Optional[list[int]], renames: Optional[dict] = None) -> Optional[list[int]]:
    """Rows of the stored head that make the output head follow `labels` (None: keep all).

    `row_map` (e.g. label_710to400.json from `giant data k710 rowmap`) picks rows directly;
    `head_labels` (the label map the head was trained with) is matched to `labels` by class
    name, K710 renames included, which both slices (710 → 400) and reorders (giant's sorted
    K710 → the official row order)."""
    if row_map is not None:
        bad = [r for r in row_map if not 0 <= int(r) < num_rows]
        if bad:
            raise CheckpointError(f"row map entries {bad[:5]} are outside the {num_rows}-row head")
        rows = [int(r) for r in row_map]
    elif head_labels is not None:
        if len(head_labels) != num_rows:
            raise CheckpointError(f"--head-labels lists {len(head_labels)} classes, the head has "
                                  f"{num_rows} rows: give the label map this head was trained with")
        if labels is None:
            raise CheckpointError("--head-labels needs --label-map (the classes of the output head)")
        from giant.data.kinetics710 import head_row_map, read_renames

        try:
            rows = head_row_map(head_labels, labels, renames if renames is not None else read_renames())
        except Exception as exc:  # a DataError naming the class that has no row
            raise CheckpointError(f"--label-map against --head-labels: {exc}") from None
    else:
        if labels is not None and len(labels) != num_rows:
            raise CheckpointError(
                f"--label-map lists {len(labels)} classes, the head has {num_rows} rows: to slice "
                "the head give --head-labels (the map it was trained with, e.g. the official "
                "label_map_k710.txt) or --row-map (e.g. from `giant data k710 rowmap`)")
        return None
    if labels is not None and len(labels) != len(rows):
        raise CheckpointError(f"--row-map has {len(rows)} entries, --label-map {len(labels)} classes")
    return rows


def select_head(state: dict, cfg: ModelConfig, rows: list[int]) -> tuple[dict, ModelConfig]:
    """Classifier head restricted / reordered to `rows` (weights copied, bit-exact)."""
    from giant.artifact import slice_head

    out = dict(state)
    slice_head(out, rows, "--row-map", "the source weights")  # rows were checked by head_rows
    return out, dataclasses.replace(cfg, num_classes=len(rows))
