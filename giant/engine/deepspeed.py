"""Build the DeepSpeed engine: DeepSpeed JSON (engine settings) + recipe (training settings).

The JSON owns how the engine runs (ZeRO stage, buckets, offload, fp16 loss-scaling knobs,
communication). The recipe owns what is trained (micro batch, accumulation, clipping, optimizer,
schedule). Recipe-owned keys are filled into the JSON here; a JSON value that disagrees with the
recipe is a ConfigError naming both, never a silent override. Activation checkpointing is
applied here too, by wrapping block instances: model code stays unaware of it.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from giant.config import OptimConfig, RunConfig
from giant.engine.ds_config import MergedDS, fit_to_device, resolve_ds_config, resolve_optim, zero_stage
from giant.engine.precision import LossScaler, apply_precision, build_loss_scaler, cuda_bf16
from giant.errors import ConfigError

log = logging.getLogger(__name__)



# ----------------------------------------------------------------------------- distributed
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SHM_OP = "deepspeed_shm_comm"  # DeepSpeed's ShareMemCommBuilder.NAME


def _skip_shm_allreduce_op() -> None:
    """Keep DeepSpeed's CPU backend from building its shared-memory all-reduce op. At init it
    maps a 69 MB /dev/shm file per rank that it never unlinks (DeepSpeed 0.19.8): every 2-rank
    CPU run left 138 MB of RAM behind until reboot (6.4 GB after one day of tests here), and the
    first run paid a ~40 s JIT build. The op serves deepspeed.comm.inference_all_reduce only;
    training reduces through torch.distributed (gloo), which giant uses throughout."""
    import deepspeed.ops

    ops = deepspeed.ops.__compatible_ops__  # build_shm_op() returns None for an incompatible op
    if SHM_OP in ops:
        ops[SHM_OP] = False


def init_distributed(cfg: RunConfig, device: Optional[torch.device] = None) -> tuple[int, int, int, torch.device]:
    """Start (or join) the process group → (rank, world_size, local_rank, device).

    Launched by `deepspeed`/`torchrun` the env is set; a plain `python launch/pretrain.py`
    becomes a 1-rank world so the same code path runs everywhere. `device`: what select_device
    already chose (the driver resolves precision before any process group exists).
    """
    import deepspeed

    if device is None:
        local_rank, device = select_device(cfg)
    else:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = cfg.engine.dist_backend or ("nccl" if device.type == "cuda" else "gloo")
    if not torch.distributed.is_initialized():
        if device.type == "cpu":
            _skip_shm_allreduce_op()
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, device


def select_device(cfg: RunConfig) -> tuple[int, torch.device]:
    """This rank's (local_rank, device), before any process group: stage.device, else CUDA by
    LOCAL_RANK when visible, else CPU. A plain `python` run becomes rank 0 of a 1-rank world."""
    if "RANK" not in os.environ and "OMPI_COMM_WORLD_RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = cfg.stage.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"stage.device={dev!r} but no CUDA device is visible; use stage.device=cpu")
        index = local_device_index(local_rank, torch.cuda.device_count(), dev)
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
        # DeepSpeed takes LOCAL_RANK as the device index (its engine's set_device, zero.Init's
        # local device): under one GPU per task that is 0 on every rank, not the node-local rank
        os.environ["LOCAL_RANK"] = str(index)
        if "OMPI_COMM_WORLD_LOCAL_RANK" in os.environ:  # DeepSpeed asserts that the two agree
            os.environ["OMPI_COMM_WORLD_LOCAL_RANK"] = str(index)
    else:
        device = torch.device(dev)
    return local_rank, device


def local_device_index(local_rank: int, visible: int, requested: str = "cuda") -> int:
    """The CUDA index (among the devices this process sees) of a rank with node-local rank
    `local_rank`. One visible device (Slurm's one GPU per task: --gpus-per-task=1,
    --gpu-bind=single:1, CUDA_VISIBLE_DEVICES with one entry) → 0 on every rank; all of the
    node's devices visible (torchrun, deepspeed) → the local rank. A local rank beyond several
    visible devices is ambiguous (which of them is this rank's depends on how Slurm laid the
    tasks out), so it is an error, unless stage.device=cuda:N names the index."""
    if ":" in requested:
        index = requested.split(":", 1)[1]
        if not index.isdigit() or int(index) >= visible:
            raise ConfigError(f"stage.device={requested!r}: this process sees {visible} CUDA device(s), "
                              f"indices 0..{visible - 1}; use stage.device=cuda to pick by LOCAL_RANK")
        return int(index)
    if visible == 1:
        return 0
    if 0 <= local_rank < visible:
        return local_rank
    shown = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
    raise ConfigError(
        f"LOCAL_RANK={local_rank} but this process sees {visible} GPUs (CUDA_VISIBLE_DEVICES={shown}), "
        "so which one is its own is ambiguous: give each task one GPU (srun --gpus-per-task=1 or "
        "--gpu-bind=single:1), or let every task see all of the node's GPUs (no GPU binding)")


# ----------------------------------------------------------------------------- param groups
# The engine asks the model (timm's habit): `no_weight_decay()`, `layer_id(name)`, `num_layers`,
# `low_precision_modules()`, `checkpoint_blocks()`. It never parses parameter names itself.


def no_weight_decay(name: str, param: torch.Tensor, skip_names: frozenset = frozenset()) -> bool:
    """1-D params (norms, biases incl. q_bias/v_bias), biases, and what the model names."""
    ndim = len(getattr(param, "ds_shape", param.shape))  # a zero.Init-partitioned param is 1-D, empty
    return ndim <= 1 or name.endswith(".bias") or name in skip_names


def _model_layers(model: nn.Module) -> tuple[int, Any]:
    num_layers = getattr(model, "num_layers", None)
    layer_of = getattr(model, "layer_id", None)
    if num_layers is None or layer_of is None:
        raise ConfigError(f"optim.layer_decay is set but {type(model).__name__} does not describe its "
                          "layers (num_layers / layer_id); unset optim.layer_decay")
    return int(num_layers), layer_of


def param_groups(model: nn.Module, weight_decay: float, layer_decay: Optional[float] = None) -> list[dict]:
    """AdamW groups carrying `lr_scale` / `wd_scale`; the loop multiplies them in every step.
    Layer scale = decay^(L+1-layer) (docs/reference.md §5, official LayerDecayValueAssigner)."""
    skip_names = frozenset(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else frozenset()
    num_layers, layer_of = _model_layers(model) if layer_decay is not None else (0, None)
    groups: dict[tuple[bool, int], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = no_weight_decay(name, p, skip_names)
        lid = layer_of(name) if layer_of is not None else 0
        key = (skip, lid)
        if key not in groups:
            scale = layer_decay ** (num_layers + 1 - lid) if layer_decay is not None else 1.0
            groups[key] = {"params": [], "names": [], "lr_scale": scale, "layer_id": lid,
                           "wd_scale": 0.0 if skip else 1.0,
                           "weight_decay": 0.0 if skip else weight_decay}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    out = [groups[k] for k in sorted(groups)]
    for g in out:  # names are for logs/tests; optimizers must not carry them around
        g["num_params"] = sum(getattr(p, "ds_numel", p.numel()) for p in g["params"])
        g.pop("names")
    return out


def set_lr_wd(optimizer: Any, lr: float, wd: float) -> None:
    """Write this step's lr / wd into every group, honouring its layer and no-decay scales."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
        g["weight_decay"] = wd * g.get("wd_scale", 1.0)


