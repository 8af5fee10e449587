"""Learning-rate and weight-decay schedules as pure functions of the optimizer step.

Pure functions (no scheduler objects, no state) so a resumed run recomputes exactly the value the
uninterrupted run used at the same step, and so tests can check any step directly. The schedule
is defined per optimizer step (one step = `accum_steps` micro-batches) and reproduces the official
VideoMAE V2 curve (`utils.cosine_scheduler` there, indexed by iteration):
  * warmup: `np.linspace(warmup_lr, lr, warmup_steps)`, i.e. it starts at `warmup_lr` (0, as the
    official scripts, which scale their `--warmup_lr` but never pass it on) and its LAST step
    already reaches the peak;
  * then a half cosine from the peak towards `min_lr` over the remaining steps: step
    `warmup_steps + i` of `n = total_steps − warmup_steps` gets
    min_lr + ½(lr − min_lr)(1 + cos(π·i/n)), so the last step sits just above `min_lr`.
Peak and end are both scaled by the global batch (`blr`, `min_blr`), as the official script
scales `--lr` and `--min_lr`; `lr` / `min_lr` set absolute values instead.
"""
from __future__ import annotations

import dataclasses
import math

from giant.config import OptimConfig
from giant.errors import ConfigError


def _scaled(absolute, base: float, global_batch_clips: int) -> float:
    return float(absolute) if absolute is not None else base * global_batch_clips / 256.0


def peak_lr(cfg: OptimConfig, global_batch_clips: int) -> float:
    """Absolute peak lr: `cfg.lr` if set, else blr · global_batch / 256.

    The global batch counts every clip the optimizer sees in one step, repeated-augmentation
    clips included (videos/GPU × num_sample × GPUs × accum_steps), as in the official recipes.
    """
    return _scaled(cfg.lr, cfg.blr, global_batch_clips)


def end_lr(cfg: OptimConfig, global_batch_clips: int) -> float:
    """Absolute lr the cosine decays to: `cfg.min_lr` if set, else min_blr · global_batch / 256."""
    return _scaled(cfg.min_lr, cfg.min_blr, global_batch_clips)


def resolve_lrs(cfg: OptimConfig, global_batch_clips: int) -> OptimConfig:
    """Copy with the absolute `lr` and `min_lr` filled in for this global batch."""
    return dataclasses.replace(cfg, lr=peak_lr(cfg, global_batch_clips),
                               min_lr=end_lr(cfg, global_batch_clips))


def _cosine(start: float, end: float, progress: float) -> float:
    progress = min(max(progress, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def lr_at(step: int, cfg: OptimConfig) -> float:
    """lr for optimizer step `step` (0-based). Needs a resolved config (`lr`, `min_lr` set)."""
    if cfg.lr is None or cfg.min_lr is None:
        raise ConfigError("optim.lr / optim.min_lr are unresolved: call resolve_lrs() with the "
                          "global batch first (giant.engine.deepspeed.resolve_optim does this)")
    warmup = cfg.warmup_steps
    if step < warmup:
        # linspace semantics: warmup − 1 intervals, so step warmup − 1 is at the peak
        frac = step / (warmup - 1) if warmup > 1 else 0.0
        return cfg.warmup_lr + (cfg.lr - cfg.warmup_lr) * frac
    decay_steps = cfg.total_steps - warmup
    if decay_steps <= 0:
        return cfg.lr
    return _cosine(cfg.lr, cfg.min_lr, (step - warmup) / decay_steps)


def wd_at(step: int, cfg: OptimConfig) -> float:
    """Weight decay for step `step`: constant, or cosine to `weight_decay_end` over the run
    (official: the same cosine_scheduler without warmup)."""
    if cfg.weight_decay_end is None or cfg.total_steps <= 0:
        return cfg.weight_decay
    return _cosine(cfg.weight_decay, cfg.weight_decay_end, step / cfg.total_steps)
