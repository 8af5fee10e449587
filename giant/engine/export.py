"""Consolidating an engine checkpoint into the artifact the next stage starts from
(giant.artifact: weights.safetensors + model.json). DeepSpeed's zero_to_fp32 merges the shards
of any ZeRO stage (ZeRO-3 included) without a process group, a GPU or the training world size:
`giant export RUN_DIR`. Checkpoint files load weights-only unless the caller trusts them.
"""
from __future__ import annotations

import contextlib
import io
import logging
import pickle
import time
from pathlib import Path
from typing import Optional

import torch

from giant.artifact import write_artifact
from giant.engine import safe_load
from giant.engine.checkpoint import latest_tag, read_meta
from giant.errors import CheckpointError

log = logging.getLogger(__name__)


def consolidated_state_dict(root: Path, tag: str, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """FP32 full state dict from any ZeRO stage, on CPU, without a process group. Weights-only
    (DeepSpeed's loaders forced too) unless `trust_pickle`: a run dir from elsewhere runs no code."""
    meta = read_meta(root / tag)
    types = safe_load.deepspeed_types()
    if meta.get("zero_stage", 0) == 0:
        files = sorted((root / tag).glob("mp_rank_*_model_states.pt"))
        if not files:
            raise CheckpointError(f"{root / tag}: no mp_rank_*_model_states.pt; the checkpoint is incomplete")
        saved = safe_load.load(files[0], types, trust_pickle, expected="a DeepSpeed model-states file",
                               fix="if you trust this run dir, re-run with --trust-pickle")
        if not isinstance(saved, dict) or not isinstance(saved.get("module"), dict):
            raise CheckpointError(f"{files[0]}: no 'module' weights in it; not a DeepSpeed checkpoint file")
        return saved["module"]
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    safe_load.check_files(sorted((root / tag).glob("*_states.pt")), types, trust_pickle)
    loads = contextlib.nullcontext() if trust_pickle else safe_load.weights_only_everywhere(types)
    try:
        chatter = io.StringIO()  # it print()s its progress and draws a tqdm bar
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter), loads, \
                safe_load.guard(root / tag):
            state = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
        log.debug("zero_to_fp32: %s", chatter.getvalue().strip())
        return state
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"{root / tag}: cannot consolidate ZeRO shards ({exc})") from exc


def export_weights(root: str | Path, out_dir: str | Path, tag: Optional[str] = None,
                   provenance: Optional[dict] = None, trust_pickle: bool = False) -> tuple[Path, Path]:
    """Write out_dir/weights.safetensors (fp32) + out_dir/model.json from one checkpoint."""
    root, out_dir = Path(root), Path(out_dir)
    tag = tag or latest_tag(root)
    if not tag:
        raise CheckpointError(f"{root}: no complete checkpoint to export (train first, or point at a "
                              "run dir / its checkpoints dir)")
    meta = read_meta(root / tag)
    state = consolidated_state_dict(root, tag, trust_pickle)
    info = {"kind": meta.get("kind", "pretrain"), "model": meta.get("model_full", meta.get("model", {})),
            "mask": meta.get("mask"),
            "provenance": {"checkpoint": str((root / tag).resolve()), "step": meta.get("step"),
                           "stage": meta.get("stage"), "zero_stage": meta.get("zero_stage"),
                           "world_size": meta.get("world_size"), "exported_at": time.time(),
                           **(provenance or {})}}
    weights, model_json = write_artifact(out_dir, state, info)
    log.info("exported %d tensors (%d params) from %s to %s", len(state),
             sum(t.numel() for t in state.values()), root / tag, weights)
    return weights, model_json
