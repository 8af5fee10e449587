"""AdaMAE adaptive token sampling (docs/reference.md §3; wgcban/adamae) as a VideoMAE encoder variant.

The sampler lives INSIDE the encoder (`encoder.pos_embed_probs`, `encoder.get_token_probs.*`,
the official names, so official AdaMAE state dicts load unchanged). Two reasons: it runs in the
encoder's precision policy without the engine knowing about it (the engine autocasts
`model.encoder`), and it reads the raw cube embedding, which the encoder computes anyway.

The loader cannot draw the visible set (it depends on the model), so for `mask.encoder:
adaptive` it sends a placeholder row per clip (giant/masking.py): K entries equal to −1−seed.
K says how many tokens to draw; the seed makes the draw a pure function of (seed, epoch, index),
so a resumed run draws the same tokens. A row of real indices (≥ 0) is used as given (tests
inject the official draw that way). The decoder placeholder (mask.decoder none) is K' = N − K
entries of −1: the decoder then reconstructs every token the sampler did not draw.

Shape legend: B batch, N tokens, K visible, M decoder-kept, D encoder width, P values per token.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from giant.config import ModelConfig
from giant.errors import ConfigError
from giant.models.mae import MAEOutput, MaskedVideoAutoencoder
from giant.models.vit import Mlp, VideoViT, gather_tokens

# Hard-coded in the official sampler, whatever the model config (reference/adamae/README.md).
SAMPLER_HEADS = 8
SAMPLER_EPS = 1e-5  # nn.LayerNorm default; the encoder uses 1e-6
SAMPLER_DROP = 0.1  # after the attention projection and after fc2


class SamplerAttention(nn.Module):
    """Fused qkv WITHOUT any bias (official qkv_bias=False), scale head_dim^-0.5; SDPA."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BND: torch.Tensor) -> torch.Tensor:
        B, N, D = x_BND.shape
        qkv = self.qkv(x_BND).reshape(B, N, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class SamplerBlock(nn.Module):
    """The official sampler block: pre-norm, 8 heads, MLP ratio 4, LN eps 1e-5, dropout 0.1."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=SAMPLER_EPS)
        self.attn = SamplerAttention(dim, SAMPLER_HEADS)
        self.norm2 = nn.LayerNorm(dim, eps=SAMPLER_EPS)
        self.mlp = Mlp(dim, dim * 4)
        self.drop = nn.Dropout(SAMPLER_DROP)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


def placeholder_seeds(keep_BK: torch.Tensor) -> list[Optional[int]]:
    """Per row: the draw seed of a placeholder row (entries −1−seed), None for real indices.
    One small device→host copy per step."""
    return [(-1 - h) if h < 0 else None for h in keep_BK[:, 0].tolist()]


def draw_visible(probs_BN: torch.Tensor, num_visible: int,
                 seeds: Optional[list[Optional[int]]] = None) -> torch.Tensor:
    """K tokens per row WITHOUT replacement from categorical `probs`, ascending (B, K).

    Exponential keys: top-K of p / q with q ~ Exp(1) is a draw without replacement (what
    torch.multinomial does on CPU). q comes from one CPU generator per seeded row, so the draw
    is the same on any device; seeds=None draws q from the global generator instead.
    """
    p = probs_BN.detach().float()
    if seeds is None:
        q = torch.empty_like(p).exponential_()
    else:
        q = torch.ones(p.shape, dtype=torch.float32)
        for b, seed in enumerate(seeds):
            if seed is not None:
                q[b].exponential_(generator=torch.Generator().manual_seed(seed))
        q = q.to(p.device, non_blocking=True)
    return torch.sort(torch.topk(p / q, num_visible, dim=-1).indices, dim=-1).values


def complement_keep(keep_BK: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The N − K indices not in each row of keep_BK, ascending; no host sync."""
    visible_BN = torch.zeros(keep_BK.shape[0], num_tokens, dtype=torch.int8, device=keep_BK.device)
    visible_BN.scatter_(1, keep_BK, 1)
    order_BN = torch.argsort(visible_BN, dim=1, stable=True)  # masked (0) first, ascending
    return order_BN[:, :num_tokens - keep_BK.shape[1]]


def sampling_loss(probs_BN: torch.Tensor, err_BM: torch.Tensor, dec_keep_BM: torch.Tensor,
                  loss_mask_BM: torch.Tensor) -> torch.Tensor:
    """Per sample (B,): −mean over the loss tokens of log p(token) · detached error.

    log p as torch's Categorical(probs=p).log_prob: renormalised, clamped to [eps, 1−eps].
    With mask.decoder none the loss tokens are all encoder-masked tokens (the official loss);
    with a running-cell decoder mask, the masked tokens the decoder reconstructs.
    """
    p_BN = probs_BN / probs_BN.sum(dim=-1, keepdim=True)
    eps = torch.finfo(p_BN.dtype).eps
    logp_BM = torch.gather(p_BN.clamp(eps, 1 - eps).log(), 1, dec_keep_BM)
    w_BM = loss_mask_BM.to(logp_BM.dtype)
    return -(logp_BM * err_BM.detach() * w_BM).sum(dim=-1) / w_BM.sum(dim=-1).clamp_min(1.0)


class AdaptiveVideoViT(VideoViT):
    """VideoViT whose forward also runs the sampler: → (tokens (B,K,D), keep (B,K), probs (B,N))."""

    def __init__(self, cfg: ModelConfig, final_norm: bool = True):
        super().__init__(cfg, final_norm)
        dim = self.cfg.embed_dim
        if dim % SAMPLER_HEADS:
            raise ConfigError(f"mask.encoder=adaptive: the AdaMAE sampler has {SAMPLER_HEADS} heads, "
                              f"so model.embed_dim={dim} must be divisible by {SAMPLER_HEADS}")
        self.pos_embed_probs = nn.Parameter(torch.zeros(1, self.num_tokens, dim))  # zero init
        self.get_token_probs = nn.Sequential(SamplerBlock(dim), nn.Linear(dim, 1), nn.Flatten(1))

    def token_probs(self, x_BND: torch.Tensor) -> torch.Tensor:
        """Softmax over all N tokens of the raw cube embedding + the sampler's own table (FP32).
        The input is not detached: the sampling loss reaches patch_embed, as officially."""
        logits_BN = self.get_token_probs(x_BND + self.pos_embed_probs.to(x_BND.dtype))
        return torch.nan_to_num(logits_BN.float()).softmax(dim=-1)

    def forward(self, x_BCTHW: torch.Tensor, keep_BK: Optional[torch.Tensor] = None,
                seeds: Optional[list] = None, num_visible: Optional[int] = None):
        x_BND = self.patch_embed(x_BCTHW)
        if x_BND.shape[1] != self.num_tokens:
            raise ConfigError(f"input {tuple(x_BCTHW.shape[2:])} gives {x_BND.shape[1]} tokens but the "
                              f"model was built for {self.num_tokens} (model.num_frames / model.img_size)")
        probs_BN = self.token_probs(x_BND)
        if keep_BK is None:
            if num_visible is None:
                raise ValueError("adaptive sampling needs visible indices, the loader's placeholder "
                                 "or num_visible")
            keep_BK = draw_visible(probs_BN, num_visible)
        else:
            seeds = placeholder_seeds(keep_BK) if seeds is None else seeds
            if any(s is not None for s in seeds):
                drawn = draw_visible(probs_BN, keep_BK.shape[1], seeds)
                rows = torch.tensor([s is not None for s in seeds], device=keep_BK.device)
                keep_BK = torch.where(rows[:, None], drawn, keep_BK)
        x = gather_tokens(x_BND + self.pos_embed.to(dtype=x_BND.dtype), keep_BK)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), keep_BK, probs_BN


