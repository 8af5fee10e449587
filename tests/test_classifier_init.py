"""Classifier head initialisation as in the official VideoMAE V2 fine-tuning model."""
import torch

from giant.config import ModelConfig
from giant.models.classifier import VideoClassifier


def test_head_bias_zero_and_weight_scaled():
    # official: every Linear gets trunc_normal(0.02) weight and 0 bias, then head.weight and
    # head.bias are multiplied by init_scale, so the head bias stays exactly 0
    torch.manual_seed(0)
    cfg = ModelConfig(name="tiny", img_size=32, patch_size=8, num_frames=4, num_classes=50,
                      init_scale=0.001)
    model = VideoClassifier(cfg)
    assert torch.equal(model.head.bias, torch.zeros(50))
    std = model.head.weight.std().item()
    assert 0.5 * 0.02e-3 < std < 1.5 * 0.02e-3  # trunc_normal(0.02) × 0.001
    # fc_norm is a plain LayerNorm; other Linear biases are 0 as well
    assert torch.equal(model.fc_norm.weight, torch.ones_like(model.fc_norm.weight))
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in model.modules()
               if isinstance(m, torch.nn.Linear) and m.bias is not None)