# ----------------------------------------------------------------------------- activation ckpt
def _checkpoint_forward(module: nn.Module) -> None:
    if getattr(module, "_giant_checkpointed", False):  # wrapping twice would recompute twice
        return
    inner = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return inner(*args, **kwargs)
        return checkpoint(inner, *args, use_reentrant=False, **kwargs)

    module.forward = forward  # instance attribute: state_dict keys and class unchanged
    module._giant_checkpointed = True


def _checkpoint_blocks(model: nn.Module, what: str) -> tuple[list[nn.Module], list[nn.Module]]:
    describe = getattr(model, "checkpoint_blocks", None)
    if describe is None:
        raise ConfigError(f"{what}: {type(model).__name__} does not list its blocks (checkpoint_blocks)")
    enc, dec = describe()
    return list(enc), list(dec)


def apply_activation_checkpointing(model: nn.Module, mode: str) -> int:
    """off | all (encoder + decoder blocks) | first:N (first N encoder blocks). → #wrapped."""
    if mode == "off":
        return 0
    enc_blocks, dec_blocks = _checkpoint_blocks(model, f"engine.activation_checkpointing={mode}")
    if mode == "all":
        targets = enc_blocks + dec_blocks
    else:
        n = int(mode.split(":", 1)[1])
        if n > len(enc_blocks):
            raise ConfigError(f"engine.activation_checkpointing={mode}: the encoder has only "
                              f"{len(enc_blocks)} blocks; use first:{len(enc_blocks)} or all")
        targets = enc_blocks[:n]
    for blk in targets:
        _checkpoint_forward(blk)
    return len(targets)


