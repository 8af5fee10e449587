"""GPU kernel checks for scripts/bench/gpu_check.sh; each subcommand prints one JSON object.

    python scripts/bench/gpu_kernels.py env        # GPU, driver, torch / cuDNN / DeepSpeed versions
    python scripts/bench/gpu_kernels.py sdpa       # which SDPA kernel runs at giant's shapes, and each one's cost
    python scripts/bench/gpu_kernels.py decoder    # the ViT-g decoder step in FP32 vs TF32 vs BF16
    python scripts/bench/gpu_kernels.py saved      # giant.memory's GPU activation model vs saved tensors on CUDA

Shapes are ViT-g's (head dim 88, 16 heads; decoder head dim 64) and ViT-B's at 16x224, with the
micro-batches the recipes run: pre-training 128 clips (208 visible tokens; the decoder sees
208 + 1024), fine-tuning 12 clips (2048 tokens). Times are CUDA-event medians of forward +
backward after warm-up. `--quick` cuts the repetitions (a dry run on a CPU uses tiny shapes).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # giant from this checkout
from giant.models import resolve as resolve_model

# (name, batch, heads, tokens, head dim, dtype): giant's attention calls at the recipes' batches
SHAPES = [
    ("vitg_pretrain_encoder", 128, 16, 208, 88, "fp16"),
    ("vitg_pretrain_encoder", 128, 16, 208, 88, "bf16"),
    ("vitg_pretrain_decoder", 128, 8, 1232, 64, "fp32"),
    ("vitg_pretrain_decoder", 128, 8, 1232, 64, "bf16"),
    ("vitg_finetune", 12, 16, 2048, 88, "bf16"),
    ("vitb_finetune", 16, 12, 1568, 64, "bf16"),
]
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
BACKENDS = ("cudnn", "flash", "efficient", "math")


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _time(fn, warmup: int, reps: int, device: torch.device) -> float:
    """Median milliseconds of fn() (CUDA events on a GPU, perf_counter elsewhere)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def cmd_env(_: argparse.Namespace) -> dict:
    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0]}
    try:
        import deepspeed

        out["deepspeed"] = deepspeed.__version__
    except Exception as exc:  # noqa: BLE001 - reported, the check goes on
        out["deepspeed"] = f"missing: {exc}"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=props.name, capability=list(torch.cuda.get_device_capability(0)),
                   memory_gib=props.total_memory / 2**30, sms=props.multi_processor_count,
                   cudnn=torch.backends.cudnn.version())
        from giant.engine.metrics import peak_tflops

        out["peak_tflops_bf16"] = peak_tflops(torch.device("cuda", 0), "bf16")
    return out


