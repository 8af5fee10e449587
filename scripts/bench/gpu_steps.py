"""Training steps for scripts/bench/gpu_check.sh, through giant's own engine (giant.stages.bench /
build_engine); each subcommand prints one JSON object, with the memory planner's prediction
(giant/memory.py) next to the measured peak.

    python scripts/bench/gpu_steps.py pretrain --variant new      # ViT-g pre-training, today's defaults
    python scripts/bench/gpu_steps.py pretrain --variant shipped  # ... as shipped before issue 19
    python scripts/bench/gpu_steps.py finetune --clips 12         # ViT-g fine-tuning, 12 clips per step
    python scripts/bench/gpu_steps.py distill                     # ViT-B student, ViT-g teacher (Table 16)

`new` takes the pre-training recipe's settings (launch/recipes/pretrain_vitg_hybrid.yaml: FP16
encoder, 32 videos x 4 clips = 128 clips per GPU) with the activation checkpointing the planner
picks for this GPU's memory at one rank; `shipped` is the same step as giant ran it before: the
FP32 decoder in true FP32, a cast in and out of every block, torch's SDPA order, the Conv3d
cube embedding, 5e8-element FP32 ZeRO buckets and activation_checkpointing: all. One rank, so
ZeRO shards nothing: the optimizer state is all here (a cluster rank holds 1/world of it).
`--device cpu --tiny` runs the same code on a tiny model (a dry run, not a measurement).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from giant.models import resolve as resolve_model
PRETRAIN_RECIPE = REPO / "launch/recipes/pretrain_vitg_hybrid.yaml"
FINETUNE_RECIPE = REPO / "launch/recipes/finetune_vitg_k400.yaml"
SHIPPED_OVERRIDES = ["precision.decoder_matmul=fp32", "precision.cast=block",
                     "engine.attention_backends=flash,efficient,math,cudnn"]  # torch's own order
SHIPPED_ZERO2 = {"zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True,
                                       "reduce_scatter": True, "reduce_bucket_size": 5e8,
                                       "allgather_bucket_size": 5e8},
                 "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto", "loss_scale": 0}}


def _gpu_gib(device: torch.device) -> float:
    return torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda" else 79.6


def _planner(cfg, kind: str, ds: dict, ckpt: str, teacher=None) -> dict:
    """The planner's per-GPU estimate for this exact step (one rank)."""
    from giant.memory import GIB, Stage, evaluate

    s = evaluate(Stage(cfg=cfg, kind=kind, ds=ds, world=1, teacher=teacher), ckpt)
    return {"planned_allocated_gib": s.allocated / GIB, "planned_peak_gib": s.peak / GIB,
            "planned_lines_gib": {k: v / GIB for k, v in s.gpu.items()}}


def _choose_ckpt(cfg, kind: str, ds: dict, device: torch.device, teacher=None) -> str:
    from giant.memory import Stage, plan

    best = plan(Stage(cfg=cfg, kind=kind, ds=ds, world=1, teacher=teacher), _gpu_gib(device)).fastest
    return best.ckpt if best is not None else "all"


def _bench_args(args: argparse.Namespace, extra: list[str]) -> list[str]:
    base = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device, "--json"]
    return base + extra


def cmd_pretrain(args: argparse.Namespace) -> dict:
    import giant.models.vit as vit
    from giant.config import load_config
    from giant.commands import bench as bench_cli
    from giant.stages import bench

    device = torch.device(args.device)
    recipe = load_config(PRETRAIN_RECIPE, [])
    model, clips = ("tiny", 4) if args.tiny else ("vit_g", recipe.optim.batch_size * recipe.data.num_sample)
    frames, size = (4, 32) if args.tiny else (recipe.model.num_frames, recipe.model.img_size)
    prec = recipe.precision.encoder
    if args.variant == "shipped":
        vit.MATMUL_EMBED_DEVICES = ()  # the Conv3d cube embedding giant shipped with
        ds_path = Path(tempfile.mkdtemp()) / "zero2_shipped.json"
        ds_path.write_text(json.dumps(SHIPPED_ZERO2))
        overrides, ckpt = SHIPPED_OVERRIDES, "all"
    else:
        ds_path, overrides, ckpt = REPO / "ds_configs/zero2.json", [], None
    argv = ["--model", model, "--frames", str(frames), "--img-size", str(size), "--batch", str(clips),
            "--precision", prec, "--ds", str(ds_path)]
    cfg = bench._config(bench_cli.parse_args(_bench_args(args, argv + overrides)))
    ds = json.loads(ds_path.read_text())
    ckpt = ckpt or _choose_ckpt(cfg, "pretrain", ds, device)
    out = {"variant": args.variant, "act_ckpt": ckpt, "overrides": overrides, "ds": ds.get("zero_optimization"),
           **_planner(cfg, "pretrain", ds, ckpt)}
    return {**out, **_run(lambda: bench.run(bench_cli.parse_args(_bench_args(args, argv + ["--act-ckpt", ckpt]
                                                                          + overrides))))}