def apply_compile(model: nn.Module, backend: str = "inductor", mode: str = "") -> int:
    """torch.compile every transformer block in place (nn.Module.compile): state_dict keys stay
    the official ones, and blocks of one shape share one compiled graph (one for the encoder,
    one for the decoder: ViT-g's 40 blocks do not each recompile and hit dynamo's recompile
    limit). The gathers, the mask tokens and the loss stay eager."""
    enc_blocks, dec_blocks = _checkpoint_blocks(model, "engine.compile=true")
    blocks = enc_blocks + dec_blocks
    if not blocks:
        raise ConfigError(f"engine.compile=true: {type(model).__name__} has no transformer blocks")
    kwargs = {"backend": backend, **({"mode": mode} if mode else {})}
    for blk in blocks:
        blk.compile(**kwargs)
    return len(blocks)


# ----------------------------------------------------------------------------- ZeRO-3 build
def _post_order(module: nn.Module):
    for child in module.children():
        yield from _post_order(child)
    yield module


def _zero3_partitioned(model: nn.Module) -> bool:
    return any(hasattr(p, "ds_id") for p in model.parameters())


def _check_fp32_shards(model: nn.Module) -> None:
    """Parameters and optimizer state are FP32 by policy (engine/precision.py); a zero.Init
    that chose another dtype would fail later as a dtype clash deep inside a forward."""
    import deepspeed

    got = sorted({str(getattr(p, "ds_tensor", p).dtype) for p in model.parameters()})
    if got != ["torch.float32"]:
        raise ConfigError(f"deepspeed.zero.Init (DeepSpeed {deepspeed.__version__}) built the model in "
                          f"{', '.join(got)}, not FP32 — set engine.zero_init=false to build it unpartitioned "
                          "and report the DeepSpeed version")


def construct_model(cfg: RunConfig, model_cfg: Any, kind: str = "pretrain",
                    ds: Optional[MergedDS] = None) -> nn.Module:
    """The model as the engine will hold it. Under ZeRO-3 with engine.zero_init it is built
    inside deepspeed.zero.Init, so no rank ever holds more than its shard of the FP32 weights
    (a plain build costs 4.1 GB per rank for ViT-g, 8x per node); the published init then runs
    one gathered module at a time on rank 0 and is broadcast: the same weights as a plain
    build from the same seed."""
    import deepspeed

    from giant.models import build_model

    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    ds = (ds or resolve_ds_config(cfg, world)).config
    stats = dict(mean=cfg.data.mean, std=cfg.data.std)  # the model undoes the data's normalisation
    if zero_stage(ds) != 3 or not cfg.engine.zero_init:
        return build_model(model_cfg, kind, **stats)
    # dtype stays None on purpose: the merged config (fp16/bf16 sections disabled) then makes
    # zero.Init build FP32. An explicit dtype=torch.float32 is ignored by DeepSpeed's
    # Init._set_dtype (0.15 … 0.19.8 at least): `dtype or torch.float16 if fp16_supported else
    # torch.bfloat16 if ...` parses as `(dtype or fp16) if ... else bf16`, so on an accelerator
    # without FP16 support (a CPU without oneDNN fp16: AMD, older Intel) it builds a BF16 model.
    with deepspeed.zero.Init(config_dict_or_path={k: v for k, v in ds.items() if k != "giant"}):
        model = build_model(model_cfg, kind, init=False, **stats)
    _check_fp32_shards(model)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    for m in _post_order(model):  # the order model.init_weights() uses, so the RNG stream matches
        own = list(m.parameters(recurse=False))
        if own:
            with deepspeed.zero.GatheredParameters(own, modifier_rank=0):
                if rank == 0:
                    model.init_module(m)
    return model


