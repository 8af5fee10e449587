"""Model family: pure torch modules with the official parameter names.

No distribution, precision or checkpointing code lives here (docs/architecture.md layering rules).
Which class a config builds: model.arch (videomae | maest) × model.sampler (none | adaptive) ×
kind (pretrain | classifier).
"""
from __future__ import annotations

import inspect

import torch.nn as nn

from giant.config import IMAGENET_MEAN, IMAGENET_STD, ModelConfig
from giant.errors import ConfigError
from giant.models.classifier import VideoClassifier
from giant.models.mae import MAEOutput, MaskedVideoAutoencoder
from giant.models.maest import MAESTAutoencoder, MAESTClassifier
from giant.models.sampler import AdaptiveMaskedAutoencoder
from giant.models.vit import MODEL_SIZES, VideoViT, resolve_model_config, token_grid

# `giant.models.resolve(cfg.model)`: the model config with its size's fields filled and checked.
# Models resolve their own configs (config.py imports nothing of giant but errors).
resolve = resolve_model_config

__all__ = ["MODEL_SIZES", "MAEOutput", "MaskedVideoAutoencoder", "AdaptiveMaskedAutoencoder",
           "MAESTAutoencoder", "MAESTClassifier", "VideoClassifier", "VideoViT", "build_model",
           "resolve", "resolve_model_config", "token_grid"]

_CLASSES = {
    ("videomae", "none", "pretrain"): MaskedVideoAutoencoder,
    ("videomae", "adaptive", "pretrain"): AdaptiveMaskedAutoencoder,
    ("maest", "none", "pretrain"): MAESTAutoencoder,
    # the sampler is a pre-training device: an AdaMAE encoder fine-tunes as a plain VideoMAE one
    ("videomae", "none", "classifier"): VideoClassifier,
    ("videomae", "adaptive", "classifier"): VideoClassifier,
    ("maest", "none", "classifier"): MAESTClassifier,
}


def model_class(cfg: ModelConfig, kind: str = "pretrain") -> type:
    if kind not in ("pretrain", "classifier"):
        raise ConfigError(f"model kind {kind!r}: use 'pretrain' or 'classifier'")
    if cfg.arch not in ("videomae", "maest"):
        raise ConfigError(f"model.arch={cfg.arch!r}: use videomae or maest")
    if cfg.sampler not in ("none", "adaptive"):
        raise ConfigError(f"model.sampler={cfg.sampler!r}: use none or adaptive")
    key = (cfg.arch, cfg.sampler, kind)
    if key not in _CLASSES:
        raise ConfigError(f"model.arch={cfg.arch} with model.sampler={cfg.sampler}: the AdaMAE "
                          "sampler exists for model.arch=videomae only")
    return _CLASSES[key]


def build_model(cfg: ModelConfig, kind: str = "pretrain", init: bool = True,
                mean=IMAGENET_MEAN, std=IMAGENET_STD) -> nn.Module:
    """`pretrain` → the autoencoder of the configured method, `classifier` → its fine-tuning
    classifier. init=False leaves the published init to the caller (`model.init_module` per
    module, children first). mean/std: data.mean / data.std, which an autoencoder that
    un-normalises its input to compute the target takes (MAE-ST normalises per patch instead)."""
    cls = model_class(cfg, kind)
    if "mean" in inspect.signature(cls.__init__).parameters:
        return cls(cfg, mean=mean, std=std, init=init)
    return cls(cfg, init=init)
