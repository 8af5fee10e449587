"""The DeepSpeed JSON (engine settings) merged with the recipe (training settings), once per run.

The JSON owns how the engine runs (ZeRO stage, buckets, offload, fp16 loss-scaling knobs,
communication). The recipe owns what is trained (micro batch, accumulation, clipping, optimizer,
schedule). Recipe-owned keys are filled into the JSON here; a JSON value that disagrees with the
recipe is a ConfigError naming both, never a silent override. No DeepSpeed import: the
planner and the pre-flight checks read it too.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from giant.config import OptimConfig, RunConfig
from giant.engine.precision import LossScaleConfig, cuda_bf16
from giant.engine.schedule import resolve_lrs, videos_per_step
from giant.errors import ConfigError

log = logging.getLogger(__name__)
_REPO_ROOT = Path(__file__).resolve().parents[2]


def find_ds_config(path: str) -> Path:
    """The JSON as given, else relative to the source checkout (so cwd does not matter)."""
    p = Path(path)
    if not p.is_file() and not p.is_absolute() and (_REPO_ROOT / p).is_file():
        p = _REPO_ROOT / p
    if not p.is_file():
        raise ConfigError(f"DeepSpeed config {path} does not exist (engine.ds_config / --ds; "
                          "shipped ones are ds_configs/zero1.json, zero2.json, zero3.json, zero3_offload.json)")
    return p


def load_ds_json(path: str | Path) -> dict:
    p = find_ds_config(str(path))
    try:
        data = json.loads(p.read_text())
    except ValueError as exc:  # not JSON, or not even text (UnicodeDecodeError)
        raise ConfigError(f"{p}: invalid JSON: {exc} (--ds takes a DeepSpeed JSON, see ds_configs/)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a JSON object at the top level")
    return data


def resolve_optim(optim: OptimConfig, world_size: int) -> OptimConfig:
    """Copy with the absolute peak and end lr filled in (blr / min_blr scaled by the videos per
    step, repeats not counted, as the official scripts)."""
    return resolve_lrs(optim, videos_per_step(optim, world_size))


def _owned_values(cfg: RunConfig, world_size: int) -> dict[str, tuple[Any, str]]:
    """Recipe-owned DeepSpeed keys → (value, the recipe expression that sets it)."""
    micro = cfg.optim.batch_size * cfg.data.num_sample
    return {
        "train_micro_batch_size_per_gpu": (micro, "optim.batch_size×data.num_sample"),
        "gradient_accumulation_steps": (cfg.optim.accum_steps, "optim.accum_steps"),
        "train_batch_size": (micro * cfg.optim.accum_steps * world_size,
                             "optim.batch_size×data.num_sample×optim.accum_steps×world_size"),
        "gradient_clipping": (float(cfg.optim.clip_grad or 0.0), "optim.clip_grad"),
    }


def _check_precision_sections(ds: dict, cfg: RunConfig, where: str) -> None:
    """The JSON's fp16/bf16 `enabled` must agree with the *resolved* encoder precision. The
    driver merges once, after resolving it for the device; a check made before that
    (check_ds_config on a recipe saying auto) cannot compare these sections yet."""
    enc = cfg.precision.encoder
    for section, want in (("fp16", enc == "fp16"), ("bf16", enc == "bf16")):
        enabled = ds.get(section, {}).get("enabled", "auto")
        if enabled != "auto" and enc != "auto" and bool(enabled) != want:
            raise ConfigError(
                f"{where}: {section}.enabled={json.dumps(enabled)} but recipe precision.encoder={enc} "
                f"— set {section}.enabled to \"auto\" (or remove it) and choose the precision in the recipe")
    if ds.get("bfloat16"):
        raise ConfigError(f"{where}: use the 'bf16' section name, not 'bfloat16'")
    if ds.get("torch_autocast", {}).get("enabled"):
        raise ConfigError(f"{where}: torch_autocast.enabled=true would autocast the decoder and loss too; "
                          "remove the section and set precision.encoder=bf16|fp16 in the recipe")


def merge_ds_config(ds: dict, cfg: RunConfig, world_size: int, where: str,
                    use_torch_optimizer_with_offload: bool = True) -> tuple[dict, LossScaleConfig]:
    """JSON + recipe → the dict given to deepspeed.initialize, plus fp16 loss-scaling settings.

    The JSON's fp16 section only configures giant's loss scaler (the model itself is never cast
    by DeepSpeed, see engine/precision.py), so it is replaced by `{"enabled": false}` here and
    recorded under the `giant` key of the written JSON.
    """
    out = copy.deepcopy(ds)
    for key in ("optimizer", "scheduler"):
        if key in out:
            raise ConfigError(f"{where}: '{key}' is set in the JSON but the recipe owns it "
                              f"(optim.* in the recipe) — remove '{key}' from the JSON")
    for key, (value, expr) in _owned_values(cfg, world_size).items():
        given = out.get(key, "auto")
        if given != "auto" and given != value:
            raise ConfigError(f"{where}: {key}={json.dumps(given)} but recipe {expr}={value} "
                              f"— remove it from the JSON or change the recipe")
        out[key] = value
    _check_precision_sections(out, cfg, where)
    if cfg.engine.compile and zero_stage(out) == 3:  # tried: the ds_id guards recompile per sub-module
        raise ConfigError(f"{where}: ZeRO-3 with recipe engine.compile=true — DeepSpeed's parameter-gathering "
                          "hooks run inside each compiled block and force a recompilation per sub-module; "
                          "use ZeRO-1/2 with compile, or engine.compile=false")
    if cfg.precision.encoder == "fp16" and out.get("zero_optimization", {}).get("compute_grad_norm") is False:
        raise ConfigError(f"{where}: zero_optimization.compute_grad_norm=false but recipe precision.encoder=fp16 "
                          "— FP16 overflow is detected from the global gradient norm; remove the key")
    scale_cfg = LossScaleConfig.from_ds_section(
        {k: v for k, v in out.get("fp16", {}).items() if k != "enabled"}, where)
    out["fp16"] = {"enabled": False}
    out["bf16"] = {"enabled": False}
    out.pop("torch_autocast", None)
    out.setdefault("steps_per_print", 1 << 30)  # giant logs; keep DeepSpeed's own report quiet
    out.setdefault("wall_clock_breakdown", False)
    zero = out.get("zero_optimization", {})
    offload = zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None)
    if offload and use_torch_optimizer_with_offload:
        out.setdefault("zero_force_ds_cpu_optimizer", False)
    out["giant"] = {"encoder_precision": cfg.precision.encoder,
                    "loss_scaling": dataclasses.asdict(scale_cfg) if cfg.precision.encoder == "fp16" else None,
                    "source": where}
    return out, scale_cfg


@dataclass(frozen=True)
class MergedDS:
    """The DeepSpeed JSON merged with the recipe, once per run (see resolve_ds_config)."""

    config: dict
    scale: LossScaleConfig
    source: str

    @property
    def zero_stage(self) -> int:
        return zero_stage(self.config)


def resolve_ds_config(cfg: RunConfig, world_size: int) -> MergedDS:
    """Load + merge + validate: the driver calls it once per run, after precision.encoder is
    resolved and before any process group exists (fail fast, one clear line); the result is
    handed down to construct_model and build_engine, which merge only when given none."""
    ds, scale = merge_ds_config(load_ds_json(cfg.engine.ds_config), cfg, world_size, str(cfg.engine.ds_config))
    return MergedDS(ds, scale, str(cfg.engine.ds_config))


def check_ds_config(cfg: RunConfig, world_size: int) -> dict:
    """Validate JSON + recipe before any process group exists (fail fast, one clear line)."""
    return resolve_ds_config(cfg, world_size).config


def zero_stage(ds: dict) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def fit_to_device(ds: dict, device: torch.device, world_size: int) -> dict:
    """The merged JSON for this device: low-precision gradient communication
    (communication_data_type) is for several GPUs that compute in it. Elsewhere ZeRO reduces in
    FP32: CPU results stay exact, a lone GPU does not round its gradients for no traffic, and a
    GPU without BF16 is not sent BF16."""
    comm = ds.get("communication_data_type")
    if comm not in ("bf16", "fp16"):
        return ds
    gpu = device.type == "cuda" and (comm != "bf16" or cuda_bf16(device))
    if gpu and world_size > 1:
        return ds
    (log.info if device.type == "cuda" else log.debug)(
        "communication_data_type=%s left out: gradients are reduced in fp32 on %d %s rank(s)", comm, world_size,
        device.type)
    return {k: v for k, v in ds.items() if k != "communication_data_type"}
