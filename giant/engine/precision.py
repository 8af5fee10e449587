"""The precision policy: encoder in FP16/BF16 autocast, decoder + target + loss in FP32 (docs/reference.md §5).

Why not DeepSpeed's own mixed precision:
- The `fp16` / `bf16` sections cast the whole module to 16 bits, decoder and loss included,
  which is exactly the official code's defect (docs/reference.md §7).
- The `torch_autocast` section (DeepSpeed 0.19) wraps the *whole* forward in autocast, and for
  FP16 under ZeRO 1-3 it uses a per-rank `torch.amp.GradScaler`: ZeRO's clipping then sees
  scaled gradients (its own loss scale is 1), and each rank decides inf/skip on its own shard.

So parameters and optimizer state stay FP32 (no DeepSpeed fp16/bf16 section), the encoder's
forward is wrapped in `torch.autocast` here (model code stays precision-free, docs/architecture.md layering),
and FP16 uses `DynamicLossScaler` below, pushed into the ZeRO optimizer through its
`override_loss_scale()` hook. ZeRO then multiplies the loss by our scale in `engine.backward`,
divides it out before clipping, and — because the optimizer dtype is FP32 — treats a
non-finite *global* gradient norm (all-reduced across ranks) as an overflow: every rank skips the
same step and `engine.skipped_steps` counts it. We only move the scale.

`precision.encoder: auto` is resolved per device by `resolve_precision` once per run, before
anything reads it: BF16 where the hardware has it (FP16 on GPUs without BF16), FP32 on CPUs
that would only emulate BF16 (4-27x slower training steps there, docs/PERFORMANCE.md).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import platform
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn

from giant.config import RunConfig
from giant.errors import ConfigError

log = logging.getLogger(__name__)

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_WRAPPED = "_giant_precision_wrapped"
# BF16 vs FP32 train step on an AVX2-only EPYC (issue 7): tiny 8x32 4.4x, ViT-B 16x224 27x slower;
# 3.6x / 6.5x with oneDNN capped at AVX2 on a Zen 4 (docs/PERFORMANCE.md).
EMULATED_BF16_COST = "4-27x slower training steps than fp32"


def low_precision_dtype(name: str) -> Optional[torch.dtype]:
    if name not in DTYPES:
        raise ConfigError(f"precision.encoder={name!r}: use fp32, bf16 or fp16 "
                          "(auto is resolved per device by resolve_precision before the engine is built)")
    return DTYPES[name]


# ----------------------------------------------------------------------------- auto resolution
def cpu_native_bf16() -> bool:
    """Whether this CPU runs BF16 matmuls natively rather than by conversion to FP32.

    oneDNN's own check (torch.ops.mkldnn._is_mkldnn_bf16_supported) is False on AVX2-only CPUs
    (and under ONEDNN_MAX_CPU_ISA=AVX2) but True on any AVX-512 core, where BF16 without the
    avx512_bf16/AMX instructions is emulated too: on x86 one of those is required as well."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        if probe is None or not probe():
            return False
    except RuntimeError:  # a torch built without oneDNN
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True
    isa = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(f is None for f in isa):  # an older torch without the ISA probes: oneDNN's word
        return True
    return any(f is not None and f() for f in isa)


