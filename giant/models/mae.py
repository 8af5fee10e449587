"""VideoMAE V2 masked autoencoder with dual masking (docs/reference.md §2).

Masks arrive as sorted index tensors, so the same model serves tube/random/frame/block encoder
masks and running-cell or V1-style decoder masks. Precision is not decided here: the engine
wraps `encoder` in autocast; everything from `encoder_to_decoder` on runs in the dtype of its
weights (FP32 under the policy).

Shape legend: B batch, C channels, T frames, H/W pixels, N tokens, K encoder-visible tokens,
M decoder-kept tokens, D encoder width, E decoder width, P values per token (C·t·p·p).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn as nn
from einops import rearrange

from giant.config import IMAGENET_MEAN, IMAGENET_STD, ModelConfig
from giant.errors import ConfigError
from giant.models.pos_embed import position_table
from giant.models.vit import (Block, VideoViT, gather_tokens, patch_dim, resolve_model_config,
                              vit_layer_id)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MAEOutput", "MaskedVideoAutoencoder", "patchify",
           "unpatchify"]


class MAEOutput(NamedTuple):
    """A NamedTuple, not a dataclass: ZeRO-3 finds the output tensors (to re-gather the root
    module's own parameters in backward) only inside tuples, lists and dicts."""

    loss: torch.Tensor  # scalar, fp32
    pred: torch.Tensor  # (B, M, P) decoder output at the decoder-kept positions
    target: torch.Tensor  # (B, M, P) normalised pixel target at the same positions
    loss_mask: torch.Tensor  # (B, M) True where the token counts in the loss
    # The masks actually used (AdaMAE: drawn by the model's sampler, not the loader's placeholder)
    enc_keep: Optional[torch.Tensor] = None  # (B, K)
    dec_keep: Optional[torch.Tensor] = None  # (B, M)
    recon_loss: Optional[torch.Tensor] = None  # AdaMAE: the reconstruction part of `loss`
    sampling_loss: Optional[torch.Tensor] = None  # AdaMAE: mean sampling loss, unweighted
    token_probs: Optional[torch.Tensor] = None  # AdaMAE: (B, N) the sampler's distribution


class MAEDecoder(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float, out_dim: int,
                 eps: float):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, 0.0, eps) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.head = nn.Linear(dim, out_dim)

    def forward(self, x_BLE: torch.Tensor, num_out: int) -> torch.Tensor:
        """Run all tokens; predict only the last `num_out` (the mask-token slots)."""
        for blk in self.blocks:
            x_BLE = blk(x_BLE)
        return self.head(self.norm(x_BLE[:, -num_out:]))


def patchify(video_BCTHW: torch.Tensor, patch: int, tubelet: int) -> torch.Tensor:
    """(B, C, T, H, W) → (B, N, t·p·p, C): pixels of each token, per channel."""
    return rearrange(video_BCTHW, "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c",
                     p0=tubelet, p1=patch, p2=patch)


def unpatchify(tokens_BNP: torch.Tensor, grid: tuple[int, int, int], patch: int,
               tubelet: int, chans: int = 3) -> torch.Tensor:
    """(B, N, (t·p·p·C)) → (B, C, T, H, W); inverse of patchify + flatten(channel fastest)."""
    t, h, w = grid
    return rearrange(tokens_BNP, "b (t h w) (p0 p1 p2 c) -> b c (t p0) (h p1) (w p2)",
                     t=t, h=h, w=w, p0=tubelet, p1=patch, p2=patch, c=chans)


