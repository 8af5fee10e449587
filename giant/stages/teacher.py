"""The teacher side of distillation: a frozen low-precision copy of a classifier, and the loss.

Why the teacher's weights are cast instead of run under autocast: it is never trained, so there
are no FP32 master weights to keep; storing its backbone (the model's `low_precision_modules()`)
in BF16/FP16 halves its memory (ViT-g: 2 GB instead of 4 GB per rank), and autocast would
re-cast every weight on every forward. fc_norm and the head stay FP32 (tiny, and their logits
go through a temperature softmax). The teacher runs under `torch.no_grad` (not
`inference_mode`: its logits are the KL target, and autograd must be able to save them), so its
outputs hold no graph and none of its activations outlive the forward.
"""
from __future__ import annotations

import functools
import logging
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from giant.engine.precision import fp32_after, low_precision_dtype
from giant.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)


def _cpu_native_bf16() -> bool:
    """AVX512-BF16 or AMX: BF16 matmuls without conversion to FP32 (elsewhere they are emulated
    and slower than FP32)."""
    probes = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(p is not None and p() for p in probes)


def choose_teacher_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """(concrete precision, why). `auto` follows the encoder rule of giant.engine.precision
    (`choose_encoder_precision`) where that exists; else this local rule, which is the same."""
    if requested != "auto":
        if requested == "fp16" and device.type == "cpu":
            log.warning("distill.teacher_precision=fp16 on a CPU: its FP16 matmuls are emulated (several "
                        "times slower than FP32 here); auto picks bf16 or fp32")
        return requested, "set in the recipe"
    try:
        from giant.engine.precision import choose_encoder_precision  # type: ignore[attr-defined]
    except ImportError:
        choose_encoder_precision = None
    if choose_encoder_precision is not None:
        return choose_encoder_precision("auto", device)
    if device.type == "cuda":
        return ("bf16", "GPU with BF16") if torch.cuda.is_bf16_supported() else ("fp16", "GPU without BF16")
    if device.type == "cpu" and _cpu_native_bf16():
        return "bf16", "CPU with native BF16"
    return "fp32", "CPU without native BF16"


def _cast_forward(inner: Any, dtype: torch.dtype, to_fp32: bool = True) -> Any:
    @functools.wraps(inner)
    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = inner(x.to(dtype), *args, **kwargs)
        return out.float() if to_fp32 else out

    return forward


def freeze_teacher(model: nn.Module, precision: str, device: torch.device, cast: str = "auto") -> nn.Module:
    """Eval mode (no dropout / drop path), no parameter requires grad, backbone weights cast to
    `precision` (the trunk takes FP32 in and gives FP32 out: once, or per block with
    precision.cast=block, see giant.engine.precision.fp32_after), moved to `device`."""
    model.eval().requires_grad_(False)
    dtype = low_precision_dtype(precision)
    if dtype is not None:
        describe = getattr(model, "low_precision_modules", None)
        if describe is None:
            raise ConfigError(f"distill.teacher_precision={precision}: {type(model).__name__} does not say "
                              "which modules run in low precision; use fp32")
        subs = list(describe())
        for sub, to_fp32 in zip(subs, fp32_after(subs, cast, torch.device(device).type)):
            sub.to(dtype)
            sub.forward = _cast_forward(sub.forward, dtype, to_fp32)
    return model.to(device)


@torch.no_grad()
def teacher_logits(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """FP32 logits without an autograd graph."""
    return teacher(x).float()


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                 temperature: float = 1.0) -> torch.Tensor:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)), summed over classes and averaged over the batch.
    T² keeps the gradient's size independent of T (Hinton et al. 2015). FP32."""
    t = float(temperature)
    log_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return t * t * F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)


class PartitionedTeacher(nn.Module):
    """A frozen teacher whose weights are ZeRO-3 partitions (DeepSpeed's ZeRO-Inference path: an
    engine without an optimizer). Why not deepspeed.init_inference: it is GPU-only and splits by
    tensor parallelism, not by rank. Input cast to the weights' dtype, logits returned in FP32."""

    def __init__(self, engine: Any, dtype: torch.dtype):
        super().__init__()
        self.engine, self.dtype = engine, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.engine(x.to(self.dtype)).float()

    def local_numel(self) -> int:
        """Elements of the teacher this rank holds (its ZeRO-3 shards)."""
        return sum(p.ds_tensor.numel() for p in self.engine.module.parameters())


def partition_teacher(build: Any, state: dict, precision: str, device: torch.device,
                      where: str = "teacher") -> PartitionedTeacher:
    """Build the teacher inside deepspeed.zero.Init (no rank ever holds all of it), fill it from
    `state` one gathered module at a time, and wrap it in a ZeRO-3 engine without an optimizer.
    `build()` returns the bare model; every rank must call this (it is collective)."""
    import deepspeed

    from giant.engine.deepspeed import load_state

    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("distill.teacher_zero3 with teacher_precision=fp16 on a CPU: DeepSpeed refuses FP16 "
                          "there; use bf16 or fp32")
    ds = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
          "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
          "bf16": {"enabled": precision == "bf16"}, "fp16": {"enabled": precision == "fp16"}}
    with deepspeed.zero.Init(config_dict_or_path=ds):  # dtype from the config (see construct_model)
        model = build()
    missing, unexpected = load_state(model, state)
    if missing or unexpected:
        raise CheckpointError(f"{where}: weights do not fit the teacher model (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    model.requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=model, config=ds)
    engine.eval()  # eval mode for the module too: no drop path
    return PartitionedTeacher(engine, low_precision_dtype(precision) or torch.float32)
