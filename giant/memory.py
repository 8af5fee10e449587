"""Per-GPU peak memory of a training stage from its recipe (`giant memory`, giant/memory_cli.py).

Why analytic: the question ("does ViT-g at 32 videos per GPU fit an 80 GB card, and with how
little activation checkpointing?") must be answered before any GPU is held, for models too large
to build here. Every number is derived from the resolved model shapes, the mask, the DeepSpeed
JSON and giant's precision policy; the activation model is checked against the bytes autograd
actually saves (`saved_tensors_hooks`, tests/test_memory.py).

What one GPU holds (bytes; P parameters, W ranks):
- Model states, giant's policy (engine/precision.py): parameters, gradients, master copy and AdamW
  moments are all FP32. ZeRO-0: 4P + 4P + 8P. ZeRO-1: 4P params, 4P grads + the 4P/W flattened
  partition at the step, 4P/W master (DeepSpeed clones it even from FP32), 8P/W moments. ZeRO-2:
  grads 4P/W. ZeRO-3: params 4P/W plus the gathered working set (stage3_max_live_parameters,
  a bound), master shared with the FP32 shards. Offload moves master, moments and the gradient
  partition (and ZeRO-3 params) to host memory. Plus the JSON's reduce buckets (×2 with
  overlap_comm) and one bucket cast for a non-FP32 communication_data_type.
- Activations saved for backward, per transformer block on n tokens of width D, MLP H, h heads,
  compute dtype a bytes (2 under BF16/FP16 autocast, 4 FP32): the two LayerNorm inputs (an FP32
  copy under CUDA autocast), the four matmul inputs in a, q/k/v (3D·a), the attention output
  (D·a), the MLP hidden before and after GELU (2H·a), softmax statistics (h·4) and LayerNorm
  statistics (4·4): n·(2·ln·D + 6·a·D + 2·a·H + 4·h + 16). A checkpointed block keeps its input
  only (n·D·stream). The BF16 weight copies autocast makes are saved by each non-checkpointed
  matmul and held in autocast's cache until the forward ends.
- Around the blocks: the input batch (uint8 + FP32, + the mixed copy for Mixup/CutMix), the
  pre-training target while the loss is built, the loss terms, a teacher's weights and forward.
- A fixed allowance for the CUDA context, cuBLAS/cuDNN workspaces and NCCL buffers
  (CONTEXT_GIB) plus FRAGMENTATION of the allocator's peak for the caching allocator's slack.
Not modelled: AdaMAE's sampler and MAE-ST (model.arch=maest), evaluate stages.

Fastest = least recomputation (off, then first:N with the smallest N, then all); with
`--max-batch`, the largest micro-batch that fits each setting.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from giant.config import MaskConfig, ModelConfig, RunConfig
from giant.errors import ConfigError

GIB = 2 ** 30
CONTEXT_GIB = 2.0  # CUDA context (~0.6), cuBLAS/cuDNN workspaces, NCCL communicator buffers
FRAGMENTATION = 0.08  # caching-allocator slack, as a share of the allocated peak
DEFAULT_GPU_GIB = 79.6  # what an "80 GB" A100/H100 reports (81559 MiB); H200: 140.4
KINDS = ("pretrain", "finetune", "distill")
LOW_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "auto": 2}  # auto is BF16 (FP16) on a GPU


@dataclass(frozen=True)
class Policy:
    """How the low-precision trunk runs (engine/precision.py). GPU: CUDA autocast runs LayerNorm
    in FP32 (a 4-byte copy of its input is saved) and the cube embedding is one matmul on a copy
    of the clip (models/vit.py MATMUL_EMBED_DEVICES); CPU autocast runs LayerNorm in the input's
    dtype and the embedding is a Conv3d. `classifier_stream`: bytes of the residual stream
    between a classifier's blocks (precision.cast: model → low precision, block → FP32)."""

    low: int = 2
    norm_fp32: bool = True
    classifier_stream: int = 2
    matmul_embed: bool = True


def gpu_policy(encoder_precision: str, cast: str = "auto") -> Policy:
    """The policy a GPU run of these settings follows (auto precision = BF16, auto cast = model)."""
    if encoder_precision not in LOW_BYTES:
        raise ConfigError(f"precision.encoder={encoder_precision!r}: use auto, bf16, fp16 or fp32")
    low = LOW_BYTES[encoder_precision]
    return Policy(low=low, norm_fp32=True, classifier_stream=4 if cast == "block" else low)


# ----------------------------------------------------------------------------- activations
def block_bytes(n: int, dim: int, hidden: int, heads: int, low: int, stream: int, norm_fp32: bool) -> int:
    """Bytes one clip's pass through one block saves for backward (not checkpointed)."""
    ln_in = 4 if (norm_fp32 and low < 4) else stream
    return n * (2 * ln_in * dim + 6 * low * dim + 2 * low * hidden + 4 * heads + 16)


def block_weight_bytes(dim: int, hidden: int, low: int) -> int:
    """Low-precision copies of one block's matmul weights (qkv, proj, fc1, fc2); 0 in FP32."""
    return (4 * dim * dim + 2 * dim * hidden) * low if low < 4 else 0


