"""Masked-autoencoder pre-training (VideoMAE V2 dual masking) as a stage of the shared driver.

`main(argv)` is what `deepspeed launch/pretrain.py`, `torchrun`, `python launch/pretrain.py` and
`giant pretrain` call. The stage owns no math: the model computes the loss; the driver
(giant/stages/driver.py) owns resume, signals, the loop, checkpoints and export.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from giant.config import RunConfig
from giant.engine.loop import EpochBatches
from giant.errors import ConfigError
from giant.stages.driver import GlobalFailures, RunContext, Stage
from giant.stages.weights import load_init_weights


class PretrainStage(Stage):
    kind = "pretrain"
    model_kind = "pretrain"

    def init_weights(self, ctx: RunContext, model: torch.nn.Module) -> None:
        if self.cfg.checkpoint.init_from:
            load_init_weights(model, self.cfg.checkpoint.init_from, strict=True)

    def data(self, ctx: RunContext) -> tuple[EpochBatches, Any]:
        from giant.data import (FailureTracker, PretrainClips, ResumableDistributedSampler,
                                collate_pretrain, make_loader, set_loader_epoch)
        from giant.masking import MaskGenerator, token_grid

        cfg = self.cfg
        if not cfg.data.manifest:
            raise ConfigError("data.manifest is empty: point it at a manifest (e.g. `giant data synth "
                              "data/synth` then data.manifest=data/synth/train.csv)")
        mask_fn = MaskGenerator(cfg.mask, token_grid(ctx.model_cfg))
        dataset = PretrainClips.from_config(cfg, "train", mask_fn)  # cfg: the driver's resolved one
        sampler = ResumableDistributedSampler(len(dataset), ctx.rank, ctx.world, seed=cfg.stage.seed,
                                              shuffle=True, drop_last=len(dataset) >= ctx.world)
        # a decode stuck in C code raises DataError after data.loader_timeout_s; the launcher
        # (torchrun / srun --kill-on-bad-exit) then ends the peers instead of leaving them waiting
        from giant.data.loader import clip_item_bytes

        m = ctx.model_cfg  # uint8 clips + at most N encoder and N decoder indices each
        item = clip_item_bytes(cfg.data.num_sample, m.in_chans, m.num_frames, m.img_size, 2 * mask_fn.num_tokens)
        loader = make_loader(dataset, sampler, cfg.optim.batch_size, cfg.data.num_workers,
                             collate_pretrain, pin_memory=torch.cuda.is_available(),
                             timeout=cfg.data.loader_timeout_s, prefetch_factor=cfg.data.prefetch_factor,
                             persistent=cfg.data.persistent_workers, item_bytes=item)
        return (EpochBatches(loader, on_epoch=set_loader_epoch, full_batch=cfg.optim.batch_size),
                FailureTracker.from_config(cfg))

    def step_fn(self, ctx: RunContext, failures: GlobalFailures):
        from giant.data import normalize_on_device

        device = ctx.device
        # on the device once: a list would be copied host→device (blocking) every micro-step
        mean = torch.tensor(self.cfg.data.mean, dtype=torch.float32, device=device)
        std = torch.tensor(self.cfg.data.std, dtype=torch.float32, device=device)

        def step(engine: Any, batch: dict) -> tuple[torch.Tensor, Any]:
            failures.add(batch)
            video = batch["video"].to(device, non_blocking=True)
            x = normalize_on_device(video, mean, std)
            out = engine(x, batch["enc_keep"].to(device, non_blocking=True),
                         batch["dec_keep"].to(device, non_blocking=True))
            return out.loss, out

        return step

    @staticmethod
    def clip_flops(cfg: RunConfig, model_cfg: Any, teacher: Any = None) -> float:
        from giant.flops import train_flops_per_clip

        return train_flops_per_clip(model_cfg, cfg.mask, "pretrain")

    def image(self, ctx: RunContext, step: int, batch: dict, out: Any) -> Optional[str]:
        if ctx.rank != 0:
            return None
        from giant.stages.visualize import reconstruction_image

        # the masks the model used (AdaMAE draws them; the batch then holds placeholders)
        img = reconstruction_image(batch["video"][0], out.enc_keep[0].cpu(), out.dec_keep[0].cpu(),
                                   out.pred[0].detach().float().cpu(), ctx.model_cfg, min_size=128)
        return ctx.metrics.log_image(step, "reconstruction", img)


def run(cfg: RunConfig) -> dict:
    """Pre-train; returns the artifacts (paths, losses, reason). Collective over all ranks."""
    from giant.stages.driver import run_stage

    return run_stage(PretrainStage(cfg))

