"""The memory planner (giant/memory.py): its activation model against the bytes autograd really
saves (saved_tensors_hooks over the real giant models, scaled-down S/B/L/g shapes), ZeRO model
states, the fastest-setting search, the command, the pipeline warning and the recipes' choice."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from giant.config import MaskConfig, ModelConfig, load_config
from giant.engine.deepspeed import apply_activation_checkpointing
from giant.engine.precision import apply_precision
from giant.masking import MaskGenerator, token_grid
from giant.memory import (GIB, Policy, Stage, Zero, block_bytes, candidates, classifier_activations, evaluate,
                          fit_warning, largest_batch, model_states, plan, pretrain_activations, stage_from_config)
from giant.models import build_model
from giant.models import resolve as resolve_model

REPO = Path(__file__).resolve().parents[1]
# S/B/L widths and heads divided by 4 (head dim 16) and g's own head dim 88 and MLP ratio 48/11,
# on 4 frames at 64 px (56 px for patch 14): 32 (16) tokens, so each forward takes milliseconds.
SIZES = {
    "s": dict(embed_dim=96, depth=2, num_heads=6, decoder_embed_dim=48, decoder_depth=1, decoder_num_heads=3),
    "b": dict(embed_dim=192, depth=3, num_heads=12, decoder_embed_dim=96, decoder_depth=1, decoder_num_heads=6),
    "l": dict(embed_dim=256, depth=3, num_heads=16, decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=8),
    "g": dict(embed_dim=176, depth=2, num_heads=2, mlp_ratio=48 / 11, decoder_embed_dim=64, decoder_depth=2,
              decoder_num_heads=2, decoder_mlp_ratio=48 / 11, patch_size=14, img_size=56),
}
MASK = MaskConfig(ratio=0.75)  # 4 of 16 positions per slice visible: 8 tokens to the encoder
CLIPS = 3


def model_cfg(size: str, **extra) -> ModelConfig:
    fields = {"name": "tiny", "img_size": 64, "num_frames": 4, **SIZES[size], **extra}
    return resolve_model(ModelConfig(**fields))


def saved_bytes(model: torch.nn.Module, *inputs: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for backward, parameters, buffers and the
    inputs excepted (those exist anyway and are counted elsewhere by the planner)."""
    skip = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers(), *inputs]}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(*inputs)  # the graph (and so every saved storage) lives while `out` does
    assert out is not None
    return sum(storages.values())


def cpu_policy(precision: str, cast: str = "block", matmul_embed: bool = False) -> Policy:
    low = 4 if precision == "fp32" else 2
    return Policy(low=low, norm_fp32=False, classifier_stream=4 if cast == "block" else low,
                  matmul_embed=matmul_embed)


def measured_pretrain(cfg: ModelConfig, precision: str, ckpt: str) -> int:
    torch.manual_seed(0)
    model = build_model(cfg, "pretrain")
    apply_precision(model, precision, "cpu")
    apply_activation_checkpointing(model, ckpt)
    enc, dec = MaskGenerator(MASK, token_grid(cfg)).batch(CLIPS, torch.Generator().manual_seed(0))
    video = torch.randn(CLIPS, 3, cfg.num_frames, cfg.img_size, cfg.img_size)
    return saved_bytes(model, video, enc, dec)


def measured_classifier(cfg: ModelConfig, precision: str, ckpt: str, cast: str = "block") -> int:
    torch.manual_seed(0)
    model = build_model(cfg, "classifier").train()
    apply_precision(model, precision, "cpu", cast)
    apply_activation_checkpointing(model, ckpt)
    return saved_bytes(model, torch.randn(CLIPS, 3, cfg.num_frames, cfg.img_size, cfg.img_size))


def within(planned: int, measured: int, tol: float = 0.05) -> bool:
    return abs(planned - measured) <= tol * measured


