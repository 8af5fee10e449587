"""Conversion between giant, official VideoMAE / V2 and Hugging Face weights (`giant convert`,
giant/commands/convert.py).

The source is detected: a giant export (weights.safetensors + model.json), an official VideoMAE /
V2 checkpoint file (.pth/.pt/.bin, any released layout), or a Hugging Face VideoMAE directory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from giant.errors import CheckpointError
from giant.interop import layout, load_any, save_giant


def apply_labels(state: dict, info: dict, labels: Optional[list[str]], head_labels: Optional[list[str]],
                 row_map: Optional[list[int]]) -> tuple[dict, dict]:
    """Slice / reorder a classifier head to follow `labels`; record the labels in the info."""
    if labels is None and head_labels is None and row_map is None:
        return state, info
    if info["kind"] != "classifier":
        raise CheckpointError("--label-map / --head-labels / --row-map apply to classifiers; "
                              f"this is a {info['kind']} model")
    from giant.config import ModelConfig, to_dict

    cfg = ModelConfig(**info["model"])
    rows = layout.head_rows(cfg.num_classes, labels, head_labels, row_map)
    if rows is not None:
        state, cfg = layout.select_head(state, cfg, rows)
    info = {**info, "model": to_dict(cfg), "num_params": int(sum(t.numel() for t in state.values()))}
    if labels is not None:
        info["labels"] = list(labels)
    elif rows is not None:
        info.pop("labels", None)  # the old names no longer match the rows
    return state, info


def load(src: str, to: str = "giant", overrides: Optional[dict] = None,
         trust_pickle: bool = False) -> tuple[dict, dict, str]:
    """→ (state, info, detected source format); converting to `official` needs no input size,
    an official file having no place for it."""
    return load_any(src, overrides, trust_pickle, require_geometry=to != "official")


def save(to: str, dst: str, state: dict, info: dict) -> Path:
    """Write `state` as `to` (giant | hf | official) at `dst`; → what was written."""
    if to == "giant":
        return save_giant(dst, state, info)
    if to == "hf":
        from giant.interop.hf import save_hf

        return save_hf(dst, state, info)
    from giant.interop.videomae import save_official

    return save_official(dst, state, info)
