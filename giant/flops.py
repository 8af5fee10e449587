"""Analytic parameter and MAC/FLOP counts for any model config, derived from shapes alone.

Why analytic: the papers quote "FLOPs" that are really multiply-accumulates (MACs) of the
matmuls, and MFU needs a number for configs too large to instantiate. Conventions, chosen so
that all five published numbers land within 0.15% (docs/reference.md §6):

- Only matmuls count: every Linear, the cube-embedding Conv3d (on ALL N tokens, before the
  mask is applied, as the official code does), QKᵀ and AV. Norms, softmax, GELU, biases,
  adds, mean pooling and the loss are left out (they are O(N·D), < 0.5% here).
- One block on n tokens, width D, MLP hidden H: n(4D² + 2DH) + 2n²D MACs
  (qkv 3D² + proj D², fc1 + fc2 2DH, QKᵀ and AV n²D each over all heads).
- Pre-training: embed (N tokens) + encoder on the K visible tokens + encoder_to_decoder on K
  + decoder on K + M tokens + decoder head on the M tokens it returns. Dual masking: M = the
  decoder-kept positions (not de-duplicated against the visible ones, docs/reference.md §2). Decoder ratio
  0 / 'none' (VideoMAE V1): M = N − K, the decoder sees all N tokens.
- Fine-tune / test view: embed + encoder on all N tokens + classifier head (D·C).
- flops = 2·macs (one forward). train_flops = 3·flops: backward ≈ 2× forward, the usual
  convention behind MFU (it slightly over-counts the embedding, whose input needs no grad).

- AdaMAE (mask.encoder adaptive): + the sampler on ALL N tokens (one block at encoder width,
  MLP 4×, then Linear(D→1)); for ViT-B at 16×224 it costs more than the 78-token encoder.
- MAE-ST (model.arch maest): the cls token is one more token in the encoder and the decoder;
  the decoder head predicts u·p·p·C values (u = pred_t_dim / T'); q/k/v each carry a bias.

Results at 16×224, tube 0.9: vit_b 35.44 G (paper 35.48) / 25.84 G (25.87); vit_g 263.96 G
(263.93) / 241.61 G (241.61); vit_g fine-tune view 2.5428 T (2.544). The per-step mask
generation and AdaMAE's draw (a top-K) are not counted.
"""
from __future__ import annotations

from typing import Optional

from giant.config import MaskConfig, ModelConfig
from giant.errors import ConfigError
from giant.masking import running_cell_count
from giant.models.vit import token_grid

STAGES = ("pretrain", "finetune")


def _hidden(dim: int, ratio: float) -> int:
    return int(dim * ratio)


def block_macs(n: int, dim: int, hidden: int) -> int:
    """MACs of one pre-norm transformer block on n tokens (matmuls only)."""
    return n * (4 * dim * dim + 2 * dim * hidden) + 2 * n * n * dim


def block_params(dim: int, hidden: int) -> int:
    """norm1, qkv (no bias) + q_bias + v_bias, proj, norm2, fc1, fc2."""
    return 2 * dim + 3 * dim * dim + 2 * dim + dim * dim + dim + 2 * dim + (dim * hidden + hidden) + (hidden * dim + dim)


def sampler_params(n: int, dim: int) -> int:
    """AdaMAE sampler: its position table (N·D), one block without q/v biases, Linear(D→1)."""
    return n * dim + block_params(dim, 4 * dim) - 2 * dim + dim + 1


def _tables(grid: tuple[int, int, int], dim: int) -> int:
    """MAE-ST cls token + separable position tables (spatial H'W', temporal T', class 1)."""
    t, h, w = grid
    return dim + (h * w + t + 1) * dim


def _target_values(cfg: ModelConfig) -> int:
    """Values the decoder head predicts per token."""
    if cfg.arch == "maest":
        from giant.models.maest import frames_per_token, resolve_maest_config

        return frames_per_token(resolve_maest_config(cfg)) * cfg.patch_size ** 2 * cfg.in_chans
    return 3 * cfg.tubelet_size * cfg.patch_size ** 2  # target pixels per token (RGB)


def visible_tokens(grid: tuple[int, int, int], mask: MaskConfig) -> int:
    """Encoder-visible tokens per clip: every strategy keeps a fixed count (docs/reference.md §3); the
    rounding is giant.masking's, so FLOPs match the index tensors the loader draws."""
    t, h, w = grid
    s, n = h * w, t * h * w
    if mask.encoder == "tube":
        return (s - int(mask.ratio * s)) * t
    if mask.encoder == "frame":
        return max(t - int(mask.ratio * t), 1) * s
    if mask.encoder == "block":
        return n - int(mask.ratio * n)
    if mask.encoder in ("random", "adaptive"):
        return int(n * (1 - mask.ratio))
    raise ConfigError(f"mask.encoder={mask.encoder!r} is unknown; use tube, random, frame or block")


def decoder_kept_tokens(grid: tuple[int, int, int], mask: MaskConfig, visible: int) -> int:
    """Tokens the decoder reconstructs (and its head runs on)."""
    t, h, w = grid
    s = h * w
    if mask.decoder == "none" or mask.decoder_ratio == 0:
        return t * s - visible  # VideoMAE V1: every encoder-masked token
    if mask.decoder == "running_cell":  # every 2×2 cell keeps 4 − int(4·ratio) positions
        return t * s * (4 - running_cell_count(mask.decoder_ratio)) // 4
    raise ConfigError(f"mask.decoder={mask.decoder!r} is unknown; use running_cell or none")


