"""The artifact one stage hands the next: `weights.safetensors` (FP32) + `model.json` (kind,
model config, provenance). Written and read only here, so every exporter and converter makes
the same files and every loader checks them the same way.

Writes are atomic (temp file + os.replace, fsynced): a crash or a concurrent reader sees the
old file or the new one, never half of one. torch and safetensors are imported inside the
functions, so the constants cost nothing to import (pipeline status runs on login nodes).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from giant.errors import CheckpointError, ConfigError

WEIGHTS, MODEL_JSON = "weights.safetensors", "model.json"
FORMAT = "giant-weights-v1"
HEAD_KEYS = ("head.weight", "head.bias")


def artifact_dir(path: str | Path) -> Path:
    """The folder holding the artifact, given it or one of its two files."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def is_artifact(path: str | Path) -> bool:
    """`path` names an artifact (its folder or one of its files) and both files are there."""
    path = Path(path)
    d = artifact_dir(path)
    named = path.is_dir() or path.name in (WEIGHTS, MODEL_JSON)
    return named and (d / WEIGHTS).is_file() and (d / MODEL_JSON).is_file()


def replace_atomically(path: Path, write: Any, mode: Optional[int] = None) -> None:
    """write(tmp), fsync, os.replace(tmp, path): readers see the old content or the new, never
    half. `mode`: the file's permissions (safetensors' own file mode is the process umask's)."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    replace_atomically(Path(path), lambda tmp: tmp.write_text(text))


def write_artifact(out_dir: str | Path, state: dict, info: dict) -> tuple[Path, Path]:
    """out_dir/weights.safetensors (own contiguous FP32 copies: safetensors refuses views that
    share storage) + out_dir/model.json = {format, **info, num_params, provenance}."""
    import torch
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in state.items()}
    weights, model_json = out_dir / WEIGHTS, out_dir / MODEL_JSON
    replace_atomically(weights, lambda tmp: save_file(tensors, str(tmp), metadata={"format": FORMAT}), 0o644)
    meta = {"format": FORMAT, **{k: v for k, v in info.items() if k not in ("format", "num_params", "provenance")},
            "num_params": int(sum(t.numel() for t in tensors.values())),
            "provenance": info.get("provenance", {})}
    write_text_atomic(model_json, json.dumps(meta, indent=2) + "\n")
    return weights, model_json


def read_info(path: str | Path) -> dict:
    """model.json of an artifact (no tensors read)."""
    mj = artifact_dir(path) / MODEL_JSON
    try:
        info = json.loads(mj.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{mj}: unreadable ({exc})") from None
    if not isinstance(info, dict):
        raise CheckpointError(f"{mj}: expected a JSON object (giant's model.json)")
    return info


def read_artifact(path: str | Path) -> tuple[dict, dict]:
    """(state dict, model.json) of an artifact, given its folder or one of its files."""
    from safetensors.torch import load_file

    info = read_info(path)
    return load_file(str(artifact_dir(path) / WEIGHTS)), info


def artifact_model(path: str | Path) -> Optional[dict]:
    """The model config (a dict of ModelConfig fields) in an artifact's model.json, or None
    when there is no model.json there."""
    if not (artifact_dir(path) / MODEL_JSON).is_file():
        return None
    return read_info(path).get("model")


def read_rowmap(path: str | Path, key: str = "finetune.head_rowmap") -> list[int]:
    """A JSON list of head rows (`giant data k710 rowmap` writes one); `key` names the setting
    that pointed here, for the message."""
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{key}={path}: cannot read a JSON list of rows ({exc}); "
                          "write one with `giant data k710 rowmap`") from exc
    if not isinstance(rows, list) or not rows or not all(isinstance(r, int) and r >= 0 for r in rows):
        raise ConfigError(f"{key}={path}: expected a JSON list of head rows (integers >= 0)")
    return rows


def slice_head(state: dict, rows: list[int], where: str, source: Any) -> int:
    """Keep the head rows `rows`, in their order (a K710 head → K400), in place; → the number
    of rows the head had. `where` ("key=path" of the row map) and `source` (the weights) name
    the two files in the error when a row is past the head."""
    import torch

    have = int(state["head.weight"].shape[0])
    if max(rows) >= have:
        raise ConfigError(f"{where}: row {max(rows)} but the head in {source} has {have} rows")
    idx = torch.tensor(rows, dtype=torch.long)
    for key in HEAD_KEYS:
        state[key] = state[key].index_select(0, idx).contiguous()
    return have
