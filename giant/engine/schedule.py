"""Learning-rate and weight-decay schedules as pure functions of the optimizer step.

Pure functions (no scheduler objects, no state) so a resumed run recomputes exactly the value the
uninterrupted run used at the same step, and so tests can check any step directly. The schedule
is defined per optimizer step (one step = `accum_steps` micro-batches), VideoMAE-style:
linear warmup from `warmup_lr` to the peak, then half-cosine down to `min_lr` at `total_steps`.
"""
from __future__ import annotations

import math

from giant.config import OptimConfig
from giant.errors import ConfigError


def peak_lr(cfg: OptimConfig, global_batch_clips: int) -> float:
    """Absolute lr: `cfg.lr` if set, else blr · global_batch / 256.

    The global batch counts every clip the optimizer sees in one step, repeated-augmentation
    clips included (videos/GPU × num_sample × GPUs × accum_steps), as in the official recipes.
    """
    if cfg.lr is not None:
        return float(cfg.lr)
    return cfg.blr * global_batch_clips / 256.0


def _cosine(start: float, end: float, progress: float) -> float:
    progress = min(max(progress, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def lr_at(step: int, cfg: OptimConfig) -> float:
    """lr for optimizer step `step` (0-based). Needs a resolved config (`cfg.lr` set)."""
    if cfg.lr is None:
        raise ConfigError("optim.lr is unresolved: call peak_lr() with the global batch first "
                          "(giant.engine.deepspeed.resolve_optim does this)")
    if step < cfg.warmup_steps:
        return cfg.warmup_lr + (cfg.lr - cfg.warmup_lr) * step / cfg.warmup_steps
    decay_steps = cfg.total_steps - cfg.warmup_steps
    if decay_steps <= 0:
        return cfg.lr
    return _cosine(cfg.lr, cfg.min_lr, (step - cfg.warmup_steps) / decay_steps)


def wd_at(step: int, cfg: OptimConfig) -> float:
    """Weight decay for step `step`: constant, or cosine to `weight_decay_end` over the run."""
    if cfg.weight_decay_end is None or cfg.total_steps <= 0:
        return cfg.weight_decay
    return _cosine(cfg.weight_decay, cfg.weight_decay_end, step / cfg.total_steps)
