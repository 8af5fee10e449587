"""Model states under each ZeRO stage, one stage's peak, the fastest checkpointing that fits,
and a stage read from a recipe."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from giant.config import ModelConfig, RunConfig
from giant.errors import ConfigError
from giant.memory.activations import (CONTEXT_GIB, DEFAULT_GPU_GIB, FRAGMENTATION, GIB, KINDS, _videomae, classifier_activations, gpu_policy, pretrain_activations, teacher_bytes)


# ----------------------------------------------------------------------------- model states
@dataclass(frozen=True)
class Zero:
    """The DeepSpeed JSON's memory-relevant settings (DeepSpeed's defaults where unset)."""

    stage: int = 0
    offload_optimizer: bool = False
    offload_param: bool = False
    reduce_bucket: int = int(5e8)
    overlap_comm: bool = False
    comm_bytes: int = 4
    max_live: int = int(1e9)

    @classmethod
    def from_json(cls, ds: dict) -> "Zero":
        z = ds.get("zero_optimization", {}) or {}
        stage = int(z.get("stage", 0))
        off = lambda key: (z.get(key) or {}).get("device", "none") not in ("none", None)  # noqa: E731
        comm = str(ds.get("communication_data_type") or "fp32").lower()
        return cls(stage=stage, offload_optimizer=off("offload_optimizer"), offload_param=off("offload_param"),
                   reduce_bucket=int(float(z.get("reduce_bucket_size", 5e8))),
                   overlap_comm=bool(z.get("overlap_comm", stage == 3)),
                   comm_bytes=2 if comm in ("bf16", "fp16", "bfloat16", "half") else 4,
                   max_live=int(float(z.get("stage3_max_live_parameters", 1e9))))


def model_states(params: int, z: Zero, world: int) -> tuple[dict[str, int], dict[str, int]]:
    """(per-GPU bytes, per-rank host bytes) of parameters, gradients, optimizer and ZeRO buffers."""
    p, shard = params, -(-params // world)
    if z.stage == 0:
        gpu = {"parameters": 4 * p, "gradients": 4 * p, "optimizer": 8 * p, "zero buffers": 4 * z.reduce_bucket}
        return gpu, {}
    # ZeRO-3 updates its FP32 shards in place; offloaded, it keeps an FP32 copy on the host
    master = 0 if (z.stage == 3 and not z.offload_optimizer) else 4 * shard
    optim = {"optimizer": master + 8 * shard, "grad partition": 4 * shard}
    grads = 4 * p if z.stage == 1 else 0
    if z.stage == 3:
        params_gpu = min(z.max_live, p) * 4 + (0 if z.offload_param else 4 * shard)
    else:
        params_gpu = 4 * p
    buckets = z.reduce_bucket * 4 * (2 if z.overlap_comm and z.stage < 3 else 1)
    buckets += z.reduce_bucket * z.comm_bytes if z.comm_bytes < 4 else 0
    host = {}
    if z.offload_optimizer:
        host.update(optim)
        optim = {"optimizer": 0, "grad partition": 0}
    if z.offload_param and z.stage == 3:
        host["parameters"] = 4 * shard
    gpu = {"parameters": params_gpu, "gradients": grads + optim["grad partition"],
           "optimizer": optim["optimizer"], "zero buffers": buckets}
    return gpu, host


# ----------------------------------------------------------------------------- one stage
@dataclass
class Stage:
    """What the planner needs of a stage: its config, kind, DeepSpeed JSON and world size."""

    cfg: RunConfig
    kind: str
    ds: dict
    world: int
    teacher: Optional[ModelConfig] = None  # distill: the teacher's architecture


@dataclass
class Setting:
    """One activation-checkpointing choice at one micro-batch: bytes per GPU by line."""

    ckpt: str
    videos: int  # optim.batch_size
    clips: int  # per GPU per micro-step (videos × data.num_sample)
    gpu: dict[str, int] = field(default_factory=dict)
    host: dict[str, int] = field(default_factory=dict)
    recompute: float = 0.0  # recomputed forward FLOPs / training FLOPs without recomputation

    @property
    def allocated(self) -> int:
        return sum(v for k, v in self.gpu.items() if k != "allowance")

    @property
    def peak(self) -> int:
        return sum(self.gpu.values())

    def fits(self, gpu_gib: float) -> bool:
        return self.peak <= gpu_gib * GIB


def _input_bytes(cfg: RunConfig, kind: str, clips: int) -> int:
    """uint8 batch + its FP32 normalised copy (+ the mixed copy for Mixup/CutMix)."""
    m = cfg.model
    values = clips * m.in_chans * m.num_frames * m.img_size ** 2
    mixed = kind != "pretrain" and (cfg.finetune.mixup > 0 or cfg.finetune.cutmix > 0)
    return values * (5 + (4 if mixed else 0))


def evaluate(stage: Stage, ckpt: str, videos: Optional[int] = None) -> Setting:
    """Per-GPU bytes of `stage` with engine.activation_checkpointing=`ckpt` at `videos` per GPU."""
    from giant.flops import count

    cfg, kind = stage.cfg, stage.kind
    if kind not in KINDS:
        raise ConfigError(f"stage kind {kind!r}: the memory planner models {', '.join(KINDS)}")
    videos = cfg.optim.batch_size if videos is None else videos
    clips = videos * cfg.data.num_sample
    policy = gpu_policy(cfg.precision.encoder, cfg.precision.cast)
    model = _videomae(cfg.model)
    if kind == "pretrain":
        act = pretrain_activations(model, cfg.mask, clips, ckpt, policy)
        macs = count(model, "pretrain", cfg.mask)["macs"]
    else:
        act = classifier_activations(model, clips, ckpt, policy)
        macs = count(model, "finetune")["macs"]
    gpu, host = model_states(count(model, "pretrain" if kind == "pretrain" else "finetune",
                                   cfg.mask)["params"], Zero.from_json(stage.ds), stage.world)
    teacher_w = teacher_work = 0
    if kind == "distill":
        d = cfg.distill
        prec = "bf16" if d.teacher_precision == "auto" else d.teacher_precision
        teacher_w, teacher_work = teacher_bytes(stage.teacher or model, clips, prec, stage.world, d.teacher_zero3)
    gpu.update({"teacher weights": teacher_w, "weight copies": act.weights_saved,
                "input batch": _input_bytes(cfg, kind, clips), "activations": act.blocks + act.other,
                "transient": max(act.transient, teacher_work - act.saved)})
    gpu["allowance"] = int(CONTEXT_GIB * GIB + FRAGMENTATION * sum(gpu.values()))
    host.update(_loader_host(cfg, videos, kind))
    return Setting(ckpt=ckpt, videos=videos, clips=clips, gpu=gpu, host=host,
                   recompute=act.recompute_macs / (3 * macs))


def _loader_host(cfg: RunConfig, videos: int, kind: str) -> dict[str, int]:
    """Host memory per rank the loader holds: batches waiting in /dev/shm (workers × prefetch,
    as giant.data.loader.check_shared_memory counts them) and as many pinned copies (a bound)."""
    from giant.models import resolve as resolve_model
    from giant.data.loader import clip_item_bytes
    from giant.flops import decoder_kept_tokens, token_grid, visible_tokens

    m = resolve_model(cfg.model)
    index_tokens = 0
    if kind == "pretrain":
        k = visible_tokens(token_grid(m), cfg.mask)
        index_tokens = k + decoder_kept_tokens(token_grid(m), cfg.mask, k)
    batch = videos * clip_item_bytes(cfg.data.num_sample, m.in_chans, m.num_frames, m.img_size,
                                     index_tokens, labels=kind != "pretrain")
    waiting = cfg.data.num_workers * cfg.data.prefetch_factor * batch
    return {"loader /dev/shm": waiting, "loader pinned": max(waiting, batch)}


def candidates(stage: Stage) -> list[str]:
    """Every checkpointing setting giant supports, fastest first."""
    from giant.models import resolve as resolve_model
    depth = resolve_model(stage.cfg.model).depth
    return ["off"] + [f"first:{i}" for i in range(1, depth + 1)] + ["all"]


@dataclass
class Plan:
    stage: Stage
    gpu_gib: float
    rows: list[Setting]  # off, the fastest first:N that fits (if any), all; at the recipe's batch
    fastest: Optional[Setting]  # None: nothing fits
    max_batch: dict[str, int] = field(default_factory=dict)  # ckpt → largest videos per GPU that fits


def plan(stage: Stage, gpu_gib: float = DEFAULT_GPU_GIB, search_batch: bool = False) -> Plan:
    """The table (off / the least first:N that fits / all) and the fastest setting that fits."""
    fastest = next((s for s in map(lambda c: evaluate(stage, c), candidates(stage)) if s.fits(gpu_gib)), None)
    shown = ["off", "all"]
    if fastest is not None and fastest.ckpt not in shown:
        shown.insert(1, fastest.ckpt)
    rows = [evaluate(stage, c) for c in shown]
    result = Plan(stage, gpu_gib, rows, fastest)
    if search_batch:
        result.max_batch = {c: largest_batch(stage, c, gpu_gib) for c in shown}
    return result


def largest_batch(stage: Stage, ckpt: str, gpu_gib: float, limit: int = 4096) -> int:
    """The most videos per GPU (optim.batch_size) that fit with `ckpt`; 0 if not even one."""
    lo, hi = 0, 1
    while hi <= limit and evaluate(stage, ckpt, hi).fits(gpu_gib):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:  # memory grows with the batch: bisect between the last fit and the first miss
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if evaluate(stage, ckpt, mid).fits(gpu_gib) else (lo, mid)
    return lo


# ----------------------------------------------------------------------------- from a recipe
def infer_kind(cfg: RunConfig) -> str:
    """distill when a teacher is named, finetune with a classifier head, else pretrain."""
    if cfg.distill.teacher or cfg.distill.teacher_model:
        return "distill"
    return "finetune" if cfg.model.num_classes > 0 else "pretrain"


def teacher_model(cfg: RunConfig) -> Optional[ModelConfig]:
    """The teacher's architecture: distill.teacher_model, else the model.json beside its weights
    when readable here; fed the student's clips (stages/teacher.py)."""
    from giant.models import resolve as resolve_model
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    art: dict = {}
    path = Path(cfg.distill.teacher) if cfg.distill.teacher else None
    for candidate in ([path / "model.json", path.parent / "model.json"] if path else []):
        if candidate.is_file():
            try:
                art = {k: v for k, v in json.loads(candidate.read_text()).get("model", {}).items() if k in fields}
            except (OSError, ValueError, AttributeError):
                art = {}
            break
    art.update(cfg.distill.teacher_model or {})
    if "name" not in art:
        return None
    m = cfg.model
    return resolve_model(dataclasses.replace(
        ModelConfig(**art), num_frames=m.num_frames, img_size=m.img_size,
        num_classes=art.get("num_classes") or max(m.num_classes, 1), pos_grid=None,
        drop_path_rate=0.0, head_drop_rate=0.0, sampler="none"))