@pytest.mark.parametrize("ckpt", ["off", "all", "first:1"])
@pytest.mark.parametrize("size", sorted(SIZES))
def test_pretrain_activations_match_the_saved_tensors(size, ckpt):
    cfg = model_cfg(size)
    planned = pretrain_activations(cfg, MASK, CLIPS, ckpt, cpu_policy("fp32")).saved
    measured = measured_pretrain(cfg, "fp32", ckpt)
    assert within(planned, measured), (planned, measured)


@pytest.mark.parametrize("ckpt", ["off", "all", "first:1"])
@pytest.mark.parametrize("size", sorted(SIZES))
def test_classifier_activations_match_the_saved_tensors(size, ckpt):
    cfg = model_cfg(size, num_classes=7, drop_path_rate=0.1, head_drop_rate=0.5)
    planned = classifier_activations(cfg, CLIPS, ckpt, cpu_policy("fp32")).saved
    measured = measured_classifier(cfg, "fp32", ckpt)
    assert within(planned, measured), (planned, measured)


@pytest.mark.parametrize("ckpt", ["off", "all"])
@pytest.mark.parametrize("size", ["b", "g"])
def test_low_precision_scaling_matches_bf16_autocast(size, ckpt):
    """BF16 under CPU autocast: 2-byte matmul operands and weight copies, the residual stream in
    BF16 (whole-encoder autocast; a classifier cast once per model) or FP32 (cast per block)."""
    cfg = model_cfg(size, num_classes=7, drop_path_rate=0.1)
    pre = pretrain_activations(cfg, MASK, CLIPS, ckpt, cpu_policy("bf16"))
    assert within(pre.saved, measured_pretrain(cfg, "bf16", ckpt))
    for cast in ("block", "model"):
        planned = classifier_activations(cfg, CLIPS, ckpt, cpu_policy("bf16", cast)).saved
        assert within(planned, measured_classifier(cfg, "bf16", ckpt, cast)), cast
    # the planner's BF16 numbers really differ from its FP32 ones (the comparison above has teeth)
    fp32 = pretrain_activations(cfg, MASK, CLIPS, ckpt, cpu_policy("fp32"))
    assert pre.blocks < 0.9 * fp32.blocks and (pre.weights_saved > 0 == fp32.weights_saved)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_matmul_cube_embedding_is_modelled(monkeypatch, precision):
    """GPUs embed with one matmul on a reordered copy of the clip (models/vit.py); forced onto
    the CPU here, its saved copy is what the GPU policy counts."""
    import giant.models.vit as vit

    monkeypatch.setattr(vit, "MATMUL_EMBED_DEVICES", ("cuda", "cpu"))
    cfg = model_cfg("s", num_classes=7)
    policy = cpu_policy(precision, matmul_embed=True)
    assert within(pretrain_activations(cfg, MASK, CLIPS, "off", policy).saved, measured_pretrain(cfg, precision, "off"))
    assert within(classifier_activations(cfg, CLIPS, "all", policy).saved, measured_classifier(cfg, precision, "all"))


def test_cuda_autocast_adds_fp32_layernorm_copies():
    """CUDA autocast runs LayerNorm in FP32 (CPU autocast does not): each norm saves a 4-byte copy
    of its low-precision input, the only difference between the GPU and CPU activation models."""
    n, d, hid, heads = 208, 1408, 6144, 16
    gpu, cpu = (block_bytes(n, d, hid, heads, 2, 2, norm_fp32) for norm_fp32 in (True, False))
    assert gpu - cpu == 2 * n * d * (4 - 2)
    assert block_bytes(n, d, hid, heads, 4, 4, True) == block_bytes(n, d, hid, heads, 4, 4, False)
    cfg = resolve_model(ModelConfig(name="vit_g"))
    k = 208  # tube 0.9 at 16×224: 26 of 256 positions × 8 slices
    g_pol, c_pol = Policy(2, True, 2, True), Policy(2, False, 2, True)
    diff = pretrain_activations(cfg, MaskConfig(), 1, "off", g_pol).saved - \
        pretrain_activations(cfg, MaskConfig(), 1, "off", c_pol).saved
    assert diff == (cfg.depth * 2 + 1) * k * cfg.embed_dim * 2  # every block's two norms + the final norm


