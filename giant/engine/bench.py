"""`giant bench`: steps/s, clips/s, achieved TFLOP/s, MFU and peak memory of real training steps.

It builds the same engine as training (DeepSpeed JSON + precision policy + activation
checkpointing) and feeds it synthetic uint8 clips already on the device, so the number is the
model/engine cost alone; loader throughput is measured separately by `giant data bench`.
FLOPs come from `giant.flops` (analytic, matmuls only, ×3 for backward) — the same convention
as the papers, so MFU is comparable with SPEC §6.
"""
from __future__ import annotations

import argparse
import json
import logging
import time

import torch

from giant.config import ModelConfig, load_config
from giant.console import ArgumentParser, nonnegative_int, out, positive_int, ratio, run as run_command
from giant.data.transforms import normalize_on_device
from giant.engine.deepspeed import build_engine, construct_model, init_distributed
from giant.engine.metrics import Throughput, memory_stats
from giant.engine.precision import resolve_precision
from giant.flops import train_flops_per_clip
from giant.masking import MaskGenerator, token_grid

log = logging.getLogger(__name__)
PROG = "giant bench"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", help="size name (tiny, vit_s ... vit_g)")
    p.add_argument("--frames", type=positive_int, default=16)
    p.add_argument("--img-size", type=positive_int, default=224)
    p.add_argument("--batch", type=positive_int, default=2, help="clips per device per micro-step")
    p.add_argument("--zero", type=int, default=2, choices=[0, 1, 2, 3], help="ZeRO stage")
    p.add_argument("--ds", default=None, help="DeepSpeed JSON (default ds_configs/zero{N}.json)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="encoder precision (auto: bf16 on GPU, fp16 without BF16; bf16 on a CPU "
                        "with native BF16, else fp32)")
    p.add_argument("--act-ckpt", default="off", help="off | all | first:N")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every block (engine.compile; the warmup steps absorb compilation)")
    p.add_argument("--mask-ratio", type=ratio, default=0.9)
    p.add_argument("--decoder-mask-ratio", type=ratio, default=0.5)
    p.add_argument("--steps", type=positive_int, default=10, help="timed steps")
    p.add_argument("--warmup", type=nonnegative_int, default=3, help="untimed steps first")
    p.add_argument("--device", default="", help="cpu | cuda (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--teacher", default="", help="distillation mode: a frozen teacher of this size (random "
                   "weights) runs forward on each batch, then the student (--model, a classifier) trains")
    p.add_argument("--teacher-precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="distillation mode: the teacher's weights (as distill.teacher_precision)")
    p.add_argument("--classes", type=positive_int, default=400, help="distillation mode: classes of both heads")
    p.add_argument("overrides", nargs="*", help="extra dotted config overrides")
    return p.parse_args(argv)


def _config(args: argparse.Namespace):
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
    cfg.model.resolved()  # an unknown size is one line before any process group
    if args.teacher:
        ModelConfig(name=args.teacher).resolved()
    return cfg


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> dict:
    cfg = _config(args)
    rank, world, _, device = init_distributed(cfg)
    cfg = resolve_precision(cfg, device)
    torch.manual_seed(cfg.stage.seed + rank)
    model = construct_model(cfg, cfg.model.resolved(), "pretrain")
    engine, info = build_engine(model, cfg, device)
    mcfg = cfg.model.resolved()
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv or [])
    result = run_distill(args) if args.teacher else run(args)
    if torch.distributed.get_rank() == 0:
        if args.json:
            out(json.dumps(result))
        else:
            mfu = f"{100 * result['mfu']:.1f}%" if "mfu" in result else "n/a (unknown peak)"
            mem = ", ".join(f"{k} {v:.2f}" for k, v in result.items() if k.startswith("mem_"))
            out(f"{result['model']} {result['frames']}x{result['img_size']} batch "
                  f"{result['batch_per_device']}/device x {result['world_size']} | ZeRO-{result['zero']} "
                  f"{result['precision']} ckpt={result['act_ckpt']}{' compiled' if result['compile'] else ''} "
                  f"on {result['device']}\n"
                  f"  {result['steps_per_s']:.3f} steps/s, {result['clips_per_s']:.2f} clips/s, "
                  f"{result['tflops']:.3f} TFLOP/s/device, MFU {mfu}, {mem}")
            if args.teacher:
                out(f"  teacher {result['teacher']} ({result['teacher_precision']}): "
                    f"{result['teacher_s_per_step']:.3f} s/step forward = {100 * result['teacher_share']:.1f}% "
                    f"of the step")
    return 0


# ----------------------------------------------------------------------------- distillation mode
def run_distill(args: argparse.Namespace) -> dict:
    """Teacher forward (frozen, low precision, no graph) + student classifier training step, as
    the distill stage runs them; the teacher's share of the step is timed on its own."""
    import dataclasses

    from giant.engine.teacher import choose_teacher_precision, distill_loss, freeze_teacher, teacher_logits
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
    scfg = cfg.model.resolved()
    engine, info = build_engine(construct_model(cfg, scfg, "classifier"), cfg, device)
    tcfg = ModelConfig(name=args.teacher, num_frames=scfg.num_frames, img_size=scfg.img_size,
                       num_classes=args.classes).resolved()
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


if __name__ == "__main__":
    import sys

    sys.exit(run_command(PROG, main, sys.argv[1:]))
