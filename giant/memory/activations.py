"""What one GPU holds besides model states: the activation model per block and stage, the
precision policy it assumes, a teacher's share (see giant/memory/__init__.py for the derivation)."""
from __future__ import annotations

from dataclasses import dataclass

from giant.config import MaskConfig, ModelConfig
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
    """A frozen teacher (stages/teacher.py): (weights, forward working set). Its backbone is cast
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
    from giant.models import resolve as resolve_model
    cfg = resolve_model(cfg)
    if cfg.arch != "videomae" or cfg.sampler != "none":
        raise ConfigError(f"model.arch={cfg.arch}, model.sampler={cfg.sampler}: the memory planner models "
                          "the VideoMAE / V2 models only (not MAE-ST or the AdaMAE sampler)")
    return cfg