def _attention_kernels(fn) -> list[str]:
    """CUDA kernel names one call of fn launches (the profiler's view)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [e.key for e in prof.key_averages() if e.device_type.name == "CUDA"]
    return [n for n in names if any(k in n.lower() for k in ("attn", "attention", "fmha", "flash", "cudnn",
                                                             "sdpa", "softmax", "gemm"))][:6]


def _classify(kernels: list[str]) -> str:
    text = " ".join(kernels).lower()
    for key, name in (("cudnn", "cudnn"), ("flash", "flash"), ("fmha", "efficient"), ("efficient", "efficient"),
                      ("softmax", "math")):
        if key in text:
            return name
    return "unknown"


def _sdpa_case(b: int, h: int, n: int, d: int, dtype: torch.dtype, device: torch.device, reps: int) -> dict:
    from torch.nn.attention import sdpa_kernel

    from giant.engine.kernels import _sdpa_backend, attention_priority

    q, k, v = (torch.randn(b, h, n, d, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(b, h, n, d, device=device, dtype=dtype)

    def step():
        torch.nn.functional.scaled_dot_product_attention(q, k, v).backward(grad)

    row: dict = {"backends": {}}
    for name in BACKENDS:
        try:
            with sdpa_kernel([_sdpa_backend(name)]):
                row["backends"][name] = {"ms_fwd_bwd": _time(step, 2, reps, device)}
        except Exception as exc:  # noqa: BLE001 - a kernel that refuses the shape is a result
            row["backends"][name] = {"error": str(exc).strip().splitlines()[0][:160]}
        torch.cuda.empty_cache() if device.type == "cuda" else None
    if device.type == "cuda":
        row["torch_default"] = _classify(kernels := _attention_kernels(step))
        row["torch_default_kernels"] = kernels
        names = attention_priority("auto", device) or list(BACKENDS)
        with sdpa_kernel([_sdpa_backend(x) for x in names], set_priority=True):
            row["giant_auto"] = _classify(_attention_kernels(step))
            row["giant_auto_ms"] = _time(step, 2, reps, device)
        row["giant_auto_priority"] = names
    return row


def cmd_sdpa(args: argparse.Namespace) -> dict:
    device = _device()
    shapes = SHAPES if device.type == "cuda" else [("tiny", 2, 2, 16, 8, "fp32")]
    results = []
    for name, b, h, n, d, dt in shapes:
        case = {"shape": name, "batch": b, "heads": h, "tokens": n, "head_dim": d, "dtype": dt}
        try:
            case.update(_sdpa_case(b, h, n, d, DTYPES[dt], device, 3 if args.quick else 10))
        except Exception as exc:  # noqa: BLE001
            case["error"] = str(exc).strip().splitlines()[0][:200]
        results.append(case)
    return {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "cases": results}


def cmd_decoder(args: argparse.Namespace) -> dict:
    """ViT-g's decoder (4 blocks, width 512, 1232 tokens, head on the 1024 kept) forward +
    backward at 128 clips: true FP32, TF32 (precision.decoder_matmul=tf32) and BF16 autocast."""
    from giant.engine.kernels import attention_priority, set_fp32_matmul
    from giant.models.mae import MAEDecoder

    device = _device()
    # ViT-g's decoder on a GPU; a tiny one on a CPU (a dry run of this code, not a measurement)
    clips, tokens, kept, width, depth = (128, 1232, 1024, 512, 4) if device.type == "cuda" else (2, 40, 32, 64, 1)
    dec = MAEDecoder(width, depth, width // 64, 48 / 11, 1176, 1e-6).to(device)
    x = torch.randn(clips, tokens, width, device=device, requires_grad=True)
    rows = {}
    for mode in ("fp32", "tf32", "bf16"):
        set_fp32_matmul("fp32" if mode == "fp32" else "tf32", device)

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16"):
                out = dec(x, kept)
            out.float().square().mean().backward()

        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            ms = _time(step, 2, 3 if args.quick else 8, device)
            macs = _decoder_macs(clips, tokens, kept, width, depth)
            rows[mode] = {"ms_fwd_bwd": ms, "tflops": 6 * macs / ms / 1e9}
            if device.type == "cuda":
                rows[mode]["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        except Exception as exc:  # noqa: BLE001
            rows[mode] = {"error": str(exc).strip().splitlines()[0][:200]}
    set_fp32_matmul("tf32", device)  # giant's default
    if "fp32" in rows and "ms_fwd_bwd" in rows["fp32"]:
        for mode in ("tf32", "bf16"):
            if "ms_fwd_bwd" in rows.get(mode, {}):
                rows[mode]["speedup_vs_fp32"] = rows["fp32"]["ms_fwd_bwd"] / rows[mode]["ms_fwd_bwd"]
    return {"clips": clips, "tokens": tokens, "kept": kept, "attention_priority": attention_priority("auto", device),
            "modes": rows}


def _decoder_macs(clips: int, tokens: int, kept: int, width: int, depth: int) -> int:
    from giant.flops import block_macs

    return clips * (depth * block_macs(tokens, width, int(width * 48 / 11)) + kept * width * 1176)


def cmd_saved(args: argparse.Namespace) -> dict:
    """giant.memory's activation model with the GPU policy (FP32 LayerNorm copies, the matmul
    cube embedding, cast once per model) against saved_tensors_hooks on CUDA."""
    from giant.config import MaskConfig, ModelConfig
    from giant.engine.deepspeed import apply_activation_checkpointing
    from giant.engine.precision import apply_precision
    from giant.masking import MaskGenerator, token_grid
    from giant.memory import classifier_activations, gpu_policy, pretrain_activations
    from giant.models import build_model

    device = _device()
    if device.type != "cuda":
        return {"skipped": "needs a GPU (the CPU checks are tests/test_memory.py)"}
    cfg = resolve_model(ModelConfig(name="vit_b", num_frames=8, img_size=112, num_classes=10))
    mask, clips, rows = MaskConfig(), 4, []
    for kind in ("pretrain", "classifier"):
        for ckpt in ("off", "all"):
            model = build_model(cfg, kind).to(device).train()
            apply_precision(model, "bf16", "cuda", "auto")
            apply_activation_checkpointing(model, ckpt)
            video = torch.randn(clips, 3, cfg.num_frames, cfg.img_size, cfg.img_size, device=device)
            inputs = [video]
            if kind == "pretrain":
                enc, dec = MaskGenerator(mask, token_grid(cfg)).batch(clips, torch.Generator().manual_seed(0))
                inputs += [enc.to(device), dec.to(device)]
            measured = _saved(model, inputs)
            pol = gpu_policy("bf16", "auto")
            act = pretrain_activations(cfg, mask, clips, ckpt, pol) if kind == "pretrain" else \
                classifier_activations(cfg, clips, ckpt, pol)
            rows.append({"kind": kind, "ckpt": ckpt, "measured": measured, "planned": act.saved,
                         "ratio": act.saved / measured})
    return {"model": "vit_b 8x112, bf16, 4 clips", "rows": rows,
            "within_5pct": all(abs(r["ratio"] - 1) <= 0.05 for r in rows)}


def _saved(model: torch.nn.Module, inputs: list) -> int:
    skip = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers(), *inputs]}
    storages: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in skip:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(*inputs)
    del out
    return sum(storages.values())


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["env", "sdpa", "decoder", "saved"])
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = p.parse_args(argv)
    result = {"env": cmd_env, "sdpa": cmd_sdpa, "decoder": cmd_decoder, "saved": cmd_saved}[args.what](args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
