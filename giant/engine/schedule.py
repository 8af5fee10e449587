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
Peak and end are both scaled by the VIDEOS one step consumes (`blr`, `min_blr` × videos / 256),
as the official scripts scale `--lr` and `--min_lr` by `batch_size × world / 256` (VideoMAE V2
run_mae_pretraining.py and run_class_finetuning.py, AdaMAE, MAE-ST pre-training): the clips that
repeated augmentation (`data.num_sample`) makes from each video are not counted, so changing it
leaves the lr alone. (MAE-ST's main_finetune.py alone counts its repeats too; its recipe states
blr × repeats instead.) `lr` / `min_lr` set absolute values instead.
"""
from __future__ import annotations

import dataclasses
import math

from giant.config import OptimConfig
from giant.errors import ConfigError


def videos_per_step(cfg: OptimConfig, world_size: int) -> int:
    """Videos one optimizer step consumes: videos/GPU × accum_steps × GPUs (the official
    `batch_size × update_freq × world`). Each yields data.num_sample clips, which the lr rule
    does not count."""
    return cfg.batch_size * cfg.accum_steps * world_size


def _scaled(absolute, base: float, global_batch_videos: int) -> float:
    return float(absolute) if absolute is not None else base * global_batch_videos / 256.0


def peak_lr(cfg: OptimConfig, global_batch_videos: int) -> float:
    """Absolute peak lr: `cfg.lr` if set, else blr · videos per step / 256 (`videos_per_step`)."""
    return _scaled(cfg.lr, cfg.blr, global_batch_videos)


def end_lr(cfg: OptimConfig, global_batch_videos: int) -> float:
    """Absolute lr the cosine decays to: `cfg.min_lr` if set, else min_blr · videos per step / 256."""
    return _scaled(cfg.min_lr, cfg.min_blr, global_batch_videos)


def resolve_lrs(cfg: OptimConfig, global_batch_videos: int) -> OptimConfig:
    """Copy with the absolute `lr` and `min_lr` filled in for this many videos per step."""
    return dataclasses.replace(cfg, lr=peak_lr(cfg, global_batch_videos),
                               min_lr=end_lr(cfg, global_batch_videos))


def _cosine(start: float, end: float, progress: float) -> float:
    progress = min(max(progress, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def lr_at(step: int, cfg: OptimConfig) -> float:
    """lr for optimizer step `step` (0-based). Needs a resolved config (`lr`, `min_lr` set)."""
    if cfg.lr is None or cfg.min_lr is None:
        raise ConfigError("optim.lr / optim.min_lr are unresolved: call resolve_lrs() with the "
                          "videos per step first (giant.engine.ds_config.resolve_optim does this)")
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