@torch.no_grad()
def load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """load_state_dict(strict=False) that also fills a ZeRO-3-partitioned model, one gathered
    module at a time (rank 0 writes, DeepSpeed broadcasts). → (missing, unexpected) keys."""
    shapes = {k: tuple(getattr(p, "ds_shape", p.shape)) for k, p in model.named_parameters()}
    bad = [k for k in shapes if k in state and tuple(state[k].shape) != shapes[k]]
    if bad:
        raise ConfigError(f"weights do not fit this model: {bad[0]} is {tuple(state[bad[0]].shape)} "
                          f"in the file, {shapes[bad[0]]} in the model ({len(bad)} tensors differ)")
    if not _zero3_partitioned(model):
        missing, unexpected = model.load_state_dict(state, strict=False)
        return list(missing), list(unexpected)
    import deepspeed

    missing = [k for k in shapes if k not in state]
    unexpected = [k for k in state if k not in shapes]
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    for prefix, m in model.named_modules():
        own = dict(m.named_parameters(recurse=False))
        if not own:
            continue
        with deepspeed.zero.GatheredParameters(list(own.values()), modifier_rank=0):
            if rank == 0:
                for name, p in own.items():
                    key = f"{prefix}.{name}" if prefix else name
                    if key in state:
                        p.copy_(state[key])
    return missing, unexpected


# ----------------------------------------------------------------------------- engine
@dataclass
class EngineInfo:
    ds_config: dict
    optim: OptimConfig  # resolved: absolute lr filled in
    loss_scaler: LossScaler
    world_size: int
    zero_stage: int
    global_batch_clips: int


def adamw_fused(device: torch.device, offload: bool) -> bool:
    """Fused AdamW (one kernel over all tensors) where the parameters live on a GPU; CPU runs keep
    the for-each implementation their recorded results were made with."""
    return device.type == "cuda" and not offload


def _build_optimizer(groups: list[dict], optim: OptimConfig, device: torch.device, offload: bool) -> Any:
    """torch AdamW (no JIT build); DeepSpeedCPUAdam only for GPU runs with optimizer offload."""
    kwargs = dict(lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay)
    if offload and device.type == "cuda":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
    return torch.optim.AdamW(groups, fused=adamw_fused(device, offload), **kwargs)


def match_step_tensors(optimizer: Any) -> int:
    """Put every AdamW `step` where torch's own Optimizer.load_state_dict would: an FP32 tensor
    on the parameter's device for fused / capturable groups, a tensor in any case. DeepSpeed's
    universal-checkpoint load (a resume on another world size) stores each group's step as read
    from disk, a CPU tensor, which fused AdamW on a GPU cannot take. → how many were changed."""
    changed = 0
    for group in optimizer.param_groups:
        on_device = bool(group.get("fused") or group.get("capturable"))
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state or "step" not in state:
                continue
            step = state["step"]
            fixed = step if torch.is_tensor(step) else torch.tensor(float(step), dtype=torch.float32)
            if on_device:
                fixed = fixed.to(dtype=torch.float32, device=p.device)
            if fixed is not step:
                state["step"] = fixed
                changed += 1
    return changed


IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable")  # how this process runs AdamW, not what it learnt


