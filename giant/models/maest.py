"""MAE-ST (Feichtenhofer et al. 2022, facebookresearch/mae_st) as `model.arch: maest`.

What differs from VideoMAE (reference/maest/README.md):
- learnable SEPARABLE positions: token t'·H'W' + s gets `pos_embed_spatial[s] +
  pos_embed_temporal[t']`; a cls token with its own `pos_embed_class`; separate tables (and a
  separate, zero-initialised cls token) in the decoder;
- attention with separate `q`, `k`, `v` Linears, each with a bias;
- the target is a temporally sub-sampled clip (`pred_t_dim` frames at linspace(0, T−1, n)
  truncated; u = n / T' frames per token) normalised per patch over ALL values together
  (mean, sqrt(unbiased var + 1e-6)), taken from the model input as it is (no un-normalising);
- the encoder sees the visible tokens plus cls; the decoder sees cls + visible + mask tokens.

Names: the classifier has the official fine-tuning keys at the top level, so official
fine-tuned checkpoints load as they are. The autoencoder keeps giant's `encoder.` / `decoder.`
split (the engine autocasts `encoder`, checkpoints the blocks of both); official pre-training
checkpoints go through giant/interop/maest.py.

The decoder input is [cls, visible tokens, mask tokens at the decoder-kept positions], like
VideoMAE V2's: with mask.decoder none that is every token (the official decoder, in another
order, which attention does not see); a running-cell decoder mask also works.

Shape legend: B batch, C channels, T frames, N tokens (T'·H'·W'), K visible, M decoder-kept,
D encoder width, E decoder width, P values per token (u·p·p·C).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath

from giant.config import ModelConfig
from giant.errors import ConfigError
from giant.models.mae import MAEOutput, masked_token_mse
from giant.models.vit import Mlp, PatchEmbed3D, gather_tokens, resolve_model_config, token_grid


def resolve_maest_config(cfg: ModelConfig) -> ModelConfig:
    """Sizes filled, arch checked, pred_t_dim resolved (None → one frame per token slice)."""
    cfg = resolve_model_config(cfg)
    slices = cfg.num_frames // cfg.tubelet_size
    pred = cfg.pred_t_dim or slices
    if pred % slices or not slices <= pred <= cfg.num_frames:
        raise ConfigError(f"model.pred_t_dim={cfg.pred_t_dim}: must be a multiple of num_frames/"
                          f"tubelet_size={slices} and at most num_frames={cfg.num_frames}")
    return dataclasses.replace(cfg, pred_t_dim=pred)


def target_frame_indices(num_frames: int, pred_t_dim: int) -> torch.Tensor:
    """Frames the target uses: float32 linspace truncated, as the official `.long()` does
    (8 of 16 → 0, 2, 4, 6, 8, 10, 12, 15: not evenly spaced)."""
    return torch.linspace(0, num_frames - 1, pred_t_dim, dtype=torch.float32).long()


def frames_per_token(cfg: ModelConfig) -> int:
    """u: target frames per token slice (the official t_pred_patch_size)."""
    return cfg.pred_t_dim // (cfg.num_frames // cfg.tubelet_size)


class QKVAttention(nn.Module):
    """Separate q / k / v Linears with biases (official MAE-ST layout); SDPA kernel."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BND: torch.Tensor) -> torch.Tensor:
        B, N, D = x_BND.shape
        q, k, v = (lin(x_BND).reshape(B, N, self.num_heads, D // self.num_heads).transpose(1, 2)
                   for lin in (self.q, self.k, self.v))
        out_BhNd = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out_BhNd.transpose(1, 2).reshape(B, N, D))


