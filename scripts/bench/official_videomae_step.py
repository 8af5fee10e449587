"""The official VideoMAE V2 ViT-g pre-training step on this GPU: the baseline for giant's numbers.

Their model (OpenGVLab/VideoMAEv2 models/modeling_pretrain.py, never vendored into giant) with
their step (engine_for_pretraining.py): the whole model and the loss under FP16 autocast,
torch AdamW (0.9, 0.95) on FP32 parameters, a GradScaler with gradient clipping 0.02, every
block checkpointed (--with_checkpoint), 32 videos x 4 clips = 128 clips per GPU, tube 0.9 and
running-cell 0.5 masks (drawn by giant.masking, the same counts). FLOPs and MFU use giant's
analytic count of the same network (giant.flops), so the two MFUs compare directly.

    python scripts/bench/official_videomae_step.py --official PATH/VideoMAEv2 [--clips 128] [--steps 4]

PATH is a copy of the repository (its models/ folder is enough); scripts/bench/fetch_wheels.sh
--official DIR copies one into the offline cache .whl/VideoMAEv2 that gpu_check.sh reads.
`--device cpu --tiny` runs a tiny version of the same step (a dry run, not a measurement).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def build(official: Path, tiny: bool, with_cp: bool) -> torch.nn.Module:
    import functools

    import torch.utils.checkpoint as cp

    if not getattr(cp.checkpoint, "_official_default", False):  # their calls name no use_reentrant,
        cp.checkpoint = functools.partial(cp.checkpoint, use_reentrant=True)  # which newer torch refuses
        cp.checkpoint._official_default = True  # the torch of their era defaulted to the reentrant form
    sys.path.insert(0, str(official))
    from models.modeling_pretrain import PretrainVisionTransformer, pretrain_videomae_giant_patch14_224

    if not tiny:
        return pretrain_videomae_giant_patch14_224(decoder_depth=4, with_cp=with_cp, all_frames=16, tubelet_size=2)
    from functools import partial

    return PretrainVisionTransformer(img_size=32, patch_size=8, encoder_embed_dim=64, encoder_depth=2,
                                     encoder_num_heads=2, decoder_num_classes=3 * 2 * 8 * 8, decoder_embed_dim=32,
                                     decoder_depth=1, decoder_num_heads=2, mlp_ratio=4, qkv_bias=True,
                                     norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), with_cp=with_cp,
                                     all_frames=4, tubelet_size=2)


def masks(clips: int, frames: int, size: int, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Their boolean masks from giant's index masks: bool_masked_pos True = hidden from the
    encoder; decode_masked_pos True = not reconstructed by the decoder."""
    from giant.config import MaskConfig
    from giant.masking import MaskGenerator

    grid = (frames // 2, size // patch, size // patch)
    n = grid[0] * grid[1] * grid[2]
    enc, dec = MaskGenerator(MaskConfig(), grid).batch(clips, torch.Generator().manual_seed(0))
    hidden = torch.ones(clips, n, dtype=torch.bool).scatter_(1, enc, False)
    skipped = torch.ones(clips, n, dtype=torch.bool).scatter_(1, dec, False)
    return hidden, skipped


def step_fn(model, optimizer, scaler, video, hidden, skipped, patch: int):
    """One step of engine_for_pretraining.train_one_epoch (normalised target, masked MSE)."""
    from einops import rearrange

    with torch.no_grad():
        x = rearrange(video, "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c", p0=2, p1=patch, p2=patch)
        x = (x - x.mean(dim=-2, keepdim=True)) / (x.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
        x = rearrange(x, "b n p c -> b n (p c)")
        labels = x[~skipped].reshape(x.shape[0], -1, x.shape[-1])
    device_type = video.device.type
    with torch.autocast(device_type, dtype=torch.float16 if device_type == "cuda" else torch.bfloat16):
        out = model(video, hidden, skipped)
        loss = ((out - labels) ** 2).mean(dim=-1)
        weight = hidden[~skipped].reshape(video.shape[0], -1)
        loss = (loss * weight).sum() / weight.sum()
    optimizer.zero_grad()
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.02)
    scaler.step(optimizer)
    scaler.update()
    return loss


def run(args: argparse.Namespace) -> dict:
    from giant.config import MaskConfig, ModelConfig
    from giant.engine.metrics import Throughput, memory_stats
    from giant.flops import train_flops_per_clip

    device = torch.device(args.device)
    frames, size, patch = (4, 32, 8) if args.tiny else (16, 224, 14)
    model = build(Path(args.official), args.tiny, not args.no_checkpoint).to(device).train()
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=1e-4, betas=(0.9, 0.95))
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    hidden, skipped = (m.to(device) for m in masks(args.clips, frames, size, patch))
    video = torch.randn(args.clips, 3, frames, size, size, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elapsed = 0.0
    for i in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        loss = step_fn(model, optimizer, scaler, video, hidden, skipped, patch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed += time.perf_counter() - t0 if i >= args.warmup else 0.0
    giant_cfg = ModelConfig(name="tiny" if args.tiny else "vit_g", num_frames=frames, img_size=size,
                            **({"patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2, "decoder_embed_dim": 32,
                                "decoder_depth": 1, "decoder_num_heads": 2} if args.tiny else {}))
    tput = Throughput(train_flops_per_clip(giant_cfg, MaskConfig()), device, "fp16", 1)
    return {"model": "official pretrain_videomae_giant_patch14_224" if not args.tiny else "official (tiny)",
            "clips_per_step": args.clips, "checkpointing": not args.no_checkpoint, "steps": args.steps,
            "last_loss": float(loss.detach()), "params": sum(p.numel() for p in model.parameters()),
            **tput.update(args.steps * args.clips, elapsed), **memory_stats(device)}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--official", required=True, help="a copy of OpenGVLab/VideoMAEv2 (its models/ folder)")
    p.add_argument("--clips", type=int, default=128)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-checkpoint", action="store_true", help="without --with_checkpoint")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true")
    args = p.parse_args(argv)
    if not (Path(args.official) / "models" / "modeling_pretrain.py").is_file():
        print(json.dumps({"ok": False, "skipped": f"{args.official}/models/modeling_pretrain.py not found: copy "
                          "OpenGVLab/VideoMAEv2 there (scripts/bench/fetch_wheels.sh --official DIR)"}))
        return 0
    try:
        result = {"ok": True, **run(args)}
    except Exception as exc:  # noqa: BLE001 - an out-of-memory is a result here
        result = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"}
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
