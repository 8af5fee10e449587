"""Supervised fine-tuning (K710 post-pre-training and target fine-tuning) on the shared driver.

`deepspeed launch/finetune.py --ds ds_configs/zero2.json --recipe R.yaml [k=v ...]` (also
torchrun / srun / `giant finetune`). Starts from a previous stage's artifact
(`checkpoint.init_from`): the encoder loads into a VideoClassifier, a K710 head can be sliced to
K400/600/700 (`finetune.head_rowmap`). Recipe features are timm's Mixup/CutMix with soft-target
cross-entropy, label smoothing, layer-wise lr decay, drop path, head dropout; the data side
(RandAugment, random resized crop, flip, cube erasing, repeated augmentation, dense or TSN
sampling) is LabeledClips. Validation (single centre view, top-1/top-5, loss) runs every
`stage.eval_every` steps and at the end; the best top-1 is kept across resumes.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from giant.artifact import artifact_model
from giant.config import RunConfig
from giant.engine.best import BestMetric  # val/best_top1: best validation top-1, kept across resumes
from giant.engine.loop import EpochBatches
from giant.errors import ConfigError
from giant.stages.driver import GlobalFailures, RunContext, Stage
from giant.stages.sharding import PaddedShardSampler, all_reduce_sum
from giant.stages.weights import load_classifier_init, pos_grid_for

log = logging.getLogger(__name__)


def build_mixup(cfg: RunConfig, num_classes: int, clips_per_rank: int) -> Optional[Any]:
    """timm's Mixup (batch mode), or None when mixup and cutmix are both off."""
    ft = cfg.finetune
    if ft.mixup <= 0 and ft.cutmix <= 0 or ft.mixup_prob <= 0:
        return None
    if clips_per_rank % 2:
        raise ConfigError(f"finetune.mixup/cutmix mix each batch with its reverse: optim.batch_size × "
                          f"data.num_sample = {clips_per_rank} clips per rank must be even")
    from timm.data import Mixup

    return Mixup(mixup_alpha=ft.mixup, cutmix_alpha=ft.cutmix, prob=ft.mixup_prob,
                 switch_prob=ft.mixup_switch_prob, mode="batch",
                 label_smoothing=ft.label_smoothing, num_classes=num_classes)


