"""Video classifier: encoder on all tokens → mean pool → fc_norm → dropout → head (docs/reference.md §1).

Shape legend: B batch, N tokens, D width, C classes.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from giant.config import ModelConfig
from giant.errors import ConfigError
from giant.models.vit import VideoViT, resolve_model_config


class VideoClassifier(VideoViT):
    """Subclasses the encoder so parameters sit at the top level (`blocks.0...`, `fc_norm`,
    `head`) exactly as in the official fine-tuned checkpoints."""

    def __init__(self, cfg: ModelConfig, init: bool = True):
        cfg = resolve_model_config(cfg)
        if cfg.num_classes < 1:
            raise ConfigError("model.num_classes must be >= 1 for a classifier")
        super().__init__(cfg, final_norm=False)
        self.fc_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.head_dropout = nn.Dropout(cfg.head_drop_rate) if cfg.head_drop_rate > 0 else nn.Identity()
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)
        if init:  # init=False: the caller runs init_module itself (ZeRO-3 builds partitioned)
            self.init_weights()

    def init_weights(self) -> None:
        self.apply(self.init_module)

    @torch.no_grad()
    def init_module(self, m: nn.Module) -> None:
        """trunc_normal(0.02) Linear weights, zero biases, the head's weight then scaled by
        init_scale. The head bias starts at 0 as in the official model (its init zeroes every
        Linear bias before the scaling). Touches only m's own parameters (one gathered module
        at a time)."""
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
            if m is self.head:
                m.weight.mul_(self.cfg.init_scale)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_features(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        return self.fc_norm(super().forward(video_BCTHW).mean(dim=1))

    def forward(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_dropout(self.forward_features(video_BCTHW)))