def parse_ckpt(mode: str, enc_depth: int) -> tuple[int, bool]:
    """engine.activation_checkpointing → (checkpointed encoder blocks, decoder checkpointed)."""
    if mode == "off":
        return 0, False
    if mode == "all":
        return enc_depth, True
    if mode.startswith("first:") and mode[6:].isdigit() and int(mode[6:]) <= enc_depth:
        return int(mode[6:]), False
    raise ConfigError(f"engine.activation_checkpointing={mode!r}: use off, all or first:N with "
                      f"N <= {enc_depth} encoder blocks")


@dataclass
class Activations:
    """One micro-step's activation memory (bytes, all clips of the micro-batch)."""

    blocks: int  # saved by the transformer blocks (full or checkpointed)
    other: int  # saved outside the blocks: embedding, norms, heads, loss
    weights_saved: int  # low-precision weight copies autograd keeps (non-checkpointed blocks)
    weight_cache: int  # all low-precision weight copies, alive until the forward ends
    forward_end: int  # transient at the end of the forward (the pre-training target)
    backward: int  # backward working set: one recomputed block + gradient buffers
    recompute_macs: int  # forward MACs recomputed per clip

    @property
    def saved(self) -> int:
        """What autograd holds after the forward: compare with saved_tensors_hooks."""
        return self.blocks + self.other + self.weights_saved

    @property
    def transient(self) -> int:
        return max(self.weight_cache - self.weights_saved + self.forward_end, self.backward)


def _grad_work(clips: int, n: int, dim: int, hidden: int, low: int) -> int:
    """Gradient buffers alive in one block's backward: stream grads in/out (FP32) and the
    largest intermediate's grad pair."""
    return clips * n * (2 * dim * 4 + 2 * max(hidden, 3 * dim) * low)


def _trunk(clips: int, cfg: ModelConfig, n: int, n_ckpt: int, p: Policy, stream: int) -> tuple[int, int, int, int]:
    """Encoder blocks → (saved bytes, saved weight copies, one block's full bytes, its weights).
    Drop path saves one (clips, 1, 1) mask per residual branch of a non-checkpointed block."""
    hid = int(cfg.embed_dim * cfg.mlp_ratio)
    full = clips * block_bytes(n, cfg.embed_dim, hid, cfg.num_heads, p.low, stream, p.norm_fp32)
    weights = block_weight_bytes(cfg.embed_dim, hid, p.low)
    dropping = sum(1 for i in range(n_ckpt, cfg.depth) if cfg.drop_path_rate * i / max(cfg.depth - 1, 1) > 0)
    saved = n_ckpt * clips * n * cfg.embed_dim * stream + (cfg.depth - n_ckpt) * full + dropping * 2 * clips * p.low
    return saved, (cfg.depth - n_ckpt) * weights, full, weights


def _embed_saved(clips: int, cfg: ModelConfig, p: Policy) -> tuple[int, int]:
    """Cube embedding: (the copy of the clip it saves, its saved low-precision weight copy). The
    Conv3d saves its input (in FP32 the batch itself, counted with the input) and its weight; the
    matmul form saves only the reordered cubes (the clip needs no gradient), a copy in any dtype."""
    pix = cfg.in_chans * cfg.tubelet_size * cfg.patch_size ** 2
    values = cfg.in_chans * cfg.num_frames * cfg.img_size ** 2
    if p.matmul_embed:
        return clips * values * p.low, 0
    return (clips * values * p.low, cfg.embed_dim * pix * p.low) if p.low < 4 else (0, 0)


def pretrain_activations(cfg: ModelConfig, mask: MaskConfig, clips: int, ckpt: str, p: Policy) -> Activations:
    """The VideoMAE V2 autoencoder (giant/models/mae.py) on `clips` clips."""
    from giant.flops import block_macs, decoder_kept_tokens, token_grid, visible_tokens
    from giant.models.vit import patch_dim

    cfg = _videomae(cfg)
    grid = token_grid(cfg)
    n = grid[0] * grid[1] * grid[2]
    k = visible_tokens(grid, mask)
    m = decoder_kept_tokens(grid, mask, k)
    n_ckpt, dec_ckpt = parse_ckpt(ckpt, cfg.depth)
    d, e = cfg.embed_dim, cfg.decoder_embed_dim
    dec_hid = int(e * cfg.decoder_mlp_ratio)
    stream = p.low  # the whole encoder is one autocast region: its residual stream is low precision
    enc, enc_w, enc_full, blk_w = _trunk(clips, cfg, k, n_ckpt, p, stream)
    dec_full = clips * block_bytes(k + m, e, dec_hid, cfg.decoder_num_heads, 4, 4, False)
    dec = cfg.decoder_depth * (clips * (k + m) * e * 4 if dec_ckpt else dec_full)
    video, embed_w = _embed_saved(clips, cfg, p)
    ln_in = 4 if (p.norm_fp32 and p.low < 4) else stream
    out_vals = patch_dim(cfg)  # values per token the decoder head predicts
    other = (video + clips * n * d * stream  # the clip copy; the token gather keeps all N embedded
             + clips * k * (d * ln_in + 8 + d * 4)  # encoder norm input + stats, encoder_to_decoder input
             + clips * ((k + m) * e * 4 + m * 8 + m * e * 4)  # decoder norm (whole last stream) + head input
             + clips * m * (out_vals * 4 + 4) + 4)  # loss: squared-error operand, token weights
    values = clips * cfg.in_chans * cfg.num_frames * cfg.img_size ** 2
    target = 4 * values + 8 * clips * m * out_vals  # FP32 cubes of all tokens, the kept ones twice
    enc_rec = n_ckpt * block_macs(k, d, int(d * cfg.mlp_ratio))
    dec_rec = cfg.decoder_depth * block_macs(k + m, e, dec_hid) if dec_ckpt else 0
    backward = max((enc_full + blk_w) if n_ckpt else 0, dec_full if dec_ckpt else 0) + max(
        _grad_work(clips, k, d, int(d * cfg.mlp_ratio), p.low), _grad_work(clips, k + m, e, dec_hid, 4))
    return Activations(blocks=enc + dec, other=other, weights_saved=enc_w + embed_w,
                       weight_cache=cfg.depth * blk_w + embed_w, forward_end=target, backward=backward,
                       recompute_macs=enc_rec + dec_rec)