def stage_from_config(cfg: RunConfig, kind: Optional[str] = None, world: int = 8,
                      ds_path: Optional[str] = None, teacher: Optional[ModelConfig] = None) -> Stage:
    from giant.engine.ds_config import load_ds_json

    kind = kind or infer_kind(cfg)
    if kind not in KINDS:
        raise ConfigError(f"kind {kind!r}: the memory planner models {', '.join(KINDS)}")
    if world < 1:
        raise ConfigError(f"--world {world}: need at least 1 rank")
    ds = load_ds_json(ds_path or cfg.engine.ds_config)
    if kind == "distill" and teacher is None:
        teacher = teacher_model(cfg)
    return Stage(cfg=cfg, kind=kind, ds=ds, world=world, teacher=teacher)


def fit_warning(stage: Stage, gpu_gib: float) -> Optional[str]:
    """One line when the stage as configured will not fit `gpu_gib`, with the fix; else None."""
    ckpt = stage.cfg.engine.activation_checkpointing
    now = evaluate(stage, ckpt)
    if now.fits(gpu_gib):
        return None
    p = plan(stage, gpu_gib)
    if p.fastest is not None:
        fix = f"set engine.activation_checkpointing={p.fastest.ckpt} ({p.fastest.peak / GIB:.1f} GiB)"
    elif largest_batch(stage, "all", gpu_gib):
        fix = (f"lower optim.batch_size ({largest_batch(stage, 'all', gpu_gib)} fits with "
               "engine.activation_checkpointing=all) or use a higher ZeRO stage")
    else:
        fix = "even one video per GPU does not fit: use a higher ZeRO stage or offload (ds_configs/zero3_offload.json)"
    return (f"needs ~{now.peak / GIB:.1f} GiB per GPU with activation_checkpointing={ckpt} at "
            f"{now.clips} clips per GPU, more than {gpu_gib:g} GiB: {fix} (giant memory for the breakdown)")