def cuda_bf16(device: torch.device) -> bool:
    """Native BF16 on this GPU (Ampere+ or ROCm); torch's default also counts emulation."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def choose_encoder_precision(requested: str, device: torch.device | str) -> tuple[str, str]:
    """(concrete precision, why) for `precision.encoder` on `device`; concrete requests pass."""
    device = torch.device(device)
    if requested != "auto":
        return requested, "set in the recipe"
    if device.type == "cuda":
        if cuda_bf16(device):
            return "bf16", "GPU with BF16"
        return "fp16", "GPU without BF16 (loss-scaled FP16)"
    if device.type == "cpu":
        if cpu_native_bf16():
            return "bf16", "CPU with native BF16"
        return "fp32", f"CPU without native BF16, where BF16 means {EMULATED_BF16_COST}"
    return "fp32", f"no low-precision policy for {device.type} devices"


@functools.lru_cache(maxsize=None)
def _log_once(level: int, msg: str) -> None:
    """One line per process however often a run resolves; rank 0 only (every rank decides)."""
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    log.log(level if rank == 0 else logging.DEBUG, msg)


def resolve_precision(cfg: RunConfig, device: torch.device | str, announce: bool = True) -> RunConfig:
    """Copy of `cfg` whose precision.encoder is concrete for `device` (auto → bf16/fp16/fp32).

    Called once per run right after the device is known, so the loss scaler, the loop's fp16
    flag, MFU, the DeepSpeed JSON checks, checkpoint meta and the dumped config all see the
    value actually trained with (a run written with auto resumes on the same kind of device).
    announce=False: the caller logs the choice (announce_precision) once its input checks pass,
    so a bad input stays one error line."""
    requested = cfg.precision.encoder
    enc, _ = choose_encoder_precision(requested, device)
    if announce:
        announce_precision(requested, device)
    if enc == requested:
        return cfg
    return dataclasses.replace(cfg, precision=dataclasses.replace(cfg.precision, encoder=enc))


def announce_precision(requested: str, device: torch.device | str) -> None:
    """The one log line about the encoder precision chosen for `requested` on `device`."""
    enc, why = choose_encoder_precision(requested, device)
    if requested == "auto":
        _log_once(logging.INFO, f"precision.encoder=auto -> {enc} ({why})")
    elif enc == "bf16" and torch.device(device).type == "cpu" and not cpu_native_bf16():
        _log_once(logging.WARNING, f"precision.encoder=bf16 on a CPU without native BF16: its BF16 matmuls "
                  f"are emulated, expect {EMULATED_BF16_COST} (docs/PERFORMANCE.md); "
                  "precision.encoder=auto picks fp32 here")


def _low_modules(model: nn.Module, encoder_precision: str) -> list[nn.Module]:
    describe = getattr(model, "low_precision_modules", None)
    if describe is None:
        raise ConfigError(f"precision.encoder={encoder_precision}: model {type(model).__name__} does "
                          "not say which modules run in low precision (low_precision_modules)")
    return list(describe())


def resolve_cast(cast: str, device_type: str) -> str:
    """precision.cast → model | block. auto: model on GPUs (one cast into the trunk and one out);
    block elsewhere, where the CPU results recorded so far were made with it."""
    if cast == "auto":
        return "model" if device_type == "cuda" else "block"
    if cast not in ("model", "block"):
        raise ConfigError(f"precision.cast={cast!r}: use auto, model or block")
    return cast


def fp32_after(modules: list, cast: str, device_type: str) -> list[bool]:
    """Per low-precision module (the model lists them in forward order): whether its output is
    cast back to FP32. model: the last one only, so the residual stream between blocks stays in
    low precision; block: every one."""
    one = resolve_cast(cast, device_type) == "model"
    return [not one or i == len(modules) - 1 for i in range(len(modules))]


def apply_precision(model: nn.Module, encoder_precision: str, device_type: str,
                    cast: str = "auto") -> nn.Module:
    """Run the model's `low_precision_modules()` under autocast; everything else with autocast OFF.

    Instance-level forward replacement: state_dict keys, hooks (ZeRO-3 gathers) and the class
    are untouched. The trunk returns FP32 (after its last module, or after each one with
    cast=block) so whatever follows (the decoder's `encoder_to_decoder`, a classifier's fc_norm
    and head, the loss) runs in FP32.
    """
    dtype = low_precision_dtype(encoder_precision)
    if dtype is None or getattr(model, _WRAPPED, False):
        return model
    subs = _low_modules(model, encoder_precision)
    outer = model.forward

    @functools.wraps(outer)
    def fp32_forward(*args: Any, **kwargs: Any) -> Any:
        # An ambient autocast (e.g. a user's) must not reach the decoder, the head or the loss.
        with torch.autocast(device_type=device_type, enabled=False):
            return outer(*args, **kwargs)

    for sub, to_fp32 in zip(subs, fp32_after(subs, cast, device_type)):
        sub.forward = _autocast_forward(sub.forward, device_type, dtype, to_fp32)
    model.forward = fp32_forward
    setattr(model, _WRAPPED, True)
    log.debug("precision: %d module(s) of %s under %s autocast (cast per %s), rest fp32", len(subs),
              type(model).__name__, dtype, resolve_cast(cast, device_type))
    return model


def _autocast_forward(inner: Any, device_type: str, dtype: torch.dtype, to_fp32: bool = True) -> Any:
    @functools.wraps(inner)
    def low_forward(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type=device_type, dtype=dtype, enabled=True):
            out = inner(*args, **kwargs)
        return out.float() if to_fp32 and torch.is_tensor(out) else out

    return low_forward


@dataclass
class LossScaleConfig:
    """DeepSpeed `fp16` section semantics: loss_scale 0 = dynamic, > 0 = static."""

    loss_scale: float = 0.0
    initial_scale_power: int = 16
    loss_scale_window: int = 1000
    hysteresis: int = 2
    min_loss_scale: float = 1.0

    @classmethod
    def from_ds_section(cls, section: dict, where: str) -> "LossScaleConfig":
        allowed = {"enabled", "loss_scale", "initial_scale_power", "loss_scale_window",
                   "hysteresis", "min_loss_scale", "auto_cast"}
        unknown = sorted(set(section) - allowed)
        if unknown:
            raise ConfigError(f"{where}: fp16.{unknown[0]} is not supported by giant's loss scaler; "
                              f"valid keys are {sorted(allowed - {'auto_cast'})}")
        if section.get("auto_cast"):
            raise ConfigError(f"{where}: fp16.auto_cast=true would autocast the whole model; remove "
                              "it (giant autocasts only the encoder, see precision.encoder)")
        keys = ("loss_scale", "initial_scale_power", "loss_scale_window", "hysteresis", "min_loss_scale")
        return cls(**{k: section[k] for k in keys if k in section})


class LossScaler:
    """No scaling (FP32 / BF16): scale 1, nothing pushed into the engine."""

    scale = 1.0

    def before_step(self, engine: Any) -> None:
        pass

    def update(self, overflow: bool) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class DynamicLossScaler(LossScaler):
    """FP16 dynamic loss scale: shrink ×½ on overflow (after `hysteresis` tolerated overflows),
    grow ×2 after `window` overflow-free steps. Static when `cfg.loss_scale > 0`."""

    def __init__(self, cfg: LossScaleConfig):
        self.cfg = cfg
        self.dynamic = cfg.loss_scale == 0
        self.scale = float(2 ** cfg.initial_scale_power) if self.dynamic else float(cfg.loss_scale)
        self.good_steps = 0
        self.hysteresis_left = cfg.hysteresis
        self.overflows = 0

    def before_step(self, engine: Any) -> None:
        opt = getattr(engine, "optimizer", None)
        if not hasattr(opt, "override_loss_scale"):
            raise ConfigError("precision.encoder=fp16 needs a ZeRO optimizer (stage 1, 2 or 3) for "
                              "loss scaling: set zero_optimization.stage >= 1 in the DeepSpeed JSON")
        opt.override_loss_scale(self.scale)

    def update(self, overflow: bool) -> None:
        if overflow:
            self.overflows += 1
            self.good_steps = 0
            if not self.dynamic:
                return
            if self.hysteresis_left > 1:
                self.hysteresis_left -= 1
                return
            self.scale = max(self.scale / 2.0, self.cfg.min_loss_scale)
            log.info("fp16 overflow: step skipped, loss scale -> %g", self.scale)
            return
        self.good_steps += 1
        if self.dynamic and self.good_steps % self.cfg.loss_scale_window == 0:
            self.scale *= 2.0
            self.hysteresis_left = self.cfg.hysteresis

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps,
                "hysteresis_left": self.hysteresis_left, "overflows": self.overflows}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.scale = float(state["scale"])
            self.good_steps = int(state["good_steps"])
            self.hysteresis_left = int(state["hysteresis_left"])
            self.overflows = int(state["overflows"])


def build_loss_scaler(encoder_precision: str, scale_cfg: Optional[LossScaleConfig]) -> LossScaler:
    """FP16 gets a dynamic scaler; BF16 and FP32 have the exponent range to need none."""
    if encoder_precision == "fp16":
        return DynamicLossScaler(scale_cfg or LossScaleConfig())
    return LossScaler()