def classifier_activations(cfg: ModelConfig, clips: int, ckpt: str, p: Policy) -> Activations:
    """The fine-tuning classifier (giant/models/classifier.py) on `clips` clips, training mode."""
    from giant.flops import block_macs, token_grid

    cfg = _videomae(cfg)
    grid = token_grid(cfg)
    n = grid[0] * grid[1] * grid[2]
    n_ckpt, _ = parse_ckpt(ckpt, cfg.depth)
    d, hid = cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio)
    blocks, blocks_w, full, blk_w = _trunk(clips, cfg, n, n_ckpt, p, p.classifier_stream)
    video, embed_w = _embed_saved(clips, cfg, p)
    head_drop = 1 if cfg.head_drop_rate > 0 else 0
    other = video + clips * (d * 4 * (2 + head_drop) + 8)  # fc_norm input + stats, head input, dropout mask
    backward = (full + blk_w if n_ckpt else 0) + _grad_work(clips, n, d, hid, p.low)
    return Activations(blocks=blocks, other=other, weights_saved=blocks_w + embed_w,
                       weight_cache=cfg.depth * blk_w + embed_w, forward_end=0, backward=backward,
                       recompute_macs=n_ckpt * block_macs(n, d, hid))


def teacher_bytes(cfg: ModelConfig, clips: int, precision: str, world: int, zero3: bool) -> tuple[int, int]:
    """A frozen teacher (engine/teacher.py): (weights, forward working set). Its backbone is cast
    to `precision`, fc_norm and head stay FP32; ZeRO-3 keeps 1/world plus one gathered block."""
    from giant.flops import block_params, count, token_grid

    cfg = _videomae(cfg)
    low = LOW_BYTES[precision]
    total = count(cfg, "finetune")["params"]
    head = cfg.embed_dim * cfg.num_classes + cfg.num_classes + 2 * cfg.embed_dim
    hid = int(cfg.embed_dim * cfg.mlp_ratio)
    weights = (total - head) * low + head * 4
    if zero3:
        weights = weights // world + block_params(cfg.embed_dim, hid) * low
    grid = token_grid(cfg)
    n = grid[0] * grid[1] * grid[2]
    d = cfg.embed_dim
    # no graph: the FP32 stream in and out of a block, its input cast, q/k/v, attention, MLP pair
    work = clips * n * (2 * d * 4 + d * low + 4 * d * low + 2 * hid * low)
    return weights, work


def _videomae(cfg: ModelConfig) -> ModelConfig:
    cfg = cfg.resolved()
    if cfg.arch != "videomae" or cfg.sampler != "none":
        raise ConfigError(f"model.arch={cfg.arch}, model.sampler={cfg.sampler}: the memory planner models "
                          "the VideoMAE / V2 models only (not MAE-ST or the AdaMAE sampler)")
    return cfg


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
    from giant.data.loader import clip_item_bytes
    from giant.flops import decoder_kept_tokens, token_grid, visible_tokens

    m = cfg.model.resolved()
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
    depth = stage.cfg.model.resolved().depth
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
    when readable here; fed the student's clips (engine/teacher.py)."""
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
    return dataclasses.replace(ModelConfig(**art), num_frames=m.num_frames, img_size=m.img_size,
                               num_classes=art.get("num_classes") or max(m.num_classes, 1), pos_grid=None,
                               drop_path_rate=0.0, head_drop_rate=0.0, sampler="none").resolved()


def stage_from_config(cfg: RunConfig, kind: Optional[str] = None, world: int = 8,
                      ds_path: Optional[str] = None, teacher: Optional[ModelConfig] = None) -> Stage:
    from giant.engine.deepspeed import load_ds_json

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
