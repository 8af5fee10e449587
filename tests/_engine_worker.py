"""2-rank DeepSpeed worker for tests/test_engine_distributed.py (run under torchrun, gloo).

One process group, many engines in sequence (each DeepSpeed init costs seconds, a launch far
more): ZeRO-1/2/3/3-offload agreement in FP32 (ZeRO-3 with activation checkpointing), gradient
accumulation equivalence, BF16 dtypes through the engine, FP16 loss scaling with overflow skips,
and checkpoint save → ZeRO-3 export → plain model. Tiny random tensors: pure engine numerics.
Writes one JSON of results (rank 0) to argv[1]; argv[2] is a scratch directory.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import deepspeed
import torch

from giant.config import load_config, to_dict
from giant.engine.checkpoint import CheckpointManager
from giant.engine.deepspeed import build_engine, construct_model, init_distributed, load_state
from giant.engine.export import export_weights
from giant.engine.loop import LoopHooks, train_loop
from giant.interop import load_weights
from giant.masking import MaskGenerator, token_grid
from giant.models import build_model
from giant.models import resolve as resolve_model

OUT, SCRATCH = Path(sys.argv[1]), Path(sys.argv[2])
BASE = ["model.name=tiny", "model.img_size=32", "model.num_frames=4", "mask.ratio=0.5",
        "data.num_sample=1", "optim.lr=2e-3", "optim.warmup_steps=1", "optim.total_steps=3",
        "optim.clip_grad=1.0", "stage.device=cpu", "precision.encoder=fp32"]


def data(cfg, rank: int, step: int, n: int):
    """The same per-(rank, step) samples whatever the micro-batch split."""
    mc = resolve_model(cfg.model)
    g = torch.Generator().manual_seed(1000 * rank + step)
    x = torch.randn(n, 3, mc.num_frames, mc.img_size, mc.img_size, generator=g)
    enc, dec = MaskGenerator(cfg.mask, token_grid(mc)).batch(n, g)
    return x, enc, dec


def batches(cfg, rank: int, per_step: int):
    micro, step = cfg.optim.batch_size, 0
    while True:
        x, enc, dec = data(cfg, rank, step, per_step)
        for i in range(0, per_step, micro):
            yield {"x": x[i:i + micro], "enc": enc[i:i + micro], "dec": dec[i:i + micro]}
        step += 1


def full_params(engine) -> dict:
    params = dict(engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
        return {k: p.detach().clone().float() for k, p in params.items()}


def train(overrides: list, per_step: int = 4, ds_json=None, track: bool = False):
    cfg = load_config(None, BASE + overrides + ([f"engine.ds_config={ds_json}"] if ds_json else []))
    rank, _, _, device = init_distributed(cfg)
    torch.manual_seed(0)
    model = construct_model(cfg, resolve_model(cfg.model), "pretrain")  # ZeRO-3: zero.Init
    built_partitioned = all(hasattr(p, "ds_id") and p.numel() == 0 for p in model.parameters())
    # the dtype zero.Init gave the parameters and their shards (DeepSpeed's _set_dtype bug built
    # BF16 on CPUs without oneDNN fp16, see construct_model)
    built_dtypes = sorted({str(t.dtype) for p in model.parameters() for t in (p, getattr(p, "ds_tensor", p))})
    engine, info = build_engine(model, cfg, device)
    info.built_partitioned, info.built_dtypes = built_partitioned, built_dtypes
    init = full_params(engine)
    rows = []
    def log_step(step: int, scalars: dict) -> None:
        if track:  # ZeRO-1/2 keep full params on every rank: a cheap fingerprint per step
            scalars["param_sum"] = sum(p.double().abs().sum().item() for p in engine.module.parameters())
        rows.append(dict(scalars))

    hooks = LoopHooks(save=lambda step: None, log_step=log_step)
    step_fn = lambda eng, b: (lambda out: (out.loss, out))(eng(b["x"], b["enc"], b["dec"]))  # noqa: E731
    train_loop(engine, info.optim, batches(cfg, rank, per_step), step_fn, info.loss_scaler, hooks,
               0, device, fp16=cfg.precision.encoder == "fp16")
    return cfg, engine, info, rows, init


def partitioned(name: str) -> str:
    """The shipped ZeRO-3 JSON with every parameter partitioned: at the default persistence
    threshold (1e5 elements) the whole tiny model would stay replicated and test nothing."""
    ds = json.loads(Path(f"ds_configs/{name}.json").read_text())
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path = SCRATCH / f"{name}_p0.json"
    if torch.distributed.get_rank() == 0:
        path.write_text(json.dumps(ds))
    torch.distributed.barrier()
    return str(path)


def agreement(res: dict) -> None:
    runs = {"zero1": (["optim.batch_size=4"], "ds_configs/zero1.json"),
            "zero2": (["optim.batch_size=4"], "ds_configs/zero2.json"),
            "zero3_ckpt_all": (["optim.batch_size=4", "engine.activation_checkpointing=all"], partitioned("zero3")),
            "zero3_offload": (["optim.batch_size=4"], partitioned("zero3_offload")),
            # 2 micro-batches of 2 per step ≡ one batch of 4 (V1 decoder: equal token counts per clip)
            "accum_2x2": (["optim.batch_size=2", "optim.accum_steps=2", "mask.decoder=none"], "ds_configs/zero2.json"),
            "accum_1x4": (["optim.batch_size=4", "mask.decoder=none"], "ds_configs/zero2.json")}
    params = {}
    for name, (over, ds) in runs.items():
        cfg, engine, info, rows, _ = train(over, ds_json=ds)
        res[name] = {"losses": [r["loss"] for r in rows], "grad_norms": [r.get("grad_norm") for r in rows],
                     "zero_stage": info.zero_stage, "train_batch_size": info.ds_config["train_batch_size"]}
        params[name] = full_params(engine)
        res[name]["partitioned"] = all(p.numel() == 0 for p in engine.module.parameters()) \
            if info.zero_stage == 3 else None
        res[name]["built_partitioned"] = info.built_partitioned  # never materialised in full
        res[name]["built_dtypes"] = info.built_dtypes
        if name == "zero3_ckpt_all":
            export_check(res, engine, info, cfg, params[name])
    for a, b in (("zero1", "zero2"), ("zero1", "zero3_ckpt_all"), ("zero1", "zero3_offload"),
                 ("accum_1x4", "accum_2x2")):
        res[f"maxdiff_{a}_{b}"] = max((params[a][k] - params[b][k]).abs().max().item() for k in params[a])


def export_check(res: dict, engine, info, cfg, gathered: dict) -> None:
    """ZeRO-3 checkpoint → weights.safetensors without a process group → plain model."""
    mgr = CheckpointManager(SCRATCH / "z3" / "checkpoints", keep_last=1)
    meta = {"kind": "pretrain", "model": {"name": "tiny"}, "model_full": to_dict(resolve_model(cfg.model)),
            "world_size": info.world_size, "zero_stage": info.zero_stage}
    mgr.save(engine, 3, {"step": 3}, meta)
    if torch.distributed.get_rank() == 0:
        export_weights(mgr.root, SCRATCH / "z3")
        state, model_json = load_weights(SCRATCH / "z3")
        plain = build_model(cfg.model, "pretrain")
        plain.load_state_dict(state, strict=True)
        res["export"] = {"num_tensors": len(state), "kind": model_json["kind"],
                         "maxdiff": max((plain.state_dict()[k] - gathered[k]).abs().max().item() for k in gathered)}
    torch.distributed.barrier()
    # checkpoint.init_from into a model built partitioned (zero.Init): one gathered module at a time
    state, _ = load_weights(SCRATCH / "z3")
    model = construct_model(cfg, resolve_model(cfg.model), "pretrain")
    missing, unexpected = load_state(model, state)
    params = dict(model.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
        diff = max((p.detach() - state[k]).abs().max().item() for k, p in params.items())
    if torch.distributed.get_rank() == 0:
        res["zero3_init_from"] = {"missing": missing, "unexpected": unexpected, "maxdiff": diff,
                                  "partitioned": all(p.numel() == 0 for p in params.values())}


def precision(res: dict) -> None:
    seen = {}

    def record(key):
        def hook(_m, _i, out):
            seen.setdefault(key, str(out.dtype))
        return hook

    cfg = load_config(None, BASE + ["precision.encoder=bf16", "optim.batch_size=2"])
    rank, _, _, device = init_distributed(cfg)
    torch.manual_seed(0)
    model = build_model(cfg.model, "pretrain")
    engine, _ = build_engine(model, cfg, device)
    m = engine.module
    for key, mod in {"enc_fc1": m.encoder.blocks[0].mlp.fc1, "enc_attn_proj": m.encoder.blocks[0].attn.proj,
                     "enc_to_dec": m.encoder_to_decoder, "dec_fc1": m.decoder.blocks[0].mlp.fc1,
                     "dec_head": m.decoder.head}.items():
        mod.register_forward_hook(record(key))
    x, enc, dec = data(cfg, rank, 0, 2)
    out = engine(x, enc, dec)
    engine.backward(out.loss)
    engine.step()
    res["bf16_dtypes"] = {**seen, "loss": str(out.loss.dtype),
                          "param_dtypes": sorted({str(p.dtype) for p in m.parameters()})}


def fp16(res: dict) -> None:
    """FP16 encoder (CPU autocast fp16) + giant's scaler inside ZeRO-2: sane scale trains like
    FP32; an absurd initial scale overflows, every rank skips the same steps, then recovers."""
    _, _, _, rows, _ = train(["precision.encoder=fp16", "optim.batch_size=4"], ds_json="ds_configs/zero2.json")
    res["fp16_losses"] = [r["loss"] for r in rows]
    res["fp16_scales"] = [r["loss_scale"] for r in rows]
    path = SCRATCH / "zero2_huge_scale.json"
    ds = json.loads(Path("ds_configs/zero2.json").read_text())
    ds["fp16"].update(initial_scale_power=30, hysteresis=1)
    if torch.distributed.get_rank() == 0:
        path.write_text(json.dumps(ds))
    torch.distributed.barrier()
    _, engine, _, rows, init = train(["precision.encoder=fp16", "optim.batch_size=4", "optim.total_steps=12",
                                      "optim.warmup_steps=0"], ds_json=str(path), track=True)
    res["overflow"] = {"skipped": [r["skipped_steps"] for r in rows], "scales": [r["loss_scale"] for r in rows],
                       "has_grad_norm": ["grad_norm" in r for r in rows],
                       "param_sums": [r["param_sum"] for r in rows],
                       "init_sum": sum(p.double().abs().sum().item() for p in init.values()),
                       "final_changed": max((full_params(engine)[k] - init[k]).abs().max().item() for k in init)}


def main() -> None:
    res: dict = {}
    init_distributed(load_config(None, BASE))
    agreement(res)
    precision(res)
    fp16(res)
    if torch.distributed.get_rank() == 0:
        OUT.write_text(json.dumps(res, indent=1))
    torch.distributed.barrier()


if __name__ == "__main__":
    main()
