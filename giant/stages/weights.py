"""Starting a stage from another stage's artifact (`checkpoint.init_from`).

Pre-training artifacts hold `encoder.*` + decoder keys; classifiers hold the official fine-tune
layout (`blocks.N...`, `fc_norm`, `head`). A classifier starts from either: the decoder and the
encoder's final `norm` are dropped (mean pooling + fc_norm replace it, as in the official
fine-tuning), a head of another class count is either sliced with a row map (K710 → K400) or
left at its init (a new label set). What was loaded, dropped and left missing is reported in
one line; anything missing beyond the head and fc_norm is an error.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import torch

from giant.artifact import HEAD_KEYS, read_rowmap, slice_head
from giant.engine.deepspeed import load_state
from giant.errors import CheckpointError, ConfigError
from giant.interop import load_weights

log = logging.getLogger(__name__)

MAY_BE_MISSING = ("head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias")


def load_init_weights(model: torch.nn.Module, path: str, strict: bool = True) -> None:
    """Same-kind start (pre-train → pre-train): every key must fit."""
    state, info = load_weights(path)
    missing, unexpected = load_state(model, state)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint.init_from={path}: weights do not fit this model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}; exported model {info.get('model', {}).get('name')})")
    log.info("initialised from %s", path)


def classifier_state(state: dict[str, torch.Tensor], kind: str,
                     keep_norm: bool = False) -> tuple[dict, list[str]]:
    """Keys of a pre-training or classifier artifact → classifier keys, and what was dropped.
    `keep_norm`: the classifier pools into the encoder's own `norm` (MAE-ST) instead of a
    fresh fc_norm (VideoMAE), so the encoder's final norm is kept."""
    if kind != "pretrain" and not any(k.startswith("encoder.") for k in state):
        return dict(state), []
    out, dropped = {}, []
    for key, value in state.items():
        if key.startswith("encoder.") and (keep_norm or not key.startswith("encoder.norm.")):
            out[key[len("encoder."):]] = value
        else:
            dropped.append(key)  # decoder, encoder_to_decoder, mask_token, encoder.norm
    return out, dropped


def _fit_head(state: dict, model_state_shapes: dict, rowmap: Optional[str], path: str) -> list[str]:
    """Slice the head rows by `rowmap`, or drop a head of another size (re-initialised)."""
    if "head.weight" not in state:
        return []
    want = model_state_shapes.get("head.weight")
    have = tuple(state["head.weight"].shape)
    if rowmap:
        rows = read_rowmap(rowmap)
        slice_head(state, rows, f"finetune.head_rowmap={rowmap}", path)
        if want is not None and tuple(state["head.weight"].shape) != tuple(want):
            raise ConfigError(f"finetune.head_rowmap={rowmap} selects {len(rows)} rows but "
                              f"model.num_classes={want[0]}")
        return []
    if want is not None and have != tuple(want):
        log.warning("init_from %s: its head has %d classes, model.num_classes=%d: the head starts "
                    "from its init (set finetune.head_rowmap to slice rows instead)", path, have[0], want[0])
        return [state.pop(k) is not None and k for k in HEAD_KEYS if k in state]
    return []


def load_classifier_init(model: torch.nn.Module, path: str, rowmap: Optional[str] = None) -> dict:
    """Load an artifact into a VideoClassifier (any ZeRO stage); returns the report."""
    state, info = load_weights(path)
    shapes = {k: tuple(getattr(p, "ds_shape", p.shape)) for k, p in model.named_parameters()}
    state, dropped = classifier_state(state, info.get("kind", "pretrain"), "norm.weight" in shapes)
    dropped += _fit_head(state, shapes, rowmap, path)
    missing, unexpected = load_state(model, state)
    bad = [k for k in missing if k not in MAY_BE_MISSING]
    if bad or unexpected:
        raise CheckpointError(
            f"checkpoint.init_from={path}: weights do not fit this classifier (missing {bad[:3]}, "
            f"unexpected {unexpected[:3]}; the file holds a {info.get('kind')} "
            f"{info.get('model', {}).get('name')}); check model.name / patch_size / num_frames")
    report = {"loaded": len(state) - len(unexpected), "missing": missing, "dropped": sorted(dropped)}
    log.info("init_from %s: loaded %d tensors; missing (initialised fresh) %s; dropped %d (%s)",
             path, report["loaded"], missing or "none", len(dropped), _summary(dropped))
    return report


def _summary(keys: list[str]) -> str:
    heads = sorted({k.split(".")[0] for k in keys})
    return ", ".join(heads) if heads else "none"


def pos_grid_for(model_cfg: Any, art_model: Optional[dict]) -> Optional[list]:
    """The token grid an init artifact's position table was defined on, when this model's grid
    differs (other frame count / resolution): the table is then resampled, not rebuilt."""
    if not art_model or model_cfg.pos_grid:
        return model_cfg.pos_grid
    if art_model.get("pos_grid"):
        return list(art_model["pos_grid"])
    try:
        grid = [art_model["num_frames"] // art_model["tubelet_size"],
                art_model["img_size"] // art_model["patch_size"],
                art_model["img_size"] // art_model["patch_size"]]
    except (KeyError, TypeError, ZeroDivisionError):
        return None
    mine = [model_cfg.num_frames // model_cfg.tubelet_size, model_cfg.img_size // model_cfg.patch_size,
            model_cfg.img_size // model_cfg.patch_size]
    return grid if grid != mine else None
