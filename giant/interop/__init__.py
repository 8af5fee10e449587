"""Weights in and out of giant: official VideoMAE / V2 checkpoints (`videomae`) and Hugging Face
transformers (`hf`). Everything meets in giant's layout: a state dict with the official key
names plus the model.json info (`kind`, `model` config, optional `labels`).

`load_any(path)` reads any supported source; `load_weights(path)` reads a giant artifact
(giant.artifact) or converts an official / HF source on the fly, so every
`checkpoint.init_from` takes official and HF files directly.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

from giant.artifact import MODEL_JSON, WEIGHTS, artifact_dir, is_artifact, read_artifact, write_artifact
from giant.errors import CheckpointError

log = logging.getLogger(__name__)

FORMATS = ("giant", "official", "hf")


def detect_format(path: str | Path) -> str:
    """'giant' (weights.safetensors + model.json), 'hf' (a directory with config.json) or
    'official' (one torch / safetensors file of state-dict tensors)."""
    from giant.interop.hf import CONFIG

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    d = artifact_dir(path)
    if is_artifact(path):
        return "giant"
    if (d / CONFIG).is_file() and (path.is_dir() or path.suffix in (".safetensors", ".bin", ".json")):
        return "hf"
    if path.is_file():
        return "official"
    raise CheckpointError(f"{path}: neither a giant export ({WEIGHTS} + {MODEL_JSON}), a Hugging Face "
                          f"directory ({CONFIG}) nor an official checkpoint file")


def load_any(path: str | Path, overrides: Optional[dict] = None, trust_pickle: bool = False,
             require_geometry: bool = True) -> tuple[dict, dict, str]:
    """(giant state dict, model.json info, source format) from any supported source."""
    from giant.models import resolve as resolve_model
    fmt = detect_format(path)
    if fmt == "giant":
        from giant.interop.layout import model_kind

        state, info = read_artifact(path)
        info = {**info, "kind": model_kind(info.get("kind", "pretrain"), str(path))}
        if overrides:
            import dataclasses

            from giant.config import ModelConfig, to_dict

            from giant.interop.layout import check_fit

            cfg = resolve_model(dataclasses.replace(ModelConfig(**info["model"]), **overrides))
            check_fit(state, cfg, info["kind"], str(path))  # an override must not reshape the model
            info = {**info, "model": to_dict(cfg)}
        return state, info, fmt
    if fmt == "hf":
        from giant.interop.hf import load_hf

        state, info = load_hf(path, overrides)
        return state, info, fmt
    from giant.interop.videomae import load_official

    state, info = load_official(path, overrides, trust_pickle, require_geometry)
    return state, info, fmt


def load_foreign(path: str | Path) -> Optional[tuple[dict, dict]]:
    """(state, info) for an official or HF source, None when `path` is neither (so the caller
    reports its own error). The input size stays unknown for official files that do not
    record it: init_from takes it from the recipe."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        fmt = detect_format(path)
    except CheckpointError:
        return None
    if fmt == "giant":
        return None
    state, info, _ = load_any(path, require_geometry=False)
    log.info("converted %s (%s, %s) on load", path, fmt, info["kind"])
    return state, info


def load_weights(path: str | Path) -> tuple[dict, dict]:
    """(state_dict, model.json) from an artifact (its folder or one of its files), or from an
    official VideoMAE / V2 checkpoint or HF VideoMAE directory, converted."""
    if is_artifact(path):
        return read_artifact(path)
    foreign = load_foreign(path)
    if foreign is not None:
        return foreign
    raise CheckpointError(f"{artifact_dir(path)}: expected {WEIGHTS} and {MODEL_JSON} (run `giant export "
                          "RUN_DIR` first), an official VideoMAE / V2 checkpoint file or a Hugging Face "
                          "VideoMAE directory")


def save_giant(out_dir: str | Path, state: dict, info: dict) -> Path:
    """weights.safetensors (FP32) + model.json, the artifact `giant export` writes."""
    provenance = {**info.get("provenance", {}), "converted_at": time.time()}
    write_artifact(out_dir, state, {**info, "provenance": provenance})
    return Path(out_dir)
