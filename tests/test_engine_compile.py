"""engine.compile: every transformer block is torch.compile'd in place from the engine layer
(official state-dict keys kept), composes with the precision policy and activation
checkpointing, and trains to the same numbers as eager; ZeRO-3 is refused up front."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from _launch import tail, torchrun
from giant.config import load_config
from giant.engine.deepspeed import apply_activation_checkpointing, apply_compile
from giant.engine.ds_config import check_ds_config
from giant.engine.precision import apply_precision
from giant.errors import ConfigError
from giant.masking import MaskGenerator, token_grid
from giant.models import build_model
from giant.models import resolve as resolve_model


def _tiny():
    cfg = load_config("launch/recipes/demo_pretrain.yaml", ["model.num_frames=4", "model.depth=6",
                                                             "model.decoder_depth=3"])
    mcfg = resolve_model(cfg.model)
    torch.manual_seed(0)
    return cfg, mcfg, build_model(mcfg, "pretrain")


def test_compiled_blocks_keep_keys_and_match_eager_under_the_engine_wrappers():
    cfg, mcfg, eager = _tiny()
    compiled = copy.deepcopy(eager)
    for m in (eager, compiled):  # the order build_engine applies them in
        apply_precision(m, "bf16", "cpu")
        apply_activation_checkpointing(m, "all")
    torch._dynamo.reset()
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert apply_compile(compiled, backend="aot_eager") == mcfg.depth + mcfg.decoder_depth
    assert list(compiled.state_dict()) == list(eager.state_dict())

    g = torch.Generator().manual_seed(1)
    enc, dec = MaskGenerator(cfg.mask, token_grid(mcfg)).batch(3, g)
    video = torch.randn(3, 3, mcfg.num_frames, mcfg.img_size, mcfg.img_size, generator=g)
    outs = []
    for m in (eager, compiled):
        out = m(video, enc, dec)
        out.loss.backward()
        outs.append((out.loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    # dynamo really compiled, and 9 blocks gave one graph for the encoder and one for the
    # decoder: a graph per block would exhaust the recompile limit on ViT-g and fall back to eager
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - before == 2
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-6)
    for name, grad in outs[0][1].items():
        torch.testing.assert_close(outs[1][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_zero3_with_compile_is_refused_before_start():
    cfg = load_config("launch/recipes/demo_pretrain.yaml",
                      ["engine.compile=true", "engine.ds_config=ds_configs/zero3.json"])
    with pytest.raises(ConfigError, match="ZeRO-3 with recipe engine.compile=true"):
        check_ds_config(cfg, 2)


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").open())]


@pytest.mark.slow
def test_inductor_compiled_training_matches_eager_on_two_ranks(synth_videos, tmp_path):
    """The real backend (C++ kernels on CPU) through DeepSpeed ZeRO-2 with checkpointing."""
    args = ["--ds", "ds_configs/zero2.json", "--recipe", "launch/recipes/demo_pretrain.yaml",
            f"data.manifest={synth_videos.train_manifest}", "model.img_size=32", "model.patch_size=8",
            "model.num_frames=4", "data.sampling_rate=2", "data.num_sample=1", "data.num_workers=0",
            "optim.batch_size=2", "optim.total_steps=3", "optim.warmup_steps=1", "precision.encoder=fp32",
            "engine.activation_checkpointing=all", "checkpoint.every_steps=0", "logging.image_every=0",
            "logging.progress=false"]
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["engine.compile=true"])):
        proc = torchrun("launch/pretrain.py", *args, f"stage.run_dir={tmp_path / name}", *extra)
        assert proc.returncode == 0, tail(proc)
        runs[name] = proc.stdout + proc.stderr
    assert "torch.compile (inductor): 3 blocks" in runs["compiled"]
    assert "torch.compile" not in runs["eager"]
    assert _losses(tmp_path / "compiled") == pytest.approx(_losses(tmp_path / "eager"), rel=1e-4)
