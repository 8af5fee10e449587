"""Engine pieces that need no process group: JSON+recipe merge, param groups,
activation checkpointing, the precision policy's dtypes, the FP16 loss scaler, checkpoint lookup."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from giant.config import load_config
from giant.engine import checkpoint as ck
from giant.engine.deepspeed import apply_activation_checkpointing, param_groups, set_lr_wd
from giant.engine.ds_config import load_ds_json, merge_ds_config
from giant.engine.precision import DynamicLossScaler, LossScaleConfig, apply_precision
from giant.errors import CheckpointError, ConfigError
from giant.masking import MaskGenerator, token_grid
from giant.models import build_model
from giant.models import resolve as resolve_model

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.name=tiny", "model.img_size=32", "model.num_frames=4", "mask.ratio=0.5"]


# ----------------------------------------------------------------------------- JSON + recipe
def test_shipped_ds_configs_merge_with_every_recipe():
    for recipe in sorted((REPO / "launch/recipes").glob("*.yaml")):
        cfg = load_config(recipe)
        for path in sorted((REPO / "ds_configs").glob("*.json")):
            ds, _ = merge_ds_config(load_ds_json(path), cfg, 2, path.name)
            micro = cfg.optim.batch_size * cfg.data.num_sample
            assert ds["train_micro_batch_size_per_gpu"] == micro
            assert ds["train_batch_size"] == micro * cfg.optim.accum_steps * 2
            assert ds["gradient_clipping"] == float(cfg.optim.clip_grad or 0.0)
            assert ds["fp16"] == {"enabled": False} and ds["bf16"] == {"enabled": False}


def test_json_contradicting_recipe_names_both_values():
    cfg = load_config(None, ["optim.batch_size=2", "data.num_sample=2"])
    with pytest.raises(ConfigError) as err:
        merge_ds_config({"train_micro_batch_size_per_gpu": 8}, cfg, 1, "ds_configs/zero2.json")
    msg = str(err.value)
    assert "ds_configs/zero2.json: train_micro_batch_size_per_gpu=8" in msg
    assert "optim.batch_size×data.num_sample=4" in msg and "remove it from the JSON" in msg
    with pytest.raises(ConfigError, match="gradient_clipping=1.0 but recipe optim.clip_grad=0.02"):
        merge_ds_config({"gradient_clipping": 1.0}, load_config(None, ["optim.clip_grad=0.02"]), 1, "x.json")
    # equal values are fine, "auto" is filled
    ds, _ = merge_ds_config({"gradient_accumulation_steps": 3, "train_batch_size": "auto"},
                            load_config(None, ["optim.accum_steps=3"]), 2, "x.json")
    assert ds["train_batch_size"] == 2 * 4 * 3 * 2


@pytest.mark.parametrize("ds, match", [
    ({"optimizer": {"type": "AdamW"}}, "'optimizer' is set in the JSON but the recipe owns it"),
    ({"scheduler": {"type": "WarmupLR"}}, "'scheduler' is set in the JSON"),
    ({"bf16": {"enabled": True}}, "bf16.enabled=true but recipe precision.encoder=fp16"),
    ({"fp16": {"enabled": False}}, "fp16.enabled=false but recipe precision.encoder=fp16"),
    ({"torch_autocast": {"enabled": True}}, "torch_autocast.enabled=true would autocast the decoder"),
    ({"fp16": {"auto_cast": True}}, "fp16.auto_cast=true"),
    ({"fp16": {"loss_scale_windw": 10}}, "fp16.loss_scale_windw is not supported"),
    ({"zero_optimization": {"stage": 2, "compute_grad_norm": False}}, "compute_grad_norm=false but recipe"),
])
def test_bad_ds_json_errors(ds, match):
    with pytest.raises(ConfigError, match=match):
        merge_ds_config(ds, load_config(None, ["precision.encoder=fp16"]), 1, "x.json")


def test_missing_or_invalid_json(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_ds_json(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{stage: 2")
    with pytest.raises(ConfigError, match="bad.json: invalid JSON"):
        load_ds_json(tmp_path / "bad.json")


def test_fp16_section_configures_the_loss_scaler():
    ds, scale = merge_ds_config({"fp16": {"enabled": "auto", "initial_scale_power": 12, "hysteresis": 1}},
                                load_config(None, ["precision.encoder=fp16"]), 1, "x.json")
    assert (scale.initial_scale_power, scale.hysteresis) == (12, 1)
    assert ds["giant"]["loss_scaling"]["initial_scale_power"] == 12 and ds["fp16"] == {"enabled": False}


# ----------------------------------------------------------------------------- param groups
def test_param_groups_no_decay_and_layer_decay():
    model = build_model(load_config(None, TINY).model, "pretrain")
    groups = param_groups(model, 0.05)
    by_wd = {g["wd_scale"]: g for g in groups}
    decayed = {id(p) for p in by_wd[1.0]["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    for pid, name in names.items():
        p = dict(model.named_parameters())[name]
        expect_decay = p.ndim > 1 and name not in ("mask_token",)
        assert (pid in decayed) == expect_decay, name
    assert sum(g["num_params"] for g in groups) == sum(p.numel() for p in model.parameters())

    assert model.num_layers == 2  # tiny encoder depth; the model names its own layers
    assert model.layer_id("encoder.patch_embed.proj.weight") == 0
    assert model.layer_id("mask_token") == 0
    assert model.layer_id("encoder.blocks.0.attn.qkv.weight") == 1
    assert model.layer_id("encoder.blocks.1.mlp.fc1.weight") == 2
    assert model.layer_id("encoder.norm.weight") == 3
    assert model.layer_id("decoder.blocks.0.norm1.weight") == 3
    groups = param_groups(model, 0.05, layer_decay=0.5)
    scales = {g["lr_scale"] for g in groups}
    assert scales == {0.5 ** 3, 0.5 ** 2, 0.5, 1.0}

    opt = torch.optim.AdamW(groups, lr=1.0)
    set_lr_wd(opt, 1e-3, 0.1)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(1e-3 * g["lr_scale"])
        assert g["weight_decay"] == pytest.approx(0.1 * g["wd_scale"])


# ----------------------------------------------------------------------------- model wrappers
def _batch(cfg, seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    mc = resolve_model(cfg.model)
    x = torch.randn(n, 3, mc.num_frames, mc.img_size, mc.img_size, generator=g)
    enc, dec = MaskGenerator(cfg.mask, token_grid(mc)).batch(n, g)
    return x, enc, dec


def test_activation_checkpointing_keeps_keys_and_gradients():
    cfg = load_config(None, TINY)
    x, enc, dec = _batch(cfg)
    grads, keys = [], []
    for mode in ("off", "all", "first:1"):
        torch.manual_seed(0)
        model = build_model(cfg.model, "pretrain")
        wrapped = apply_activation_checkpointing(model, mode)
        assert wrapped == {"off": 0, "all": 3, "first:1": 1}[mode]  # tiny: 2 encoder + 1 decoder block
        keys.append(list(model.state_dict()))
        model(x, enc, dec).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert keys[0] == keys[1] == keys[2]
    torch.testing.assert_close(grads[1], grads[0])
    torch.testing.assert_close(grads[2], grads[0])
    with pytest.raises(ConfigError, match="has only 2 blocks"):
        apply_activation_checkpointing(build_model(cfg.model, "pretrain"), "first:3")


def _dtypes(model, x, enc, dec) -> dict:
    seen = {}
    mods = {"enc_attn_proj": model.encoder.blocks[0].attn.proj, "enc_fc1": model.encoder.blocks[0].mlp.fc1,
            "enc_out": model.encoder, "enc_to_dec": model.encoder_to_decoder,
            "dec_fc1": model.decoder.blocks[0].mlp.fc1, "dec_head": model.decoder.head}

    def record(key):
        def hook(_mod, _inp, out):
            seen.setdefault(key, out.dtype)  # returns None: the output is left alone
        return hook

    hooks = [m.register_forward_hook(record(k)) for k, m in mods.items()]
    out = model(x, enc, dec)
    for h in hooks:
        h.remove()
    return {**seen, "pred": out.pred.dtype, "loss": out.loss.dtype}


def test_bf16_policy_encoder_low_decoder_fp32():
    cfg = load_config(None, TINY + ["precision.encoder=bf16"])
    x, enc, dec = _batch(cfg)
    model = build_model(cfg.model, "pretrain")
    keys = list(model.state_dict())
    apply_precision(model, "bf16", "cpu")
    apply_precision(model, "bf16", "cpu")  # idempotent
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a caller's autocast must not leak in
        d = _dtypes(model, x, enc, dec)
    assert d["enc_attn_proj"] == d["enc_fc1"] == torch.bfloat16  # encoder matmuls in bf16
    assert d["enc_out"] == torch.float32  # handed to the decoder in fp32
    assert d["enc_to_dec"] == d["dec_fc1"] == d["dec_head"] == d["pred"] == d["loss"] == torch.float32
    assert list(model.state_dict()) == keys
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master params stay fp32


# ----------------------------------------------------------------------------- loss scaler
def test_dynamic_loss_scaler():
    s = DynamicLossScaler(LossScaleConfig(initial_scale_power=4, loss_scale_window=3, hysteresis=2,
                                          min_loss_scale=2))
    assert s.scale == 16
    s.update(True)  # hysteresis absorbs the first overflow
    assert s.scale == 16 and s.overflows == 1
    s.update(True)
    assert s.scale == 8
    for _ in range(3):
        s.update(False)
    assert s.scale == 16  # grown after a clean window
    for _ in range(10):
        s.update(True)
    assert s.scale == 2  # floor
    state = s.state_dict()
    t = DynamicLossScaler(LossScaleConfig())
    t.load_state_dict(state)
    assert t.state_dict() == state
    static = DynamicLossScaler(LossScaleConfig(loss_scale=128))
    static.update(True)
    assert static.scale == 128


# ----------------------------------------------------------------------------- checkpoint lookup
def _fake_ckpt(root: Path, step: int, complete: bool = True, **meta) -> Path:
    d = root / ck.tag_for(step)
    d.mkdir(parents=True)
    if complete:
        (d / ck.META).write_text(json.dumps({"step": step, **meta}))
    return d


def test_latest_skips_incomplete_and_partial_saves(tmp_path):
    root = tmp_path / "checkpoints"
    assert ck.latest_tag(root) is None
    _fake_ckpt(root, 2)
    _fake_ckpt(root, 4)
    (root / ".tmp_step_00000006").mkdir()  # a save that crashed before its rename
    (root / "latest").write_text("step_00000004")
    assert ck.latest_tag(root) == "step_00000004"
    _fake_ckpt(root, 8, complete=False)  # crashed after rename but before meta? never visible
    (root / "latest").write_text("step_00000008")
    assert ck.latest_tag(root) == "step_00000004"
    (root / "latest").unlink()
    assert ck.latest_tag(root) == "step_00000004"
    mgr = ck.CheckpointManager(root, keep_last=1)
    mgr._prune(keep="step_00000004")
    assert [t for _, t in ck.list_checkpoints(root)] == ["step_00000004"]
    assert not (root / ".tmp_step_00000006").exists()
    assert mgr.find("never") is None
    assert mgr.find("auto") == (root, "step_00000004")
    assert mgr.find(str(tmp_path)) == (root, "step_00000004")
    assert mgr.find(str(root / "step_00000004")) == (root, "step_00000004")
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        mgr.find(str(tmp_path / "elsewhere"))


def test_a_damaged_checkpoint_is_skipped_for_an_older_intact_one(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    for step in (2, 4):
        torch.save({"w": torch.ones(1000)}, _fake_ckpt(root, step) / "mp_rank_00_model_states.pt")
    (root / "latest").write_text("step_00000004")
    mgr = ck.CheckpointManager(root)
    assert ck.verify_files(root / "step_00000004") is None
    shard = root / "step_00000004" / "mp_rank_00_model_states.pt"
    shard.write_bytes(shard.read_bytes()[:-200])  # a storage fault after the commit
    assert ck.verify_files(root / "step_00000004").startswith(f"{shard}: damaged")
    assert mgr.find("auto") == (root, "step_00000002")
    assert "skipping checkpoint" in caplog.text and str(shard) in caplog.text
    assert mgr.find(str(tmp_path)) == (root, "step_00000002")
    with pytest.raises(CheckpointError, match="damaged"):  # named explicitly: no silent substitute
        mgr.find(str(root / "step_00000004"))
    other = root / "step_00000002" / "mp_rank_00_model_states.pt"
    other.write_bytes(b"")
    with pytest.raises(CheckpointError, match="every complete checkpoint is damaged"):
        mgr.find("auto")  # never a silent fresh start over a long run


def test_wrong_model_is_a_checkpoint_error_another_world_size_is_not(caplog):
    meta = {"model": {"name": "tiny", "depth": 2}, "world_size": 2, "zero_stage": 2, "kind": "pretrain",
            "global_batch_clips": 64}
    ck.check_compatible(meta, dict(meta), Path("c"))
    with pytest.raises(CheckpointError, match="model.depth: checkpoint 2 vs recipe 4"):
        ck.check_compatible(meta, {**meta, "model": {"name": "tiny", "depth": 4}}, Path("c"))
    ck.check_compatible(meta, {**meta, "world_size": 4}, Path("c"))  # re-sharded (test_pretrain_reshard)
    assert "global batch" not in caplog.text
    ck.check_compatible(meta, {**meta, "world_size": 4, "global_batch_clips": 128}, Path("c"))
    assert "global batch of 64 clips, this run has 128" in caplog.text and "optim.accum_steps" in caplog.text
    with pytest.raises(CheckpointError, match="unreadable"):
        ck.read_meta(Path("/nonexistent"))


# ----------------------------------------------------------------------------- batch source
class _Items(torch.utils.data.Dataset):
    def __len__(self):
        return 5

    def __getitem__(self, i):
        return i


def _loader():
    from giant.data import ResumableDistributedSampler, make_loader

    sampler = ResumableDistributedSampler(5, 0, 1, seed=3)
    return make_loader(_Items(), sampler, 2, 0, lambda xs: {"index": torch.tensor(xs)})


def test_epoch_batches_skip_short_batches_and_resume():
    from giant.data import set_loader_epoch
    from giant.engine.loop import EpochBatches

    src = EpochBatches(_loader(), on_epoch=set_loader_epoch, full_batch=2)
    seq = [next(src)["index"].tolist() for _ in range(7)]
    assert all(len(b) == 2 for b in seq)  # 5 items per epoch: the single leftover is skipped
    assert {x for b in seq[:2] for x in b} < set(range(5))

    replay = EpochBatches(_loader(), on_epoch=set_loader_epoch, full_batch=2)
    for _ in range(3):
        next(replay)
    resumed = EpochBatches(_loader(), on_epoch=set_loader_epoch, full_batch=2)
    resumed.load_state_dict(replay.state_dict())
    assert [next(resumed)["index"].tolist() for _ in range(4)] == seq[3:]


def test_pretrain_command_line(monkeypatch):
    from giant.commands.pretrain import parse_args

    monkeypatch.setenv("LOCAL_RANK", "0")  # recorded, so the value parse_args sets is undone
    monkeypatch.delenv("LOCAL_RANK")
    cfg = parse_args(["optim.blr=2e-3", "--recipe", str(REPO / "launch/recipes/demo_pretrain.yaml"),
                      "--local_rank=1", "model.depth=3", "--ds", "ds_configs/zero3.json"])
    assert (cfg.optim.blr, cfg.model.depth, cfg.engine.ds_config) == (2e-3, 3, "ds_configs/zero3.json")
    assert cfg.model.name == "tiny"  # from the recipe
    import os

    assert os.environ["LOCAL_RANK"] == "1"
    with pytest.raises(ConfigError, match="unknown key"):
        parse_args(["optim.bogus=1"])