def _match_steps_after_load(engine: Any) -> None:
    """engine.load_checkpoint, then the optimizer under the ZeRO wrapper as this run built it:
    loads copy the saved param-group settings over the live ones (a checkpoint written on a CPU
    says fused=False), so the implementation flags are put back, then match_step_tensors."""
    load = engine.load_checkpoint

    def load_checkpoint(*args: Any, **kwargs: Any) -> Any:
        inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
        groups = getattr(inner, "param_groups", None)
        if groups is None:
            return load(*args, **kwargs)
        built = [{k: g[k] for k in IMPLEMENTATION_KEYS if k in g} for g in groups]
        out = load(*args, **kwargs)
        for group, flags in zip(inner.param_groups, built):
            group.update(flags)
        if match_step_tensors(inner):
            log.debug("AdamW step counts moved to the parameters' device after the load")
        return out

    engine.load_checkpoint = load_checkpoint  # instance attribute: the engine class is untouched


def _device_kernels(model: nn.Module, cfg: RunConfig, device: torch.device) -> None:
    """The precision policy and the GPU kernel choices, before checkpointing / compile wrap blocks."""
    from giant.engine.kernels import apply_attention_priority, set_fp32_matmul

    apply_precision(model, cfg.precision.encoder, device.type, cfg.precision.cast)
    set_fp32_matmul(cfg.precision.decoder_matmul, device)
    apply_attention_priority(model, cfg.engine.attention_backends, device)


def build_engine(model: nn.Module, cfg: RunConfig, device: torch.device,
                 run_dir: Optional[Path] = None, rank: int = 0,
                 load_universal: bool = False, ds: Optional[MergedDS] = None) -> tuple[Any, EngineInfo]:
    """Apply the precision policy and activation checkpointing to `model`, merge configs, build
    param groups + AdamW, deepspeed.initialize. Writes ds_config.json. One place for this
    sequence, so training, `giant bench` and the tests run the very same engine.
    load_universal: the run resumes a universal checkpoint (another world size / ZeRO stage)."""
    import deepspeed

    assert cfg.precision.encoder != "auto", "resolve_precision(cfg, device) before build_engine"
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    merged = ds or resolve_ds_config(cfg, world)
    ds, scale_cfg = copy.deepcopy(merged.config), merged.scale
    stage = zero_stage(ds)
    if cfg.precision.encoder == "fp16" and stage == 0:
        raise ConfigError(f"{cfg.engine.ds_config}: precision.encoder=fp16 needs ZeRO stage >= 1 "
                          "(loss scaling lives in the ZeRO optimizer); use ds_configs/zero1.json or higher")
    optim = resolve_optim(cfg.optim, world)
    offload = ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none") not in ("none", None)
    if offload and device.type == "cuda":
        ds.pop("zero_force_ds_cpu_optimizer", None)
    ds = fit_to_device(ds, device, world)
    _device_kernels(model, cfg, device)
    apply_activation_checkpointing(model, cfg.engine.activation_checkpointing)
    if cfg.engine.compile:
        n = apply_compile(model, cfg.engine.compile_backend, cfg.engine.compile_mode)
        log.info("torch.compile (%s%s): %d blocks; the first step compiles", cfg.engine.compile_backend,
                 f", {cfg.engine.compile_mode}" if cfg.engine.compile_mode else "", n)
    model.to(device)
    groups = param_groups(model, optim.weight_decay, optim.layer_decay)
    optimizer = _build_optimizer(groups, optim, device, offload)
    if run_dir is not None and rank == 0:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "ds_config.json").write_text(json.dumps(ds, indent=2) + "\n")
    engine_cfg = {k: v for k, v in ds.items() if k != "giant"}
    if load_universal:
        engine_cfg["checkpoint"] = {**engine_cfg.get("checkpoint", {}), "load_universal": True}
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=engine_cfg)
    _match_steps_after_load(engine)
    info = EngineInfo(ds_config=ds, optim=optim, world_size=world, zero_stage=stage,
                      loss_scaler=build_loss_scaler(cfg.precision.encoder, scale_cfg),
                      global_batch_clips=ds["train_batch_size"])
    log.info("engine: ZeRO-%d, %d ranks, global batch %d clips, peak lr %.3g, encoder %s",
             stage, world, info.global_batch_clips, optim.lr, cfg.precision.encoder)
    return engine, info
