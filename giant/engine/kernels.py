"""Which GPU kernels the FP32 matmuls and the attention run on (precision.decoder_matmul,
engine.attention_backends).

Both are GPU-only choices: on a CPU nothing here changes a flag, so CPU results stay as they were.

- TF32: the decoder, `encoder_to_decoder` and the heads run in FP32 (docs/reference.md §5). Without TF32 a
  GPU runs them as true-FP32 matmuls, ~7% of ViT-g pre-training's FLOPs but ~40% of its step
  time; the official code enables TF32. Weights, activations and the loss stay FP32.
- SDPA priority: torch tries flash first; on Hopper cuDNN's fused attention is faster and takes
  ViT-g's head dim 88. The priority is entered around every transformer block's forward (below
  activation checkpointing, so a recomputation picks the same kernel as the forward did), and
  the kernels not named follow, so a shape one kernel refuses (FP32 attention) falls through.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Optional

import torch
import torch.nn as nn

from giant.config import SDPA_BACKENDS

log = logging.getLogger(__name__)

_FP32_MATMUL = {"tf32": "tf32", "fp32": "ieee"}  # config value -> torch's fp32_precision
_WRAPPED = "_giant_attention_priority"


def set_fp32_matmul(mode: str, device: torch.device | str) -> Optional[str]:
    """Set how this process's CUDA FP32 matmuls run; → torch's setting, or None on other devices.
    Process-wide on purpose: the backward's matmuls run outside any forward-time scope."""
    if torch.device(device).type != "cuda":
        return None
    value = _FP32_MATMUL[mode]
    # torch >= 2.9 refuses a mix of the old allow_tf32 flag and the new setting: new one only
    torch.backends.cuda.matmul.fp32_precision = value
    return value


def _sdpa_backend(name: str) -> Any:
    from torch.nn.attention import SDPBackend

    return {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[name]


def attention_priority(setting: str, device: torch.device | str) -> Optional[list[str]]:
    """engine.attention_backends on `device` → kernel names in priority order (all four), or None
    for torch's own order (CPUs; auto on GPUs other than Hopper)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    if setting.strip() == "auto":
        if torch.cuda.get_device_capability(device)[0] != 9:
            return None
        names = ["cudnn", "flash"]  # Hopper: cuDNN attention is the fastest at giant's shapes
    else:
        names = [n.strip() for n in setting.split(",")]
    return names + [n for n in SDPA_BACKENDS if n not in names]


def _with_priority(inner: Any, backends: list) -> Any:
    from torch.nn.attention import sdpa_kernel

    @functools.wraps(inner)
    def forward(*args: Any, **kwargs: Any) -> Any:
        with sdpa_kernel(backends, set_priority=True):
            return inner(*args, **kwargs)

    return forward


def apply_attention_priority(model: nn.Module, setting: str, device: torch.device | str) -> Optional[list[str]]:
    """Run every block of `model.checkpoint_blocks()` under the SDPA priority. Call before
    activation checkpointing and compile wrap the blocks. → the priority, or None (unchanged)."""
    names = attention_priority(setting, device)
    describe = getattr(model, "checkpoint_blocks", None)
    if names is None or describe is None:
        return None
    backends = [_sdpa_backend(n) for n in names]
    enc, dec = describe()
    for blk in [*enc, *dec]:
        if not getattr(blk, _WRAPPED, False):
            blk.forward = _with_priority(blk.forward, backends)  # instance attribute: keys unchanged
            setattr(blk, _WRAPPED, True)
    log.info("attention kernels, in priority order: %s", ", ".join(names))
    return names