class STBlock(nn.Module):
    """Pre-norm block with QKVAttention; drop path is Identity when off."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = QKVAttention(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class _SeparablePositions(nn.Module):
    """cls token + separable position tables; subclasses add the blocks."""

    def _init_tables(self, grid: tuple[int, int, int], dim: int) -> None:
        self.grid = grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed_spatial = nn.Parameter(torch.zeros(1, grid[1] * grid[2], dim))
        self.pos_embed_temporal = nn.Parameter(torch.zeros(1, grid[0], dim))
        self.pos_embed_class = nn.Parameter(torch.zeros(1, 1, dim))

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    def pos_table(self, dtype: torch.dtype) -> torch.Tensor:
        """(1, N, D): spatial table tiled over time + temporal table repeated over space."""
        hw = self.grid[1] * self.grid[2]
        table = (self.pos_embed_spatial.repeat(1, self.grid[0], 1)
                 + torch.repeat_interleave(self.pos_embed_temporal, hw, dim=1))
        return table.to(dtype)

    def cls_row(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        return (self.cls_token + self.pos_embed_class).to(dtype).expand(batch, -1, -1)

    @torch.no_grad()
    def init_tables(self, cls_std: float) -> None:
        """Position tables trunc_normal(0.02); the cls token too, or zero (cls_std 0)."""
        for p in (self.pos_embed_spatial, self.pos_embed_temporal, self.pos_embed_class):
            nn.init.trunc_normal_(p, std=0.02)
        if cls_std:
            nn.init.trunc_normal_(self.cls_token, std=cls_std)
        else:
            nn.init.zeros_(self.cls_token)


class MAESTEncoder(_SeparablePositions):
    """Cube embed → (+ separable positions, gather kept) → [cls] + tokens → blocks → norm."""

    def __init__(self, cfg: ModelConfig, final_norm: bool = True):
        super().__init__()
        self.cfg = cfg
        self._init_tables(token_grid(cfg), cfg.embed_dim)
        self.patch_embed = PatchEmbed3D(cfg.in_chans, cfg.embed_dim, cfg.patch_size, cfg.tubelet_size)
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(STBlock(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, rates[i],
                                            cfg.norm_eps) for i in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def layer_id(self, name: str) -> int:
        """Layer-wise lr decay (official get_layer_id_for_vit): embed, tables, cls → 0; block k
        → k+1; norm and head → L+1."""
        if name.startswith(("patch_embed", "pos_embed", "cls_token")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.num_layers + 1

    def embed(self, x_BCTHW: torch.Tensor, keep_BK: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1 + K, D): the cls row, then the kept tokens (all when keep is None) + positions."""
        x_BND = self.patch_embed(x_BCTHW)
        if x_BND.shape[1] != self.num_tokens:
            raise ConfigError(f"input {tuple(x_BCTHW.shape[2:])} gives {x_BND.shape[1]} tokens but the "
                              f"model was built for {self.num_tokens} (model.num_frames / model.img_size)")
        x_BND = x_BND + self.pos_table(x_BND.dtype)
        if keep_BK is not None:
            x_BND = gather_tokens(x_BND, keep_BK)
        return torch.cat([self.cls_row(x_BND.shape[0], x_BND.dtype), x_BND], dim=1)

    def forward(self, x_BCTHW: torch.Tensor, keep_BK: torch.Tensor | None = None) -> torch.Tensor:
        """Kept tokens after the blocks and the final norm, cls row dropped: (B, K, D)."""
        x = self.embed(x_BCTHW, keep_BK)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 1:]


class MAESTDecoder(_SeparablePositions):
    def __init__(self, cfg: ModelConfig, out_dim: int):
        super().__init__()
        dim = cfg.decoder_embed_dim
        self._init_tables(token_grid(cfg), dim)
        self.blocks = nn.ModuleList(STBlock(dim, cfg.decoder_num_heads, cfg.decoder_mlp_ratio, 0.0,
                                            cfg.norm_eps) for _ in range(cfg.decoder_depth))
        self.norm = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.head = nn.Linear(dim, out_dim)

    def forward(self, x_BLE: torch.Tensor, num_out: int) -> torch.Tensor:
        """Prepend cls, run all tokens; predict only the last `num_out` (the mask-token slots)."""
        x = torch.cat([self.cls_row(x_BLE.shape[0], x_BLE.dtype), x_BLE], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x[:, -num_out:]))


