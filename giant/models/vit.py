"""Video ViT with 3-D cube embedding and joint space-time attention (VideoMAE / V2 layout).

Parameter names follow the official releases (`blocks.N.attn.q_bias`, `mlp.fc1`, ...) so their
state dicts load with `load_state_dict` directly.

Shape legend: B batch, C channels, T frames, H/W pixels, N tokens (T'·H'·W'), K kept tokens,
D width, h heads, d head dim.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from giant.config import ModelConfig, token_grid  # token_grid re-exported for model code
from giant.errors import ConfigError
from giant.models.pos_embed import position_table

# Official sizes (docs/reference.md §1-2). `tiny` exists for tests and the CPU demo.
MODEL_SIZES: dict[str, dict] = {
    "tiny": dict(patch_size=16, embed_dim=96, depth=2, num_heads=4, mlp_ratio=4.0,
                 decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=2,
                 decoder_mlp_ratio=4.0),
    "vit_s": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0,
                  decoder_embed_dim=192, decoder_depth=4, decoder_num_heads=3,
                  decoder_mlp_ratio=4.0),
    "vit_b": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
                  decoder_embed_dim=384, decoder_depth=4, decoder_num_heads=6,
                  decoder_mlp_ratio=4.0),
    "vit_l": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0,
                  decoder_embed_dim=512, decoder_depth=4, decoder_num_heads=8,
                  decoder_mlp_ratio=4.0),
    "vit_h": dict(patch_size=16, embed_dim=1280, depth=32, num_heads=16, mlp_ratio=4.0,
                  decoder_embed_dim=512, decoder_depth=4, decoder_num_heads=8,
                  decoder_mlp_ratio=4.0),
    # The official g decoder reuses mlp_ratio 48/11 (hidden 2234), not the paper's 2048.
    "vit_g": dict(patch_size=14, embed_dim=1408, depth=40, num_heads=16, mlp_ratio=48 / 11,
                  decoder_embed_dim=512, decoder_depth=4, decoder_num_heads=8,
                  decoder_mlp_ratio=48 / 11),
}


def resolve_model_config(cfg: ModelConfig) -> ModelConfig:
    """Copy of `cfg` with every None size field filled from MODEL_SIZES[cfg.name]."""
    if cfg.name not in MODEL_SIZES:
        raise ConfigError(f"model.name={cfg.name!r}: unknown size; choose one of {sorted(MODEL_SIZES)}")
    filled = {k: v for k, v in MODEL_SIZES[cfg.name].items() if getattr(cfg, k) is None}
    out = dataclasses.replace(cfg, **filled)
    p, tub = out.patch_size, out.tubelet_size
    if out.img_size % p or out.num_frames % tub:
        raise ConfigError(
            f"model.img_size={out.img_size} must be divisible by patch {p} and model.num_frames="
            f"{out.num_frames} by tubelet {tub}")
    for prefix in ("", "decoder_"):
        dim, heads = getattr(out, prefix + "embed_dim"), getattr(out, prefix + "num_heads")
        if dim % heads:
            raise ConfigError(f"model.{prefix}embed_dim={dim} is not divisible by {prefix}num_heads={heads}")
    return out


def patch_dim(cfg: ModelConfig) -> int:
    """Values per token in the reconstruction target: C · tubelet · p · p."""
    return cfg.in_chans * cfg.tubelet_size * cfg.patch_size ** 2


# Devices whose cube embedding runs as one matmul: recent cuDNN releases regressed on a BF16
# Conv3d with kernel = stride (slow fallbacks, missing BF16 backward). Elsewhere the Conv3d stays:
# the same maths, but other rounding, and the CPU results recorded so far come from it.
MATMUL_EMBED_DEVICES = ("cuda",)


def cube_matmul(x_BCTHW: torch.Tensor, weight_DCtpp: torch.Tensor, bias_D: Optional[torch.Tensor]) -> torch.Tensor:
    """A Conv3d with kernel = stride = (t, p, p) as reshape + one matmul on weight.view(D, -1):
    (B, C, T, H, W) → (B, N, D), tokens in the Conv3d's (T', H', W') order."""
    D, C, t, p, q = weight_DCtpp.shape
    B, _, T, H, W = x_BCTHW.shape
    cubes = x_BCTHW.reshape(B, C, T // t, t, H // p, p, W // q, q).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return F.linear(cubes.reshape(B, -1, C * t * p * q), weight_DCtpp.reshape(D, -1), bias_D)


class CubeProjection(nn.Conv3d):
    """The official `patch_embed.proj` Conv3d (same parameters, same state-dict keys, released
    weights load as they are) whose forward returns tokens (B, N, D): one matmul on the devices
    in MATMUL_EMBED_DEVICES, the Conv3d elsewhere. A module of its own, so ZeRO-3 gathers its
    weight around this forward."""

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        whole = all(n % k == 0 for n, k in zip(x_BCTHW.shape[2:], self.kernel_size))
        if whole and x_BCTHW.device.type in MATMUL_EMBED_DEVICES:  # else the Conv3d (drops a rest)
            return cube_matmul(x_BCTHW, self.weight, self.bias)
        return super().forward(x_BCTHW).flatten(2).transpose(1, 2)


class PatchEmbed3D(nn.Module):
    """Cube embedding: kernel = stride = (tubelet, p, p) → tokens (B, N, D)."""

    def __init__(self, in_chans: int, dim: int, patch: int, tubelet: int):
        super().__init__()
        self.proj = CubeProjection(in_chans, dim, kernel_size=(tubelet, patch, patch),
                                   stride=(tubelet, patch, patch))

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        return self.proj(x_BCTHW)  # B N D


class Attention(nn.Module):
    """Fused qkv without bias + learnable q/v biases (k bias fixed at zero); SDPA kernel."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BND: torch.Tensor) -> torch.Tensor:
        B, N, D = x_BND.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x_BND, self.qkv.weight, bias)
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        out_BhNd = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out_BhNd.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block; drop path is Identity when off."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float = 0.0,
                 eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VideoViT(nn.Module):
    """Encoder: cube embed → + fixed positions → (optional gather of kept tokens) → blocks → norm.

    `final_norm=False` gives the classifier layout (norm replaced by mean-pool + fc_norm there).
    """

    def __init__(self, cfg: ModelConfig, final_norm: bool = True):
        super().__init__()
        cfg = resolve_model_config(cfg)
        self.cfg = cfg
        self.grid = token_grid(cfg)
        self.patch_embed = PatchEmbed3D(cfg.in_chans, cfg.embed_dim, cfg.patch_size, cfg.tubelet_size)
        pos = position_table(self.grid, cfg.embed_dim, tuple(cfg.pos_grid) if cfg.pos_grid else None)
        self.register_buffer("pos_embed", pos, persistent=False)
        # Stochastic depth grows linearly with depth (plain floats: works on the meta device).
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, rates[i], cfg.norm_eps)
            for i in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps) if final_norm else nn.Identity()

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    # --- how the engine asks about this model (timm's habit): it never parses names itself
    def no_weight_decay(self) -> set[str]:
        """Named parameters that skip weight decay beyond the 1-D rule (none here: the
        position table is a fixed buffer)."""
        return set()

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def layer_id(self, name: str) -> int:
        """docs/reference.md §5 layer-wise lr decay: patch embed 0, block k → k+1, everything after → L+1."""
        return vit_layer_id(name, self.num_layers)

    def low_precision_modules(self) -> list[nn.Module]:
        """What the precision policy runs in FP16/BF16: the cube embedding and the blocks."""
        return [self.patch_embed, *self.blocks]

    def checkpoint_blocks(self) -> tuple[list[nn.Module], list[nn.Module]]:
        """(encoder blocks, decoder blocks) that activation checkpointing / compile may wrap."""
        return list(self.blocks), []

    def embed(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        """Cube embedding plus the fixed table: (B, N, D)."""
        x_BND = self.patch_embed(x_BCTHW)
        if x_BND.shape[1] != self.num_tokens:
            raise ConfigError(
                f"input {tuple(x_BCTHW.shape[2:])} gives {x_BND.shape[1]} tokens but the model was "
                f"built for {self.num_tokens} (model.num_frames / model.img_size)")
        return x_BND + self.pos_embed.to(dtype=x_BND.dtype)

    def forward(self, x_BCTHW: torch.Tensor, keep_BK: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Tokens after the final norm; only the `keep_BK` tokens when given (B, K, D)."""
        x = self.embed(x_BCTHW)
        if keep_BK is not None:
            x = gather_tokens(x, keep_BK)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


def vit_layer_id(name: str, num_layers: int, prefix: str = "") -> int:
    """Layer index of parameter `name` (official `get_num_layer_for_vit`); `prefix` is where
    the ViT sits inside a larger model (`encoder.`). Parameters outside it → L+1."""
    if prefix and not name.startswith(prefix):
        return num_layers + 1
    short = name[len(prefix):]
    if short.startswith(("patch_embed", "pos_embed", "cls_token", "mask_token")):
        return 0
    if short.startswith("blocks."):
        return int(short.split(".", 2)[1]) + 1
    return num_layers + 1


def gather_tokens(x_BND: torch.Tensor, idx_BK: torch.Tensor) -> torch.Tensor:
    """x[b, idx[b, k]] → (B, K, D)."""
    return torch.gather(x_BND, 1, idx_BK[..., None].expand(-1, -1, x_BND.shape[-1]))
