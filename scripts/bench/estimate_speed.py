"""ESTIMATED ViT-g clips/s per GPU before and after each speed change of issue 19: FLOPs from
giant.flops, activation bytes from the memory planner (giant.memory), the checkpointing the
planner picks, and an ASSUMED utilisation for each kind of work (the constants below). Not a
measurement: scripts/bench/gpu_check.sh measures; put its numbers beside these.

    python scripts/bench/estimate_speed.py                 # H100 SXM 80 GB, markdown tables
    python scripts/bench/estimate_speed.py --gpu h200 --json

Time per step = matmuls (encoder BF16/FP16 on tensor cores; decoder true FP32 on the CUDA cores
or TF32 on the tensor cores) + attention + memory-bound work (activation bytes written,
re-read and recomputed, at a share of HBM bandwidth; per-block casts) + exposed ZeRO-2
communication (the gradient reduce-scatter hides behind the backward except its last bucket;
the parameter all-gather after the step does not hide).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

# Dense peaks (TFLOP/s), HBM bytes/s, inter-node bytes/s per GPU (8 × 400 Gb/s NICs per node).
GPUS = {"h100": {"name": "H100 SXM 80 GB", "bf16": 989.4, "tf32": 494.7, "fp32": 66.9, "hbm": 3.35e12,
                 "mem_gib": 79.6, "net": 40e9},
        "h200": {"name": "H200 SXM 141 GB", "bf16": 989.4, "tf32": 494.7, "fp32": 66.9, "hbm": 4.8e12,
                 "mem_gib": 140.4, "net": 40e9}}
# ASSUMED shares of those peaks (the basis of every estimate; replace with gpu_check.sh's numbers)
UTIL = {"gemm_bf16": 0.65, "gemm_tf32": 0.55, "fp32_cuda_cores": 0.80, "attention_flash": 0.45,
        "attention_cudnn": 0.55, "attention_fp32": 0.35, "conv3d_bf16": 0.15, "hbm": 0.70}


@dataclasses.dataclass
class Settings:
    """The engine choices a row of the table runs with."""

    ckpt: str = "all"
    decoder_matmul: str = "fp32"  # fp32 | tf32
    attention: str = "flash"  # flash (torch's order) | cudnn (engine.attention_backends=auto on Hopper)
    cast: str = "block"  # block | model (classifier / teacher residual stream)
    matmul_embed: bool = False  # the Conv3d cube embedding before issue 19
    target_kept_only: bool = False
    comm_bytes: int = 4  # gradient reduce-scatter element size
    bucket: float = 5e8  # reduce_bucket_size (elements)


def _attention_macs(n: int, dim: int, depth: int) -> int:
    return depth * 2 * n * n * dim  # QKᵀ and AV


def _seconds(tflop: float, peak: float, util: float) -> float:
    return tflop / (peak * util)


def step_seconds(kind: str, cfg, mask, clips: int, world: int, s: Settings, gpu: dict) -> dict:
    """Seconds of one micro-step (all `clips`) by part, for `kind` pretrain or finetune."""
    from giant.config import RunConfig
    from giant.flops import count, decoder_kept_tokens, token_grid, visible_tokens
    from giant.memory import Stage, evaluate
    from giant.models import resolve as resolve_model

    m = resolve_model(cfg)
    grid = token_grid(m)
    n_all = grid[0] * grid[1] * grid[2]
    c = count(m, "pretrain" if kind == "pretrain" else "finetune", mask)
    parts = c["parts_macs"]
    k = visible_tokens(grid, mask) if kind == "pretrain" else n_all
    enc_attn = _attention_macs(k, m.embed_dim, m.depth)
    enc_ckpt = m.depth if s.ckpt == "all" else (int(s.ckpt.split(":")[1]) if s.ckpt.startswith("first:") else 0)
    r_enc = enc_ckpt / m.depth  # recomputed share of the encoder's forward
    t = {}
    tf = lambda macs, passes: 2 * macs * passes * clips / 1e12  # noqa: E731 (TFLOP)
    t["encoder matmuls"] = _seconds(tf(parts["encoder_blocks"] - enc_attn, 3 + r_enc), gpu["bf16"], UTIL["gemm_bf16"])
    attn_util = UTIL["attention_cudnn" if s.attention == "cudnn" else "attention_flash"]
    t["encoder attention"] = _seconds(tf(enc_attn, 3 + r_enc), gpu["bf16"], attn_util)
    embed_util = UTIL["gemm_bf16"] if s.matmul_embed else UTIL["conv3d_bf16"]
    t["cube embedding"] = _seconds(tf(parts["patch_embed"], 3), gpu["bf16"], embed_util)
    if kind == "pretrain":
        m_kept = decoder_kept_tokens(grid, mask, k)
        dec_attn = _attention_macs(k + m_kept, m.decoder_embed_dim, m.decoder_depth)
        r_dec = 1.0 if s.ckpt == "all" else 0.0
        tf32 = s.decoder_matmul == "tf32"
        fp32 = (gpu["tf32"], UTIL["gemm_tf32"]) if tf32 else (gpu["fp32"], UTIL["fp32_cuda_cores"])
        dec_linear = parts["decoder_blocks"] - dec_attn + parts["encoder_to_decoder"] + parts["decoder_head"]
        t["decoder matmuls (FP32)"] = _seconds(tf(dec_linear, 3 + r_dec), *fp32)
        t["decoder attention (FP32)"] = _seconds(tf(dec_attn, 3 + r_dec), gpu["fp32"], UTIL["attention_fp32"])
    run = RunConfig()
    run = dataclasses.replace(run, model=m, mask=mask, precision=dataclasses.replace(run.precision, cast=s.cast))
    run.optim.batch_size, run.data.num_sample = clips, 1
    ds = {"zero_optimization": {"stage": 2, "reduce_bucket_size": s.bucket, "overlap_comm": True}}
    act = evaluate(Stage(cfg=run, kind=kind, ds=ds, world=world), s.ckpt).gpu["activations"]
    traffic = act * (3 + 2 * r_enc)  # written, re-read by the backward, (re)computed again
    if kind == "finetune" and s.cast == "block":  # FP32 in and BF16 out of every block, and back
        traffic += 2 * m.depth * clips * n_all * m.embed_dim * (4 + 2) * 2
    if kind == "pretrain" and not s.target_kept_only:  # the target built on all tokens, then gathered
        traffic += clips * n_all * 3 * m.tubelet_size * m.patch_size ** 2 * 4 * 4
    t["memory-bound ops"] = traffic / (gpu["hbm"] * UTIL["hbm"])
    t.update(_communication(c["params"], world, s, gpu, backward=2 / 3 * sum(t.values())))
    return t


def _communication(params: int, world: int, s: Settings, gpu: dict, backward: float) -> dict:
    """Exposed ZeRO-2 time: the reduce-scatter beyond the backward, or at least its last bucket;
    the FP32 parameter all-gather after the step."""
    share = (world - 1) / world
    reduce = params * s.comm_bytes * share / gpu["net"]
    last_bucket = min(s.bucket, params) * s.comm_bytes * share / gpu["net"]
    gather = params * 4 * share / gpu["net"]
    return {"gradient reduce-scatter (exposed)": max(reduce - backward, last_bucket), "parameter all-gather": gather}


def table(kind: str, recipe: str, world: int, gpu_key: str, changes: list[tuple[str, dict]]) -> dict:
    from giant.config import load_config
    from giant.flops import train_flops_per_clip
    from giant.memory import plan, stage_from_config

    gpu = GPUS[gpu_key]
    cfg = load_config(REPO / recipe, [])
    clips = cfg.optim.batch_size * cfg.data.num_sample

    flops = train_flops_per_clip(cfg.model, cfg.mask if kind == "pretrain" else None, kind)
    chosen = plan(stage_from_config(cfg, kind, world), gpu["mem_gib"]).fastest
    rows, s = [], Settings()
    for label, change in changes:
        s = dataclasses.replace(s, **{k: (chosen.ckpt if v == "planner" and chosen else v) for k, v in change.items()})
        t = step_seconds(kind, cfg.model, cfg.mask, clips, world, s, gpu)
        step = sum(t.values())
        rows.append({"change": label, "ckpt": s.ckpt, "step_s": step, "clips_per_s": clips / step,
                     "mfu": clips / step * flops / (gpu["bf16"] * 1e12), "parts_s": t})
    return {"kind": kind, "recipe": recipe, "gpu": gpu["name"], "world": world, "clips_per_gpu": clips,
            "train_tflop_per_clip": flops / 1e12, "rows": rows}


PRETRAIN_CHANGES = [("as shipped", {}), ("+ TF32 decoder matmuls", {"decoder_matmul": "tf32"}),
                    ("+ cuDNN attention first (Hopper)", {"attention": "cudnn"}),
                    ("+ matmul cube embedding, target on kept tokens",
                     {"matmul_embed": True, "target_kept_only": True}),
                    ("+ checkpointing from the planner", {"ckpt": "planner"}),
                    ("+ BF16 gradients, 5e7-element buckets", {"comm_bytes": 2, "bucket": 5e7})]
FINETUNE_CHANGES = [("as shipped", {}), ("+ one cast into and out of the trunk", {"cast": "model"}),
                    ("+ cuDNN attention first (Hopper)", {"attention": "cudnn"}),
                    ("+ matmul cube embedding", {"matmul_embed": True}),
                    ("+ checkpointing from the planner", {"ckpt": "planner"}),
                    ("+ BF16 gradients, 5e7-element buckets", {"comm_bytes": 2, "bucket": 5e7})]


def markdown(result: dict) -> str:
    head = (f"{result['kind']} ({result['recipe']}), {result['clips_per_gpu']} clips per GPU, {result['world']} "
            f"GPUs, {result['gpu']}, {result['train_tflop_per_clip']:.2f} TFLOP per clip")
    lines = [head, "", "| change (cumulative) | act. ckpt | step s | clips/s per GPU | MFU | largest parts (s) |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        top = sorted(r["parts_s"].items(), key=lambda kv: -kv[1])[:3]
        parts = ", ".join(f"{k} {v:.3f}" for k, v in top)
        lines.append(f"| {r['change']} | {r['ckpt']} | {r['step_s']:.3f} | {r['clips_per_s']:.0f} | "
                     f"{100 * r['mfu']:.0f}% | {parts} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gpu", choices=sorted(GPUS), default="h100")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    results = [table("pretrain", "launch/recipes/pretrain_vitg_hybrid.yaml", 64, args.gpu, PRETRAIN_CHANGES),
               table("finetune", "launch/recipes/finetune_vitg_k400.yaml", 32, args.gpu, FINETUNE_CHANGES)]
    if args.json:
        print(json.dumps({"util": UTIL, "gpu": GPUS[args.gpu], "tables": results}, indent=1))
    else:
        print("\n\n".join(markdown(r) for r in results))
        print("\nassumed utilisation: " + ", ".join(f"{k} {v:.0%}" for k, v in UTIL.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
