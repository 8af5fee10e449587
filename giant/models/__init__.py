"""Model family: pure torch modules with the official parameter names.

No distribution, precision or checkpointing code lives here (DESIGN.md layering rules).
"""
from __future__ import annotations

import torch.nn as nn

from giant.config import IMAGENET_MEAN, IMAGENET_STD, ModelConfig
from giant.errors import ConfigError
from giant.models.classifier import VideoClassifier
from giant.models.mae import MAEOutput, MaskedVideoAutoencoder
from giant.models.vit import MODEL_SIZES, VideoViT, resolve_model_config, token_grid

__all__ = ["MODEL_SIZES", "MAEOutput", "MaskedVideoAutoencoder", "VideoClassifier", "VideoViT",
           "build_model", "resolve_model_config", "token_grid"]


def build_model(cfg: ModelConfig, kind: str = "pretrain", init: bool = True,
                mean=IMAGENET_MEAN, std=IMAGENET_STD) -> nn.Module:
    """`pretrain` → MaskedVideoAutoencoder, `classifier` → VideoClassifier. init=False leaves
    the published init to the caller (`model.init_module` per module, children first).
    mean/std: data.mean / data.std, which the autoencoder undoes to compute its target."""
    if kind == "pretrain":
        return MaskedVideoAutoencoder(cfg, mean, std, init=init)
    if kind == "classifier":
        return VideoClassifier(cfg, init=init)
    raise ConfigError(f"model kind {kind!r}: use 'pretrain' or 'classifier'")
