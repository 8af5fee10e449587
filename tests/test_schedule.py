"""lr / wd schedules against the official VideoMAE V2 curve (utils.cosine_scheduler, indexed per
iteration, with run_mae_pretraining.py scaling --lr and --min_lr by the videos per step
(batch_size × world) / 256 and passing no start value to the warmup, so it rises from 0)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from giant.config import OptimConfig, load_config
from giant.engine.ds_config import load_ds_json, merge_ds_config, resolve_optim
from giant.engine.schedule import end_lr, lr_at, peak_lr, resolve_lrs, videos_per_step, wd_at
from giant.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def official_curve(base: float, final: float, total: int, warmup: int) -> np.ndarray:
    """The official per-iteration values, written from its definition: np.linspace(0, base,
    warmup) then final + ½(base − final)(1 + cos(π·i/n)) for i < n = total − warmup."""
    i = np.arange(total - warmup)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * i / len(i)))
    return np.concatenate([np.linspace(0.0, base, warmup), cosine])


def _optim(**kw) -> OptimConfig:
    base = dict(total_steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-5)
    return dataclasses.replace(OptimConfig(), **{**base, **kw})


def test_vitg_recipe_reproduces_the_official_curve():
    cfg = load_config(REPO / "launch/recipes/pretrain_vitg_hybrid.yaml")
    ds = merge_ds_config(load_ds_json("ds_configs/zero2.json"), cfg, 64, "zero2")[0]
    assert ds["train_batch_size"] == 8192  # clips: 2048 videos × --num_sample 4
    optim = resolve_optim(cfg.optim, 64)
    # official vit_g_hybrid_pt.sh: --lr 6e-4, default --min_lr 1e-5, 32 videos × 64 GPUs = 2048
    assert optim.lr == pytest.approx(6e-4 * 2048 / 256) == pytest.approx(4.8e-3)
    assert optim.min_lr == pytest.approx(1e-5 * 2048 / 256) == pytest.approx(8e-5)
    warmup, total = optim.warmup_steps, optim.total_steps
    assert (warmup, total) == (30 * 659, 300 * 659)  # --warmup_epochs 30 of --epochs 300
    mid = warmup + (total - warmup) // 2
    # worked out by hand from the definition, not by the formula under test
    expected = {0: 0.0,  # rises from 0, not from --warmup_lr
                1: 4.8e-3 / 19769,  # linspace over 19770 points: 19769 equal rises
                warmup - 1: 4.8e-3,  # linspace: the last warmup step is at the peak
                warmup: 4.8e-3,
                mid: 2.44e-3,  # halfway down the cosine: (4.8e-3 + 8e-5) / 2
                # n = 177930 decay steps, the last one cos(π(n−1)/n) = −1 + (π/n)²/2 − …:
                # 8e-5 + ½·4.72e-3·(π/n)²/2 = 8e-5 + 3.68e-13, just above min_lr
                total - 1: 8.0000000368e-5}
    for step, value in expected.items():
        assert lr_at(step, optim) == pytest.approx(value, rel=1e-10, abs=1e-18), step


def test_every_step_of_a_short_run_matches_the_official_curve():
    for warmup in (0, 1, 2, 10):
        cfg = _optim(warmup_steps=warmup, warmup_lr=0.0)
        ours = [lr_at(s, cfg) for s in range(cfg.total_steps)]
        np.testing.assert_allclose(ours, official_curve(1e-3, 1e-5, 100, warmup), rtol=1e-12, atol=0)
    # after the last step the lr stays at the end value instead of rising again
    assert lr_at(100, cfg) == pytest.approx(1e-5) and lr_at(10_000, cfg) == pytest.approx(1e-5)


def test_absolute_overrides_and_warmup_start():
    scaled = OptimConfig(blr=1.5e-4, min_blr=2.5e-6)
    assert (peak_lr(scaled, 512), end_lr(scaled, 512)) == pytest.approx((3e-4, 5e-6))
    absolute = dataclasses.replace(scaled, lr=1e-3, min_lr=1e-5)
    resolved = resolve_lrs(absolute, 8192)  # absolute values ignore the batch
    assert (resolved.lr, resolved.min_lr) == (1e-3, 1e-5)
    cfg = load_config(REPO / "launch/recipes/pretrain_vitg_hybrid.yaml",
                      ["optim.min_lr=1e-6", "optim.warmup_lr=1e-6"])
    optim = resolve_lrs(cfg.optim, 2048)
    assert optim.lr == pytest.approx(4.8e-3) and optim.min_lr == 1e-6
    assert lr_at(0, optim) == 1e-6 and lr_at(optim.warmup_steps - 1, optim) == pytest.approx(4.8e-3)
    with pytest.raises(ConfigError, match="optim.min_lr=-1.0: learning rates must be >= 0"):
        load_config(None, ["optim.min_lr=-1"])
    with pytest.raises(ConfigError, match="optim.lr / optim.min_lr are unresolved"):
        lr_at(0, _optim(min_lr=None))


def test_lr_scales_with_videos_per_step():
    """run_class_finetuning.py: total_batch_size = batch_size × update_freq × world; lr, min_lr ×=
    total_batch_size / 256. The repeated clips (--num_sample) are not in it."""
    cfg = OptimConfig(batch_size=3, accum_steps=2, blr=1e-3, min_blr=1e-6)
    assert videos_per_step(cfg, 16) == 96  # 3 × 2 × 16
    assert (peak_lr(cfg, 96), end_lr(cfg, 96)) == pytest.approx((3.75e-4, 3.75e-7), rel=1e-12)
    assert peak_lr(cfg, 192) == pytest.approx(2 * peak_lr(cfg, 96))


def test_wd_schedule():
    assert wd_at(50, _optim(weight_decay=0.05)) == 0.05  # constant by default
    cfg = _optim(weight_decay=0.04, weight_decay_end=0.4)
    # official: the same cosine_scheduler, no warmup, over all iterations
    curve = official_curve(0.04, 0.4, 100, 0)
    np.testing.assert_allclose([wd_at(s, cfg) for s in range(100)], curve, rtol=1e-12)
    assert wd_at(50, cfg) == pytest.approx(0.22)
