"""`giant bench`: steps/s, clips/s, achieved TFLOP/s, MFU and peak memory of real training steps.

It builds the same engine as training (DeepSpeed JSON + precision policy + activation
checkpointing) and feeds it synthetic uint8 clips already on the device, so the number is the
model/engine cost alone; loader throughput is measured separately by `giant data bench`.
FLOPs come from `giant.flops` (analytic, matmuls only, ×3 for backward) — the same convention
as the papers, so MFU is comparable with docs/reference.md §6.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import torch

from giant.config import ModelConfig, load_config
from giant.data.transforms import normalize_on_device
from giant.engine.deepspeed import build_engine, construct_model, init_distributed
from giant.engine.metrics import Throughput, memory_stats
from giant.engine.precision import resolve_precision
from giant.flops import train_flops_per_clip
from giant.masking import MaskGenerator, token_grid

log = logging.getLogger(__name__)


def _config(args: Any):
    from giant.models import resolve as resolve_model
    overrides = [
        f"model.name={args.model}", f"model.num_frames={args.frames}",
        f"model.img_size={args.img_size}", f"optim.batch_size={args.batch}", "data.num_sample=1",
        "optim.accum_steps=1", f"optim.total_steps={args.warmup + args.steps}", "optim.warmup_steps=0",
        f"precision.encoder={args.precision}", f"engine.activation_checkpointing={args.act_ckpt}",
        f"engine.compile={str(args.compile).lower()}",
        f"engine.ds_config={args.ds or f'ds_configs/zero{args.zero}.json'}",
        f"mask.ratio={args.mask_ratio}", f"mask.decoder_ratio={args.decoder_mask_ratio}",
        f"mask.decoder={'running_cell' if args.decoder_mask_ratio > 0 else 'none'}",
        f"stage.device={args.device}", *args.overrides]
    cfg = load_config(None, overrides)
    resolve_model(cfg.model)  # an unknown size is one line before any process group
    if args.teacher:
        resolve_model(ModelConfig(name=args.teacher))
    return cfg


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: Any) -> dict:
    from giant.models import resolve as resolve_model
    cfg = _config(args)
    rank, world, _, device = init_distributed(cfg)
    cfg = resolve_precision(cfg, device)
    torch.manual_seed(cfg.stage.seed + rank)
    model = construct_model(cfg, resolve_model(cfg.model), "pretrain")
    engine, info = build_engine(model, cfg, device)
    mcfg = resolve_model(cfg.model)
    g = torch.Generator().manual_seed(rank)
    enc, dec = MaskGenerator(cfg.mask, token_grid(mcfg)).batch(args.batch, g)
    raw = torch.randint(0, 256, (args.batch, 3, mcfg.num_frames, mcfg.img_size, mcfg.img_size),
                        dtype=torch.uint8, generator=g)
    video = normalize_on_device(raw.to(device), cfg.data.mean, cfg.data.std)
    enc, dec = enc.to(device), dec.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elapsed, cpu, loss = 0.0, 0.0, float("nan")
    for i in range(args.warmup + args.steps):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        info.loss_scaler.before_step(engine)
        out = engine(video, enc, dec)
        engine.backward(out.loss)
        engine.step()
        info.loss_scaler.update(not engine.was_step_applied())
        _sync(device)
        if i >= args.warmup:
            elapsed += time.perf_counter() - t0
            cpu += time.process_time() - c0
        loss = float(out.loss.detach())
    clips = args.steps * args.batch * world
    tput = Throughput(train_flops_per_clip(mcfg, cfg.mask), device, cfg.precision.encoder, world)
    result = {"model": args.model, "frames": mcfg.num_frames, "img_size": mcfg.img_size,
              "batch_per_device": args.batch, "world_size": world, "zero": info.zero_stage,
              "precision": cfg.precision.encoder, "act_ckpt": cfg.engine.activation_checkpointing,
              "compile": cfg.engine.compile,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "steps": args.steps, "steps_per_s": args.steps / elapsed,
              # CPU seconds (all threads of this process) per step: on a shared machine with
              # OMP_NUM_THREADS=1 this barely moves with load, unlike steps/s
              "cpu_s_per_step": cpu / args.steps,
              "train_flops_per_clip": tput.flops_per_clip, "last_loss": loss,
              **tput.update(clips, elapsed), **memory_stats(device)}
    return result


# ----------------------------------------------------------------------------- distillation mode
def run_distill(args: Any) -> dict:
    """Teacher forward (frozen, low precision, no graph) + student classifier training step, as
    the distill stage runs them; the teacher's share of the step is timed on its own."""
    from giant.models import resolve as resolve_model
    import dataclasses

    from giant.stages.teacher import choose_teacher_precision, distill_loss, freeze_teacher, teacher_logits
    from giant.flops import count
    from giant.models import build_model

    cfg = _config(args)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=args.classes))
    rank, world, _, device = init_distributed(cfg)
    try:  # precision.encoder=auto, where that exists (giant.engine.precision.resolve_precision)
        from giant.engine.precision import resolve_precision  # type: ignore[attr-defined]

        cfg = resolve_precision(cfg, device)
    except ImportError:
        pass
    torch.manual_seed(cfg.stage.seed + rank)
    scfg = resolve_model(cfg.model)
    engine, info = build_engine(construct_model(cfg, scfg, "classifier"), cfg, device)
    tcfg = resolve_model(ModelConfig(name=args.teacher, num_frames=scfg.num_frames, img_size=scfg.img_size,
                       num_classes=args.classes))
    tprec, _ = choose_teacher_precision(args.teacher_precision, device)
    teacher = freeze_teacher(build_model(tcfg, "classifier"), tprec, device)
    g = torch.Generator().manual_seed(rank)
    raw = torch.randint(0, 256, (args.batch, 3, scfg.num_frames, scfg.img_size, scfg.img_size),
                        dtype=torch.uint8, generator=g)
    video = normalize_on_device(raw.to(device), cfg.data.mean, cfg.data.std)
    elapsed = teacher_s = 0.0
    loss = float("nan")
    for i in range(args.warmup + args.steps):
        _sync(device)
        t0 = time.perf_counter()
        target = teacher_logits(teacher, video)
        _sync(device)
        t1 = time.perf_counter()
        info.loss_scaler.before_step(engine)
        step_loss = distill_loss(engine(video).float(), target)
        engine.backward(step_loss)
        engine.step()
        info.loss_scaler.update(not engine.was_step_applied())
        _sync(device)
        if i >= args.warmup:
            elapsed += time.perf_counter() - t0
            teacher_s += t1 - t0
        loss = float(step_loss.detach())
    teacher_flops = count(tcfg, "finetune")["flops"]
    tput = Throughput(train_flops_per_clip(scfg, None, "finetune") + teacher_flops, device,
                      cfg.precision.encoder, world)
    return {"model": args.model, "teacher": args.teacher, "teacher_precision": tprec,
            "frames": scfg.num_frames, "img_size": scfg.img_size, "batch_per_device": args.batch,
            "world_size": world, "zero": info.zero_stage, "precision": cfg.precision.encoder,
            "act_ckpt": cfg.engine.activation_checkpointing, "compile": cfg.engine.compile,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "steps": args.steps, "steps_per_s": args.steps / elapsed,
            "teacher_s_per_step": teacher_s / args.steps, "teacher_share": teacher_s / elapsed,
            "train_flops_per_clip": tput.flops_per_clip, "teacher_flops_per_clip": teacher_flops,
            "last_loss": loss, **tput.update(args.steps * args.batch * world, elapsed), **memory_stats(device)}