def cmd_distill(args: argparse.Namespace) -> dict:
    """Table 16's step: ViT-B student (16 clips) under a frozen ViT-g teacher in BF16."""
    from giant.config import ModelConfig
    from giant.commands import bench as bench_cli
    from giant.stages import bench

    student, teacher = ("tiny", "tiny") if args.tiny else ("vit_b", "vit_g")
    size, frames = (32, 4) if args.tiny else (224, 16)
    argv = ["--model", student, "--teacher", teacher, "--batch", str(args.clips or 16), "--classes", "710",
            "--frames", str(frames), "--img-size", str(size), "--precision", "bf16", "--teacher-precision", "bf16",
            "--zero", "2"]
    parsed = bench_cli.parse_args(_bench_args(args, argv))
    cfg = bench._config(parsed)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=710))
    tcfg = resolve_model(ModelConfig(name=teacher, num_frames=frames, img_size=size, num_classes=710))
    ds = json.loads((REPO / "ds_configs/zero2.json").read_text())
    return {**_planner(cfg, "distill", ds, "off", tcfg), **_run(lambda: bench.run_distill(parsed))}


def cmd_finetune(args: argparse.Namespace) -> dict:
    """The fine-tuning step (classifier forward, CE loss, backward, AdamW) of the K400 recipe at
    `--clips` clips per micro-step, with the planner's checkpointing for this GPU."""
    from giant.config import load_config

    device = torch.device(args.device)
    clips = args.clips or 12
    over = [f"optim.batch_size={max(clips // 2, 1)}", "data.num_sample=2", f"stage.device={args.device}",
            "optim.accum_steps=1", "optim.warmup_steps=0", f"optim.total_steps={args.steps + args.warmup}"]
    if args.tiny:
        over += ["model.name=tiny", "model.num_frames=4", "model.img_size=32"]
    cfg = load_config(FINETUNE_RECIPE, over)
    ds = json.loads((REPO / "ds_configs/zero2.json").read_text())
    ckpt = _choose_ckpt(cfg, "finetune", ds, device)
    cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, activation_checkpointing=ckpt,
                                                              ds_config=str(REPO / "ds_configs/zero2.json")))
    return {"act_ckpt": ckpt, **_planner(cfg, "finetune", ds, ckpt), **_run(lambda: _finetune_steps(cfg, args))}


def _finetune_steps(cfg, args: argparse.Namespace) -> dict:
    from giant.data.transforms import normalize_on_device
    from giant.engine.deepspeed import build_engine, construct_model, init_distributed
    from giant.engine.metrics import Throughput, memory_stats
    from giant.engine.precision import resolve_precision
    from giant.flops import train_flops_per_clip

    rank, world, _, device = init_distributed(cfg)
    cfg = resolve_precision(cfg, device)
    mcfg = resolve_model(cfg.model)
    engine, info = build_engine(construct_model(cfg, mcfg, "classifier"), cfg, device)
    clips = cfg.optim.batch_size * cfg.data.num_sample
    g = torch.Generator().manual_seed(rank)
    raw = torch.randint(0, 256, (clips, 3, mcfg.num_frames, mcfg.img_size, mcfg.img_size), dtype=torch.uint8,
                        generator=g)
    video = normalize_on_device(raw.to(device), cfg.data.mean, cfg.data.std)
    labels = torch.randint(0, mcfg.num_classes, (clips,), generator=g).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elapsed = 0.0
    for i in range(args.warmup + args.steps):
        _sync(device)
        t0 = time.perf_counter()
        info.loss_scaler.before_step(engine)
        loss = torch.nn.functional.cross_entropy(engine(video).float(), labels)
        engine.backward(loss)
        engine.step()
        info.loss_scaler.update(not engine.was_step_applied())
        _sync(device)
        elapsed += time.perf_counter() - t0 if i >= args.warmup else 0.0
    tput = Throughput(train_flops_per_clip(mcfg, None, "finetune"), device, cfg.precision.encoder, world)
    return {"model": mcfg.name, "clips_per_step": clips, "precision": cfg.precision.encoder,
            "steps": args.steps, "last_loss": float(loss.detach()), **tput.update(args.steps * clips * world, elapsed),
            **memory_stats(device)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run(fn) -> dict:
    """fn()'s result, or the error (an out-of-memory is a result here, not a crash)."""
    try:
        return {"ok": True, **fn()}
    except Exception as exc:  # noqa: BLE001
        out = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"}
        if torch.cuda.is_available():
            out["mem_alloc_gib_at_error"] = torch.cuda.max_memory_allocated() / 2**30
        return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["pretrain", "finetune", "distill"])
    p.add_argument("--variant", choices=["new", "shipped"], default="new", help="pretrain only")
    p.add_argument("--clips", type=int, default=0, help="clips per micro-step (finetune 12, distill 16)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="a tiny model: a dry run of this code on a CPU")
    args = p.parse_args(argv)
    result = {"pretrain": cmd_pretrain, "finetune": cmd_finetune, "distill": cmd_distill}[args.what](args)
    print(json.dumps(result, default=str))
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