def mix_video(mixup: Any, x_BCTHW: torch.Tensor, y_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's Mixup on video: C and T are folded together first, because its CutMix pastes
    `x[:, :, y0:y1, x0:x1]`, which on a 5-D tensor would cut T and H instead of H and W. The
    box is then the same in every frame (as the official code intends), soft targets sum to 1.
    Mixes in place, like timm (the input is this step's own normalised copy)."""
    B, C, T, H, W = x_BCTHW.shape
    x, y = mixup(x_BCTHW.reshape(B, C * T, H, W), y_B)
    return x.reshape(B, C, T, H, W), y


def supervised_loss(cfg: RunConfig, mixed: bool) -> Callable:
    """Soft-target CE after mixing (smoothing is inside the soft targets), else smoothed CE."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixed:
        return SoftTargetCrossEntropy()
    if cfg.finetune.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(cfg.finetune.label_smoothing)
    return torch.nn.CrossEntropyLoss()


class FinetuneStage(Stage):
    kind = "finetune"
    model_kind = "classifier"

    def model_config(self, cfg: RunConfig) -> Any:
        from giant.models import resolve as resolve_model
        model_cfg = resolve_model(cfg.model)
        if model_cfg.num_classes < 1:
            raise ConfigError("model.num_classes must be set (>= 1) for a supervised stage")
        art = artifact_model(cfg.checkpoint.init_from) if cfg.checkpoint.init_from else None
        grid = pos_grid_for(model_cfg, art)
        if grid != model_cfg.pos_grid:
            log.info("position table resampled from the init artifact's grid %s", grid)
            model_cfg = dataclasses.replace(model_cfg, pos_grid=grid)
        return model_cfg

    def init_weights(self, ctx: RunContext, model: torch.nn.Module) -> None:
        if self.cfg.checkpoint.init_from:
            ctx.extra["init_report"] = load_classifier_init(
                model, self.cfg.checkpoint.init_from, self.cfg.finetune.head_rowmap or None)

    def data(self, ctx: RunContext) -> tuple[EpochBatches, Any]:
        from giant.data import (FailureTracker, LabeledClips, ResumableDistributedSampler,
                                collate_labeled, make_loader, set_loader_epoch)

        cfg = self.cfg  # the driver's resolved config (model sizes filled)
        if not cfg.data.manifest:
            raise ConfigError("data.manifest is empty: point it at a labelled manifest (path,label)")
        dataset = LabeledClips.from_config(cfg, "train")
        sampler = ResumableDistributedSampler(len(dataset), ctx.rank, ctx.world, seed=cfg.stage.seed,
                                              shuffle=True, drop_last=len(dataset) >= ctx.world)
        from giant.data.loader import clip_item_bytes

        m = cfg.model
        item = clip_item_bytes(cfg.data.num_sample, m.in_chans, m.num_frames, m.img_size, labels=True)
        loader = make_loader(dataset, sampler, cfg.optim.batch_size, cfg.data.num_workers,
                             collate_labeled, pin_memory=torch.cuda.is_available(),
                             timeout=cfg.data.loader_timeout_s, prefetch_factor=cfg.data.prefetch_factor,
                             persistent=cfg.data.persistent_workers, item_bytes=item)
        self.best = BestMetric()
        return (EpochBatches(loader, on_epoch=set_loader_epoch, full_batch=cfg.optim.batch_size),
                FailureTracker.from_config(cfg))

    def states(self, ctx: RunContext) -> dict:
        return {"best_val": self.best}

    def inputs(self, ctx: RunContext) -> tuple[Callable, Callable]:
        """(prepare(batch) -> (clip, target), criterion): device copy, normalisation and Mixup/
        CutMix for every supervised stage (fine-tune, distil), so they see identical clips."""
        from giant.data import normalize_on_device

        cfg, device = self.cfg, ctx.device
        mean = torch.tensor(cfg.data.mean, dtype=torch.float32, device=device)
        std = torch.tensor(cfg.data.std, dtype=torch.float32, device=device)
        mixup = build_mixup(cfg, ctx.model_cfg.num_classes, cfg.optim.batch_size * cfg.data.num_sample)

        def prepare(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
            x = normalize_on_device(batch["video"].to(device, non_blocking=True), mean, std)
            y = batch["label"].to(device, non_blocking=True)
            return mix_video(mixup, x, y) if mixup is not None else (x, y)

        return prepare, supervised_loss(cfg, mixup is not None)

    def step_fn(self, ctx: RunContext, failures: GlobalFailures) -> Callable:
        prepare, criterion = self.inputs(ctx)

        def step(engine: Any, batch: dict) -> tuple[torch.Tensor, Any]:
            failures.add(batch)
            x, y = prepare(batch)
            logits = engine(x)
            return criterion(logits.float(), y), logits  # head output and loss in FP32

        return step

    @staticmethod
    def clip_flops(cfg: RunConfig, model_cfg: Any, teacher: Any = None) -> float:
        from giant.flops import train_flops_per_clip

        return train_flops_per_clip(model_cfg, None, "finetune")

    def evaluate(self, ctx: RunContext, step: int) -> dict:
        if not self.cfg.data.val_manifest:
            return {}
        result = validate(ctx, self._val_loader(ctx), step=step)
        if result:
            result["val/best_top1"] = self.best.update(result["val/top1"], step)
        return result

    def _val_loader(self, ctx: RunContext) -> tuple[Any, PaddedShardSampler]:
        if not hasattr(self, "_val"):
            from giant.data import LabeledClips, collate_labeled, make_loader

            cfg = self.cfg  # the driver's resolved config (model sizes filled)
            dataset = LabeledClips.from_config(cfg, "val")
            batch = cfg.finetune.eval_batch_size or cfg.optim.batch_size
            sampler = PaddedShardSampler(len(dataset), ctx.rank, ctx.world, batch)
            loader = make_loader(dataset, sampler, batch, cfg.data.num_workers, collate_labeled,
                                 timeout=cfg.data.loader_timeout_s)
            loader.generator = torch.Generator().manual_seed(cfg.stage.seed)  # leave the global RNG alone
            self._val = (loader, sampler)
        return self._val

    def finish(self, ctx: RunContext, art: dict) -> None:
        art["best_val_top1"] = None if self.best.best == float("-inf") else self.best.best
        art["best_val_step"] = self.best.step
        if "init_report" in ctx.extra:
            art["init_report"] = {k: v if isinstance(v, int) else len(v)
                                  for k, v in ctx.extra["init_report"].items()}


@torch.no_grad()
def validate(ctx: RunContext, val: tuple[Any, PaddedShardSampler], probe: Optional[Callable] = None,
             probe_keys: tuple = (), step: Optional[int] = None) -> dict:
    """Single centre view per video: loss, top-1, top-5 over the whole val set (each video once;
    unreadable ones are counted and left out of the accuracy, see val/unreadable).
    `probe(x, logits, y, ok) -> {key: count}` adds per-video counts over the same forward
    (distillation: agreement with the teacher), reported as val/<key> in percent.
    With `step`, top-1 per class goes to TensorBoard and RUN_DIR/val_per_class.json (rank 0)."""
    from giant.data import normalize_on_device

    loader, sampler = val
    cfg, device, engine = ctx.cfg, ctx.device, ctx.engine
    mean = torch.tensor(cfg.data.mean, dtype=torch.float32, device=device)
    std = torch.tensor(cfg.data.std, dtype=torch.float32, device=device)
    real_all = sampler.real_mask()
    # loss, top1, top5, count, unreadable (+ probes), summed on the device: no host sync per batch
    sums = torch.zeros(5 + len(probe_keys), dtype=torch.float64, device=device)
    per_class = torch.zeros(2, ctx.model_cfg.num_classes, dtype=torch.float64, device=device)
    seen = 0
    was_training = engine.module.training
    engine.eval()
    try:
        for batch in loader:
            n = batch["label"].shape[0]
            real = real_all[seen:seen + n].to(device)
            seen += n
            x = normalize_on_device(batch["video"].to(device), mean, std)
            logits = engine(x).float()
            y = batch["label"].to(device)
            ok = batch["valid"].to(device) & real
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            part = [(F.cross_entropy(logits, y, reduction="none") * ok).sum(), ((top[:, 0] == y) & ok).sum(),
                    ((top == y[:, None]).any(dim=1) & ok).sum(), ok.sum(),
                    (~batch["valid"].to(device) & real).sum()]
            if probe is not None:
                counts = probe(x, logits, y, ok)
                part += [torch.as_tensor(counts[key], device=device) for key in probe_keys]
            sums += torch.stack([p.double() for p in part])
            per_class += class_counts(top[:, 0], y, ok, per_class.shape[1])
    finally:
        engine.train(was_training)
    totals = all_reduce_sum(torch.cat([sums, per_class.flatten()]), device)  # one collective
    loss, top1, top5, count, unreadable, *probed = totals[:len(sums)]
    if step is not None and ctx.rank == 0:
        names = getattr(loader.dataset, "class_names", None)
        publish_per_class(ctx, step, per_class_table(totals[len(sums):], names))
    if count == 0:
        return {"val/unreadable": unreadable}
    return {"val/loss": loss / count, "val/top1": 100.0 * top1 / count, "val/top5": 100.0 * top5 / count,
            "val/videos": count, "val/unreadable": unreadable,
            **{f"val/{key}": 100.0 * v / count for key, v in zip(probe_keys, probed)}}


def class_counts(pred: torch.Tensor, y: torch.Tensor, ok: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[2, C]: per true class, the videos predicted right (top-1) and the videos counted."""
    right = torch.bincount(y[ok & (pred == y)], minlength=num_classes)[:num_classes]
    seen = torch.bincount(y[ok], minlength=num_classes)[:num_classes]
    return torch.stack([right, seen]).double()


def per_class_table(flat: list, names: Optional[list] = None) -> list[dict]:
    """[correct × C, count × C] summed over ranks → one row per class (top-1 in %, None for a
    class without validation videos); a class is named by the data's label names, else its index."""
    num = len(flat) // 2
    return [{"class": str(names[i]) if names else str(i), "index": i, "videos": int(flat[num + i]),
             "top1": 100.0 * flat[i] / flat[num + i] if flat[num + i] else None} for i in range(num)]


def publish_per_class(ctx: RunContext, step: int, table: list[dict]) -> None:
    """Rank 0: TensorBoard val_per_class/top1/<class>, and RUN_DIR/val_per_class.json (the
    latest evaluation, written atomically)."""
    import json

    from giant.artifact import write_text_atomic

    if ctx.metrics is not None:
        ctx.metrics.log_tensorboard(step, {f"val_per_class/top1/{row['class'].replace(' ', '_')}": row["top1"]
                                           for row in table if row["top1"] is not None})
    write_text_atomic(ctx.run_dir / "val_per_class.json",
                      json.dumps({"step": step, "metric": "top1", "classes": table}, indent=2) + "\n")


def run(cfg: RunConfig) -> dict:
    from giant.stages.driver import run_stage

    return run_stage(FinetuneStage(cfg))

