"""Weights in and out of giant: official VideoMAE / V2 checkpoints (`videomae`) and Hugging Face
transformers (`hf`). Everything meets in giant's layout: a state dict with the official key
names plus the model.json info (`kind`, `model` config, optional `labels`).

`load_any(path)` reads any supported source; `giant.engine.checkpoint.load_weights` calls
`load_foreign` for paths that are not a giant export, so every `checkpoint.init_from` takes
official and HF files directly.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Optional

from giant.errors import CheckpointError

log = logging.getLogger(__name__)

FORMATS = ("giant", "official", "hf")


def detect_format(path: str | Path) -> str:
    """'giant' (weights.safetensors + model.json), 'hf' (a directory with config.json) or
    'official' (one torch / safetensors file of state-dict tensors)."""
    from giant.engine.checkpoint import MODEL_JSON, WEIGHTS
    from giant.interop.hf import CONFIG

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    d = path if path.is_dir() else path.parent
    named = path.is_dir() or path.name in (WEIGHTS, MODEL_JSON)
    if named and (d / WEIGHTS).is_file() and (d / MODEL_JSON).is_file():
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
    fmt = detect_format(path)
    if fmt == "giant":
        state, info = load_giant(path)
        if overrides:
            import dataclasses

            from giant.config import ModelConfig, to_dict

            from giant.interop.layout import check_fit

            cfg = dataclasses.replace(ModelConfig(**info["model"]), **overrides).resolved()
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
    """The load_weights hook: (state, info) for an official or HF source, None when `path` is
    neither (so the caller reports its own error). The input size stays unknown for official
    files that do not record it: init_from takes it from the recipe."""
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


def load_giant(path: str | Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    from giant.engine.checkpoint import MODEL_JSON, WEIGHTS

    path = Path(path)
    d = path if path.is_dir() else path.parent
    try:
        info = json.loads((d / MODEL_JSON).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{d / MODEL_JSON}: unreadable ({exc})") from None
    return load_file(str(d / WEIGHTS)), info


def save_giant(out_dir: str | Path, state: dict, info: dict) -> Path:
    """weights.safetensors (FP32) + model.json, the artifact `giant export` writes."""
    import torch
    from safetensors.torch import save_file

    from giant.engine.checkpoint import FORMAT, MODEL_JSON, WEIGHTS

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in state.items()}
    tmp = out_dir / f"{WEIGHTS}.tmp{os.getpid()}"
    save_file(tensors, str(tmp), metadata={"format": FORMAT})
    os.replace(tmp, out_dir / WEIGHTS)
    meta = {"format": FORMAT, **info,
            "num_params": int(sum(t.numel() for t in tensors.values())),
            "provenance": {**info.get("provenance", {}), "converted_at": time.time()}}
    tmp_json = out_dir / f"{MODEL_JSON}.tmp{os.getpid()}"
    tmp_json.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp_json, out_dir / MODEL_JSON)
    return out_dir