def _pretrain_parts(cfg: ModelConfig, grid: tuple[int, int, int], mask: MaskConfig, parts_macs: dict,
                    parts_params: dict) -> tuple[int, int]:
    """Encoder on the visible tokens, the decoder and (AdaMAE) the sampler: fills the two
    breakdowns in place. → (encoder tokens, decoder tokens)."""
    n = grid[0] * grid[1] * grid[2]
    d, hid = cfg.embed_dim, _hidden(cfg.embed_dim, cfg.mlp_ratio)
    maest = cfg.arch == "maest"
    cls = 1 if maest else 0
    dd = cfg.decoder_embed_dim
    dhid = _hidden(dd, cfg.decoder_mlp_ratio)
    out = _target_values(cfg)
    visible = visible_tokens(grid, mask)
    kept = decoder_kept_tokens(grid, mask, visible)
    enc_tokens, dec_tokens = visible + cls, visible + kept + cls
    parts_macs["encoder_blocks"] = cfg.depth * block_macs(enc_tokens, d, hid)
    parts_macs["encoder_to_decoder"] = visible * d * dd
    parts_macs["decoder_blocks"] = cfg.decoder_depth * block_macs(dec_tokens, dd, dhid)
    parts_macs["decoder_head"] = kept * dd * out
    parts_params.update(
        norm=2 * d,
        encoder_to_decoder=d * dd + (dd if maest else 0),
        mask_token=dd,
        decoder_blocks=cfg.decoder_depth * (block_params(dd, dhid) + (dd if maest else 0)),
        decoder_norm=2 * dd,
        decoder_head=dd * out + out,
    )
    if maest:
        parts_params["decoder_tokens"] = _tables(grid, dd)
    if mask.encoder == "adaptive":
        parts_macs["sampler"] = block_macs(n, d, 4 * d) + n * d
        parts_params["sampler"] = sampler_params(n, d)
    return enc_tokens, dec_tokens


def count(model_cfg: ModelConfig, stage: str = "pretrain", mask_cfg: Optional[MaskConfig] = None) -> dict:
    """Parameters and forward MACs of one clip, with a per-part breakdown.

    `model_cfg` may be unresolved (None fields come from MODEL_SIZES). Fine-tune uses
    `num_classes` (0 = no head). All counts are exact ints.
    """
    from giant.models import resolve as resolve_model
    if stage not in STAGES:
        raise ConfigError(f"stage={stage!r} is unknown; use one of {', '.join(STAGES)}")
    cfg = resolve_model(model_cfg)
    mask = mask_cfg or MaskConfig()
    grid = token_grid(cfg)
    n = grid[0] * grid[1] * grid[2]
    d, hid = cfg.embed_dim, _hidden(cfg.embed_dim, cfg.mlp_ratio)
    pix = cfg.in_chans * cfg.tubelet_size * cfg.patch_size**2
    maest = cfg.arch == "maest"
    cls = 1 if maest else 0  # MAE-ST's cls token is one more token in every block
    parts_macs = {"patch_embed": n * pix * d}
    parts_params = {"patch_embed": pix * d + d,
                    "encoder_blocks": cfg.depth * (block_params(d, hid) + (d if maest else 0))}
    if stage == "finetune":
        enc_tokens, dec_tokens = n + cls, 0
        c = cfg.num_classes
        parts_macs["encoder_blocks"] = cfg.depth * block_macs(enc_tokens, d, hid)
        parts_macs["head"] = d * c
        parts_params["fc_norm"] = 2 * d  # MAE-ST: its pooled `norm`, the same size
        parts_params["head"] = d * c + c if c else 0
    else:
        enc_tokens, dec_tokens = _pretrain_parts(cfg, grid, mask, parts_macs, parts_params)
    if maest:
        parts_params["tokens"] = _tables(grid, d)
    macs = sum(parts_macs.values())
    return {
        "model": cfg.name,
        "stage": stage,
        "num_frames": cfg.num_frames,
        "img_size": cfg.img_size,
        "tokens": n,
        "encoder_tokens": enc_tokens,
        "decoder_tokens": dec_tokens,
        "params": sum(parts_params.values()),
        "macs": macs,
        "flops": 2 * macs,
        "train_flops": 6 * macs,
        # Transformer blocks only (the numbers docs/reference.md §6 quotes); embed, projection and heads
        # are in parts_macs and sum with these to `macs`.
        "encoder_macs": parts_macs["encoder_blocks"],
        "decoder_macs": parts_macs.get("decoder_blocks", 0),
        "parts_macs": parts_macs,
        "parts_params": parts_params,
    }


def train_flops_per_clip(model_cfg: ModelConfig, mask_cfg: Optional[MaskConfig] = None, stage: str = "pretrain") -> int:
    """FLOPs (not MACs) of one training step on one clip: the numerator of MFU."""
    return count(model_cfg, stage, mask_cfg)["train_flops"]


def _human(x: float, unit: str = "") -> str:
    for scale, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if x >= scale:
            return f"{x / scale:.2f} {suffix}{unit}"
    return f"{x:.0f} {unit}".rstrip()