class AdaptiveMaskedAutoencoder(MaskedVideoAutoencoder):
    """AdaMAE: the VideoMAE autoencoder whose encoder draws its own visible tokens.

    loss = reconstruction + sampler_loss_weight · mean_b sampling_loss_b (no baseline, no
    temperature). Outputs carry the drawn masks (`enc_keep`, `dec_keep`) and the three losses.
    """

    encoder_class = AdaptiveVideoViT

    def forward(self, video_BCTHW: torch.Tensor, enc_keep_BK: Optional[torch.Tensor] = None,
                dec_keep_BM: Optional[torch.Tensor] = None, num_visible: Optional[int] = None) -> MAEOutput:
        """enc_keep: placeholders (drawn here), real indices (used as given) or None (draw
        `num_visible` from the global generator). dec_keep: indices, or −1 placeholders / None
        for "every token the encoder did not see"."""
        heads = [] if enc_keep_BK is None else [enc_keep_BK[:, :1]]
        heads += [] if dec_keep_BM is None else [dec_keep_BM[:, :1]]
        rows = torch.cat(heads, 1).tolist() if heads else []  # the step's one host sync
        seeds = None if enc_keep_BK is None else [(-1 - r[0]) if r[0] < 0 else None for r in rows]
        x_BKD, keep_BK, probs_BN = self.encoder(video_BCTHW, enc_keep_BK, seeds, num_visible)
        if dec_keep_BM is None or rows[0][-1] < 0:
            dec_keep_BM = complement_keep(keep_BK, self.encoder.num_tokens)
        pred_BMP = self.forward_decoder(x_BKD, keep_BK, dec_keep_BM)
        out = self.forward_loss(video_BCTHW, pred_BMP, keep_BK, dec_keep_BM)
        err_BM = (out.pred.float() - out.target).pow(2).mean(dim=-1)
        ls = sampling_loss(probs_BN, err_BM, dec_keep_BM, out.loss_mask).mean()
        return out._replace(loss=out.loss + self.cfg.sampler_loss_weight * ls, recon_loss=out.loss,
                            sampling_loss=ls, token_probs=probs_BN)