def _init_linear_norm(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class MAESTAutoencoder(nn.Module):
    """forward(video, enc_keep, dec_keep) → MAEOutput, the interface of MaskedVideoAutoencoder."""

    def __init__(self, cfg: ModelConfig, init: bool = True):
        super().__init__()
        cfg = resolve_maest_config(cfg)
        self.cfg = cfg
        self.encoder = MAESTEncoder(cfg)
        self.encoder_to_decoder = nn.Linear(cfg.embed_dim, cfg.decoder_embed_dim)  # with bias
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_embed_dim))
        out_dim = frames_per_token(cfg) * cfg.patch_size ** 2 * cfg.in_chans
        self.decoder = MAESTDecoder(cfg, out_dim)
        self.register_buffer("target_frames", target_frame_indices(cfg.num_frames, cfg.pred_t_dim),
                             persistent=False)
        if init:  # init=False: the caller runs init_module itself (ZeRO-3 builds partitioned)
            self.init_weights()

    def init_weights(self) -> None:
        self.apply(self.init_module)

    @torch.no_grad()
    def init_module(self, m: nn.Module) -> None:
        """Official init: xavier Linear / zero bias, LN 1/0, the cube embedding xavier on its
        flattened weight (bias: PyTorch default), tables and cls trunc_normal(0.02), the decoder
        cls token zero, mask token normal(0.02). Touches only m's own parameters."""
        _init_linear_norm(m)
        if isinstance(m, nn.Conv3d):
            nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
        elif m is self.encoder:
            m.init_tables(cls_std=0.02)
        elif m is self.decoder:
            m.init_tables(cls_std=0.0)
        elif m is self:
            nn.init.normal_(self.mask_token, std=0.02)

    # --- self-description for the engine (see VideoViT)
    def no_weight_decay(self) -> set[str]:
        return set()  # the official pre-training decays every tensor of 2+ dims, tables included

    @property
    def num_layers(self) -> int:
        return len(self.encoder.blocks)

    def layer_id(self, name: str) -> int:
        if name.startswith("encoder."):
            return self.encoder.layer_id(name[len("encoder."):])
        return self.num_layers + 1

    def low_precision_modules(self) -> list[nn.Module]:
        return [self.encoder]

    def checkpoint_blocks(self) -> tuple[list[nn.Module], list[nn.Module]]:
        return list(self.encoder.blocks), list(self.decoder.blocks)

    def forward_encoder(self, video_BCTHW: torch.Tensor, enc_keep_BK: torch.Tensor) -> torch.Tensor:
        return self.encoder(video_BCTHW, enc_keep_BK)

    def forward_decoder(self, x_BKD: torch.Tensor, enc_keep_BK: torch.Tensor,
                        dec_keep_BM: torch.Tensor) -> torch.Tensor:
        x_BKE = self.encoder_to_decoder(x_BKD.to(self.encoder_to_decoder.weight.dtype))
        pos_BNE = self.decoder.pos_table(x_BKE.dtype).expand(x_BKE.shape[0], -1, -1)
        vis_BKE = x_BKE + gather_tokens(pos_BNE, enc_keep_BK)
        masked_BME = self.mask_token.to(x_BKE.dtype) + gather_tokens(pos_BNE, dec_keep_BM)
        return self.decoder(torch.cat([vis_BKE, masked_BME], dim=1), dec_keep_BM.shape[1])

    @torch.no_grad()
    def target(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        """(B, N, P) fp32: sampled frames, (u p q c) per token, normalised over all P values."""
        frames = video_BCTHW.float().index_select(2, self.target_frames)
        tok_BNP = rearrange(frames, "b c (t u) (h p) (w q) -> b (t h w) (u p q c)",
                            u=frames_per_token(self.cfg), p=self.cfg.patch_size, q=self.cfg.patch_size)
        mu = tok_BNP.mean(dim=-1, keepdim=True)
        var = tok_BNP.var(dim=-1, unbiased=True, keepdim=True)
        return (tok_BNP - mu) / (var + 1e-6).sqrt()

    def forward_loss(self, video_BCTHW: torch.Tensor, pred_BMP: torch.Tensor,
                     enc_keep_BK: torch.Tensor, dec_keep_BM: torch.Tensor) -> MAEOutput:
        """MSE per token, averaged over the tokens the encoder did not see (and the decoder kept)."""
        tgt_BMP = gather_tokens(self.target(video_BCTHW), dec_keep_BM)
        loss, mask_BM = masked_token_mse(pred_BMP, tgt_BMP, enc_keep_BK, dec_keep_BM, self.encoder.num_tokens)
        return MAEOutput(loss=loss, pred=pred_BMP, target=tgt_BMP, loss_mask=mask_BM,
                         enc_keep=enc_keep_BK, dec_keep=dec_keep_BM)

    def forward(self, video_BCTHW: torch.Tensor, enc_keep_BK: torch.Tensor,
                dec_keep_BM: torch.Tensor) -> MAEOutput:
        x_BKD = self.forward_encoder(video_BCTHW, enc_keep_BK)
        pred_BMP = self.forward_decoder(x_BKD, enc_keep_BK, dec_keep_BM)
        return self.forward_loss(video_BCTHW, pred_BMP, enc_keep_BK, dec_keep_BM)


class MAESTClassifier(MAESTEncoder):
    """Fine-tuning model with the official keys: [cls] + all tokens → blocks → mean over the
    patch tokens (cls excluded) → `norm` → dropout → `head`. The pre-trained encoder's `norm`
    is loaded into this pooled norm, as the official fine-tuning does."""

    def __init__(self, cfg: ModelConfig, init: bool = True):
        cfg = resolve_maest_config(cfg)
        if cfg.num_classes < 1:
            raise ConfigError("model.num_classes must be >= 1 for a classifier")
        super().__init__(cfg)
        self.head_dropout = nn.Dropout(cfg.head_drop_rate) if cfg.head_drop_rate > 0 else nn.Identity()
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)
        if init:
            self.init_weights()

    def init_weights(self) -> None:
        self.apply(self.init_module)

    @torch.no_grad()
    def init_module(self, m: nn.Module) -> None:
        """trunc_normal(0.02) Linear / zero bias; head weight and bias scaled by init_scale
        (0.001 → std 2e-5, the official re-init after loading); tables as in pre-training."""
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
            if m is self.head:
                m.weight.mul_(self.cfg.init_scale)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif m is self:
            self.init_tables(cls_std=0.02)

    # --- self-description for the engine
    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed_spatial", "pos_embed_temporal", "pos_embed_class"}

    def low_precision_modules(self) -> list[nn.Module]:
        return [self.patch_embed, *self.blocks]

    def checkpoint_blocks(self) -> tuple[list[nn.Module], list[nn.Module]]:
        return list(self.blocks), []

    def forward_features(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        x = self.embed(video_BCTHW)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x[:, 1:].mean(dim=1))

    def forward(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_dropout(self.forward_features(video_BCTHW)))