def masked_token_mse(pred_BMP: torch.Tensor, tgt_BMP: torch.Tensor, enc_keep_BK: torch.Tensor,
                     dec_keep_BM: torch.Tensor, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, mask_BM): MSE per token, averaged over the decoder-kept tokens the encoder did not
    see (docs/reference.md §2). Shared by every autoencoder here (VideoMAE V1/V2, AdaMAE, MAE-ST)."""
    visible_BN = torch.zeros(pred_BMP.shape[0], num_tokens, dtype=torch.bool, device=pred_BMP.device)
    visible_BN.scatter_(1, enc_keep_BK, True)
    mask_BM = ~torch.gather(visible_BN, 1, dec_keep_BM)
    per_tok_BM = (pred_BMP.float() - tgt_BMP).pow(2).mean(dim=-1)
    w_BM = mask_BM.float()
    return (per_tok_BM * w_BM).sum() / w_BM.sum().clamp_min(1.0), mask_BM


class MaskedVideoAutoencoder(nn.Module):
    """mean/std: the per-channel statistics the input was normalised with (data.mean /
    data.std, passed by build_model); the target is computed on the un-normalised pixels."""
    encoder_class = VideoViT  # AdaMAE's subclass swaps in the encoder that holds its sampler

    def __init__(self, cfg: ModelConfig, mean=IMAGENET_MEAN, std=IMAGENET_STD, init: bool = True):
        super().__init__()
        cfg = resolve_model_config(cfg)
        if len(mean) != cfg.in_chans or len(std) != cfg.in_chans:
            raise ConfigError(f"data.mean={list(mean)} / data.std={list(std)}: need "
                              f"model.in_chans={cfg.in_chans} values each")
        self.cfg = cfg
        self.encoder = self.encoder_class(cfg, final_norm=True)
        dec_dim = cfg.decoder_embed_dim
        self.encoder_to_decoder = nn.Linear(cfg.embed_dim, dec_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        self.decoder = MAEDecoder(dec_dim, cfg.decoder_depth, cfg.decoder_num_heads,
                                  cfg.decoder_mlp_ratio, patch_dim(cfg), cfg.norm_eps)
        grid = self.encoder.grid
        src = tuple(cfg.pos_grid) if cfg.pos_grid else None
        self.register_buffer("decoder_pos_embed", position_table(grid, dec_dim, src), persistent=False)
        f32 = torch.float32  # the target is fp32 whatever the recipe's list holds (ints too)
        self.register_buffer("mean", torch.tensor(mean, dtype=f32).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=f32).view(1, -1, 1, 1, 1), persistent=False)
        if init:  # init=False: the caller runs init_module itself (ZeRO-3 builds partitioned)
            self.init_weights()

    def init_weights(self) -> None:
        self.apply(self.init_module)  # children first, the mask token last (as the official code)

    @torch.no_grad()
    def init_module(self, m: nn.Module) -> None:
        """Pre-training init (docs/reference.md §2): xavier Linear / zero bias, LayerNorm 1/0, mask token
        N(0, 0.02²) truncated at ±0.02 (the official trunc_normal_ wrapper passes a=-std, b=std;
        torch's own default bounds ±2 would not truncate at all).
        Touches only m's own parameters, so it can run one gathered module at a time."""
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif m is self:
            nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)

    # --- self-description for the engine (see VideoViT)
    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    @property
    def num_layers(self) -> int:
        return self.encoder.num_layers

    def layer_id(self, name: str) -> int:
        if name == "mask_token":
            return 0
        return vit_layer_id(name, self.num_layers, prefix="encoder.")

    def low_precision_modules(self) -> list[nn.Module]:
        """The whole encoder; `encoder_to_decoder` onwards stays FP32 (docs/reference.md §5)."""
        return [self.encoder]

    def checkpoint_blocks(self) -> tuple[list[nn.Module], list[nn.Module]]:
        return list(self.encoder.blocks), list(self.decoder.blocks)

    def forward_encoder(self, video_BCTHW: torch.Tensor, enc_keep_BK: torch.Tensor) -> torch.Tensor:
        return self.encoder(video_BCTHW, enc_keep_BK)

    def forward_decoder(self, x_BKD: torch.Tensor, enc_keep_BK: torch.Tensor,
                        dec_keep_BM: torch.Tensor) -> torch.Tensor:
        """Visible tokens (+pos) then a mask token (+pos) at EVERY decoder-kept position."""
        x_BKE = self.encoder_to_decoder(x_BKD.to(self.encoder_to_decoder.weight.dtype))
        B = x_BKE.shape[0]
        pos_BNE = self.decoder_pos_embed.to(x_BKE.dtype).expand(B, -1, -1)
        vis_BKE = x_BKE + gather_tokens(pos_BNE, enc_keep_BK)
        masked_BME = self.mask_token.to(x_BKE.dtype) + gather_tokens(pos_BNE, dec_keep_BM)
        return self.decoder(torch.cat([vis_BKE, masked_BME], dim=1), dec_keep_BM.shape[1])

    def pixels(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        """Normalised input → pixels in [0, 1] (fp32), undoing data.mean / data.std."""
        return video_BCTHW.float() * self.std + self.mean

    @torch.no_grad()
    def target(self, video_BCTHW: torch.Tensor, keep_BM: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-token, per-channel normalised pixels, (p0 p1 p2 c) order: (B, N, P) fp32, or only
        the `keep_BM` tokens (B, M, P). Tokens are taken before anything is computed on them (the
        decoder keeps half of them), with the same per-element arithmetic as on all tokens."""
        tok_BNQC = patchify(video_BCTHW.float(), self.cfg.patch_size, self.cfg.tubelet_size)
        if keep_BM is not None:
            tok_BNQC = torch.gather(tok_BNQC, 1, keep_BM[:, :, None, None].expand(-1, -1, *tok_BNQC.shape[2:]))
        tok_BNQC = tok_BNQC * self.std.view(-1) + self.mean.view(-1)  # pixels(), channel last
        mu = tok_BNQC.mean(dim=-2, keepdim=True)
        sd = tok_BNQC.var(dim=-2, unbiased=True, keepdim=True).sqrt()
        return ((tok_BNQC - mu) / (sd + 1e-6)).flatten(2)

    def forward_loss(self, video_BCTHW: torch.Tensor, pred_BMP: torch.Tensor,
                     enc_keep_BK: torch.Tensor, dec_keep_BM: torch.Tensor) -> MAEOutput:
        """MSE per token, averaged over tokens that are encoder-masked AND decoder-kept."""
        tgt_BMP = self.target(video_BCTHW, dec_keep_BM)
        loss, mask_BM = masked_token_mse(pred_BMP, tgt_BMP, enc_keep_BK, dec_keep_BM, self.encoder.num_tokens)
        return MAEOutput(loss=loss, pred=pred_BMP, target=tgt_BMP, loss_mask=mask_BM,
                         enc_keep=enc_keep_BK, dec_keep=dec_keep_BM)

    def forward(self, video_BCTHW: torch.Tensor, enc_keep_BK: torch.Tensor,
                dec_keep_BM: torch.Tensor) -> MAEOutput:
        x_BKD = self.forward_encoder(video_BCTHW, enc_keep_BK)
        pred_BMP = self.forward_decoder(x_BKD, enc_keep_BK, dec_keep_BM)
        return self.forward_loss(video_BCTHW, pred_BMP, enc_keep_BK, dec_keep_BM)