def test_model_states_follow_the_zero_stage():
    p, w = 1_000_000, 4
    buckets = dict(reduce_bucket=1000, overlap_comm=False)
    s0, _ = model_states(p, Zero(stage=0, **buckets), w)
    s1, _ = model_states(p, Zero(stage=1, **buckets), w)
    s2, _ = model_states(p, Zero(stage=2, **buckets), w)
    s3, _ = model_states(p, Zero(stage=3, max_live=0, **buckets), w)
    assert (s0["parameters"], s0["gradients"], s0["optimizer"]) == (4 * p, 4 * p, 8 * p)
    assert (s1["gradients"], s1["optimizer"]) == (4 * p + 4 * p // w, 12 * p // w)  # FP32 master clone
    assert (s2["parameters"], s2["gradients"]) == (4 * p, 4 * p // w)
    assert (s3["parameters"], s3["optimizer"]) == (4 * p // w, 8 * p // w)  # master shared with the shard
    gpu, host = model_states(p, Zero(stage=3, offload_optimizer=True, offload_param=True, max_live=0), w)
    assert gpu["optimizer"] == gpu["parameters"] == 0 and host["optimizer"] == 12 * p // w
    z = Zero.from_json({"zero_optimization": {"stage": 2, "overlap_comm": True, "reduce_bucket_size": 5e7},
                        "communication_data_type": "bf16"})
    assert model_states(p, z, w)[0]["zero buffers"] == int(5e7) * (4 * 2 + 2)  # two FP32 buckets + one BF16 cast


def vitg_stage(**over) -> Stage:
    overrides = [f"{k}={v}" for k, v in over.items()]
    cfg = load_config(REPO / "launch/recipes/pretrain_vitg_hybrid.yaml", overrides)
    return stage_from_config(cfg, "pretrain", 8, "ds_configs/zero2.json")


def test_fastest_setting_is_the_least_recomputation_that_fits():
    stage = vitg_stage()
    off, full = evaluate(stage, "off"), evaluate(stage, "all")
    assert full.peak < off.peak and full.recompute > 0 == off.recompute
    budget = (off.peak + full.peak) / 2 / GIB
    result = plan(stage, budget)
    chosen = result.fastest.ckpt
    assert chosen.startswith("first:") and result.fastest.fits(budget)
    n = int(chosen.split(":")[1])
    assert not evaluate(stage, f"first:{n - 1}" if n > 1 else "off").fits(budget)  # one less does not fit
    assert [r.ckpt for r in result.rows] == ["off", chosen, "all"]
    assert plan(stage, off.peak / GIB + 1).fastest.ckpt == "off"
    assert plan(stage, full.peak / GIB - 1).fastest is None
    assert candidates(stage)[0] == "off" and candidates(stage)[-1] == "all"


def test_largest_batch_is_the_last_that_fits():
    stage, budget = vitg_stage(), 79.6
    best = largest_batch(stage, "all", budget)
    assert best > 1
    assert evaluate(stage, "all", best).fits(budget) and not evaluate(stage, "all", best + 1).fits(budget)


def test_fit_warning_names_the_setting_that_fits():
    stage = vitg_stage(**{"engine.activation_checkpointing": "off"})
    text = fit_warning(stage, 79.6)
    assert "activation_checkpointing=off" in text and "engine.activation_checkpointing=first:" in text
    assert fit_warning(vitg_stage(**{"engine.activation_checkpointing": "all"}), 79.6) is None
    assert "lower optim.batch_size (" in fit_warning(stage, 20.0)
    assert "even one video per GPU does not fit" in fit_warning(stage, 8.0)


def test_distill_counts_the_teacher():
    cfg = load_config(REPO / "launch/recipes/distill_vitg_to_vitb_k710.yaml", [])
    stage = stage_from_config(cfg, None, 8)
    assert stage.kind == "distill" and stage.teacher is not None and stage.teacher.name == "vit_g"
    teacher = evaluate(stage, "off").gpu["teacher weights"]
    assert 1.9e9 < teacher < 2.2e9  # ViT-g's ~1.01 B backbone parameters in BF16


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    from giant.cli import main

    rc = main(list(argv))
    got = capsys.readouterr()
    return rc, got.out, got.err


def test_command_prints_the_breakdown_and_the_choice(capsys):
    rc, text, _ = run_cli(capsys, "memory", "--recipe", "launch/recipes/pretrain_vitg_hybrid.yaml",
                          "--gpu-mem", "79.6", "--max-batch")
    assert rc == 0
    for word in ("activations", "optimizer", "peak", "fastest that fits 79.6 GiB", "max videos/GPU", "/dev/shm"):
        assert word in text
    rc, text, _ = run_cli(capsys, "memory", "--recipe", "launch/recipes/pretrain_vitg_hybrid.yaml",
                          "--zero", "1,2,3", "--batch", "8,16", "--gpu-mem", "79.6,140.4")
    assert rc == 0 and len([ln for ln in text.splitlines() if ln[:2] in ("1 ", "2 ", "3 ")]) == 6


def test_command_errors_are_one_line(capsys):
    rc, _, err = run_cli(capsys, "memory", "--recipe", "launch/recipes/pretrain_vitg_hybrid.yaml", "--gpu-mem", "lots")
    assert rc == 2 and err.startswith("giant memory: error: --gpu-mem 'lots'") and "Traceback" not in err
    rc, _, err = run_cli(capsys, "memory", "--recipe", "launch/recipes/demo_pretrain_maest.yaml")
    assert rc == 2 and "model.arch=maest" in err


VITG_RECIPES = sorted(p.name for p in (REPO / "launch/recipes").glob("*vitg*.yaml"))


@pytest.mark.parametrize("name", VITG_RECIPES)
def test_vitg_recipes_checkpoint_as_the_planner_chooses(name):
    """Each ViT-g recipe's engine.activation_checkpointing is the planner's fastest setting that
    fits an 80 GB GPU (8 ranks: fewer shards than the recipes' 16-64, so a little conservative)."""
    cfg = load_config(REPO / "launch/recipes" / name, [])
    result = plan(stage_from_config(cfg, None, 8), 79.6)
    assert result.fastest is not None, f"{name}: nothing fits 79.6 GiB"
    assert cfg.engine.activation_checkpointing == result.fastest.ckpt, (
        f"{name}: set engine.activation_checkpointing: {result.fastest.ckpt} "
        f"(giant memory --recipe launch/recipes/{name})")


def test_classifier_policy_follows_precision_cast():
    cfg = load_config(REPO / "launch/recipes/finetune_vitg_k400.yaml", [])
    stage = stage_from_config(cfg, "finetune", 8)
    per_model = evaluate(stage, "all").gpu["activations"]
    per_block = evaluate(dataclasses.replace(stage, cfg=dataclasses.replace(
        cfg, precision=dataclasses.replace(cfg.precision, cast="block"))), "all").gpu["activations"]
    assert per_block > 1.5 * per_model  # checkpointed blocks keep an FP32 instead of a BF16 input


def test_pipeline_plan_warns_about_stages_that_will_not_fit(capsys, monkeypatch):
    from giant.commands.pipeline import main

    monkeypatch.chdir(REPO)
    assert main(["plan", "launch/pipelines/vitg_k400.yaml", "--gpu-mem", "12"]) == 0
    text = capsys.readouterr().out
    assert "  pretrain: needs ~" in text and "more than 12 GiB" in text
    assert main(["plan", "launch/pipelines/vitg_k400.yaml", "--gpu-mem", "79.6"]) == 0
    assert main(["plan", "launch/pipelines/vitg_k400.yaml"]) == 0
    assert "needs ~" not in capsys.readouterr().out  # the shipped recipes fit 80 GB; no flag, no check
