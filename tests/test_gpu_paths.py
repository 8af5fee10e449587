"""The CUDA paths, checked on a CPU (issue 19): device index under one GPU per task, the current
device's RNG only, the matmul cube embedding against nn.Conv3d, the /dev/shm estimate, fused
AdamW and its step tensors, TF32 and the SDPA priority, one cast per low-precision trunk, the
target on kept tokens, the peak table, BF16 communication, rank 0's resume tag, Slurm threads.

torch.cuda is patched where a device count or name is needed; nothing here needs a GPU, and on
the CPU every one of these paths is a no-op or exactly equal (checked)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from giant.config import ModelConfig, RunConfig, dump_config, load_config
from giant.engine import checkpoint as ck
from giant.engine import deepspeed as gd
from giant.engine import ds_config as gdc
from giant.engine import kernels
from giant.engine.metrics import peak_for_name, peak_tflops
from giant.engine.precision import apply_precision, resolve_cast
from giant.errors import CheckpointError, ConfigError, DataError
from giant.models import vit
from giant.models import resolve as resolve_model

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- 1. device index
@pytest.mark.parametrize("local_rank,visible,requested,want", [
    (5, 1, "cuda", 0),   # one GPU per task: every rank's device is 0
    (0, 1, "cuda", 0),
    (3, 8, "cuda", 3),   # all of the node's GPUs visible (torchrun): the local rank
    (7, 8, "cuda", 7),
    (2, 4, "cuda:1", 1),  # the recipe names it
])
def test_device_index_from_the_local_rank_within_the_visible_devices(local_rank, visible, requested, want):
    assert gd.local_device_index(local_rank, visible, requested) == want


def test_a_local_rank_beyond_several_visible_devices_is_an_error_naming_the_binding(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    with pytest.raises(ConfigError, match=r"LOCAL_RANK=5 but this process sees 4 GPUs \(CUDA_VISIBLE_DEVICES=4,5,6,7\)"
                                          r".*--gpus-per-task=1"):
        gd.local_device_index(5, 4)
    with pytest.raises(ConfigError, match=r"stage.device='cuda:2'.*sees 1 CUDA device"):
        gd.local_device_index(0, 1, "cuda:2")


def _fake_cuda(monkeypatch, count: int) -> list:
    chosen: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)  # no process group started
    monkeypatch.setattr(torch.distributed, "get_rank", lambda *a, **k: 3)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a, **k: 8)
    return chosen


def test_one_gpu_per_task_ranks_use_device_0_and_deepspeed_is_told_so(monkeypatch):
    """Slurm's --gpus-per-task=1: rank 3 (SLURM_LOCALID 3) sees one device, index 0. DeepSpeed
    reads LOCAL_RANK as the device index (engine set_device, zero.Init): it must read 0."""
    chosen = _fake_cuda(monkeypatch, count=1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "3")
    cfg = load_config(None, ["stage.device=cuda"])
    rank, world, local_rank, device = gd.init_distributed(cfg)
    assert (rank, world, local_rank) == (3, 8, 3)
    assert device == torch.device("cuda", 0) and chosen == [0]
    assert os.environ["LOCAL_RANK"] == "0" and os.environ["OMPI_COMM_WORLD_LOCAL_RANK"] == "0"


def test_all_gpus_visible_keeps_the_local_rank(monkeypatch):
    chosen = _fake_cuda(monkeypatch, count=8)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "3")
    _, _, _, device = gd.init_distributed(load_config(None, ["stage.device=cuda"]))
    assert device == torch.device("cuda", 3) and chosen == [3] and os.environ["LOCAL_RANK"] == "3"


# ----------------------------------------------------------------------------- 1. RNG state
def test_rng_file_holds_the_current_device_only_and_loads_weights_only(monkeypatch, tmp_path):
    mine = torch.arange(16, dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": mine)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("saved every device's state"))
    torch.save(ck.rng_state(), tmp_path / "rng.pt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "rng.pt") == []
    state = torch.load(tmp_path / "rng.pt", weights_only=True)  # no allow-list needed
    assert torch.equal(state["cuda"], mine)
    restored: list = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": restored.append(s))
    ck.set_rng_state(state)
    assert len(restored) == 1 and torch.equal(restored[0], mine)


def test_an_older_rng_file_with_every_devices_state_still_loads(monkeypatch, tmp_path):
    np.random.seed(3)
    import random

    random.seed(4)
    torch.manual_seed(5)
    states = [torch.full((16,), i, dtype=torch.uint8) for i in range(2)]
    old = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
           "cuda": states}  # what giant wrote before: numpy's ndarray state, every device's CUDA state
    torch.save(old, tmp_path / "rng_rank00000.pt")
    draws = (np.random.rand(), random.random(), torch.rand(1).item())
    restored: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": restored.append(s))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    ck.set_rng_state(ck.read_rng_state(tmp_path / "rng_rank00000.pt"))  # weights_only, numpy allowed
    assert (np.random.rand(), random.random(), torch.rand(1).item()) == draws
    assert len(restored) == 1 and torch.equal(restored[0], states[1])  # this rank's device
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # now one GPU per task
    ck.set_rng_state(ck.read_rng_state(tmp_path / "rng_rank00000.pt"))
    assert len(restored) == 1  # other visibility: the fresh per-rank seed stays


# ----------------------------------------------------------------------------- 2. cube embedding
def _conv_and_embed(monkeypatch, matmul: bool):
    torch.manual_seed(0)
    conv = nn.Conv3d(3, 96, kernel_size=(2, 16, 16), stride=(2, 16, 16))
    embed = vit.PatchEmbed3D(3, 96, 16, 2)
    embed.load_state_dict({"proj." + k: v for k, v in conv.state_dict().items()}, strict=True)
    if matmul:
        monkeypatch.setattr(vit, "MATMUL_EMBED_DEVICES", ("cuda", "cpu"))
    return conv, embed


def test_matmul_cube_embedding_equals_the_conv3d_outputs_gradients_and_keys(monkeypatch):
    conv, embed = _conv_and_embed(monkeypatch, matmul=True)
    assert set(embed.state_dict()) == {"proj.weight", "proj.bias"}
    assert isinstance(embed.proj, nn.Conv3d)  # the released checkpoints' module and key names
    x1 = torch.randn(2, 3, 8, 64, 48, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    want = conv(x1).flatten(2).transpose(1, 2)
    got = embed(x2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(want)
    want.backward(grad)
    got.backward(grad)
    torch.testing.assert_close(embed.proj.weight.grad, conv.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(embed.proj.bias.grad, conv.bias.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # it really is the matmul: a different rounding from the Conv3d
        assert not torch.equal(embed(x2), conv(x2).flatten(2).transpose(1, 2))


def test_a_vit_built_with_the_matmul_embedding_loads_conv_weights_and_agrees(monkeypatch):
    torch.manual_seed(0)
    cfg = ModelConfig(name="tiny", img_size=32, num_frames=4, patch_size=8)
    ref = vit.VideoViT(cfg)
    state = ref.state_dict()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        want = ref(x)
    monkeypatch.setattr(vit, "MATMUL_EMBED_DEVICES", ("cuda", "cpu"))
    model = vit.VideoViT(cfg)
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-5)


def test_cpu_keeps_the_conv3d_bit_for_bit_and_an_uneven_input_falls_back(monkeypatch):
    conv, embed = _conv_and_embed(monkeypatch, matmul=False)
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(embed(x), conv(x).flatten(2).transpose(1, 2))
        monkeypatch.setattr(vit, "MATMUL_EMBED_DEVICES", ("cuda", "cpu"))
        odd = torch.randn(1, 3, 5, 40, 32)  # the Conv3d drops the rest; embed() then names the size
        assert torch.equal(embed(odd), conv(odd).flatten(2).transpose(1, 2))


# ----------------------------------------------------------------------------- 3. /dev/shm
Usage = namedtuple("Usage", "total used free")
GIB = 2 ** 30


def test_shared_memory_estimate_names_the_settings_to_change(monkeypatch):
    from giant.data import loader

    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(64 * GIB, 56 * GIB, 8 * GIB))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    batch = loader.clip_item_bytes(4, 3, 16, 224, 2 * 2048) * 32  # ViT-g pre-training: 32 videos × 4 clips
    assert batch == 32 * 4 * (3 * 16 * 224 * 224 + 8 * 4096)  # ~0.3 GB, ~50 GB for 8 ranks × 10 workers × 2
    with pytest.raises(DataError, match=r"about \d+\.\d GiB of shared memory .* data.num_workers=10 × "
                                        r"data.prefetch_factor=2 × 8 rank\(s\) on this node\) and /dev/shm has "
                                        r"8.0 GiB free: set data.num_workers=0 .* or data.prefetch_factor=1"):
        loader.check_shared_memory(batch, 10, 2)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(512 * GIB, 0, 60 * GIB))
    warned = loader.check_shared_memory(batch, 10, 2)  # fits, but past half of the free space
    assert warned and "set data.num_workers=6 or data.prefetch_factor=1" in warned
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert loader.check_shared_memory(batch, 2, 2) is None


def test_make_loader_checks_before_any_worker_starts(monkeypatch):
    from giant.data import loader

    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(GIB, GIB, 1000))
    monkeypatch.setattr(loader.TimeoutNamingDataLoader, "__init__", lambda *a, **k: pytest.fail("built"))
    with pytest.raises(DataError, match="data.num_workers=0"):
        loader.make_loader(list(range(4)), None, 2, 2, list, item_bytes=10 ** 6)


# ----------------------------------------------------------------------------- persistent workers
class _EpochItems(torch.utils.data.Dataset):
    def __init__(self):
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        return (self.epoch, i, os.getpid())


def test_persistent_workers_keep_their_process_and_see_every_epoch():
    from giant.data.loader import make_loader, set_loader_epoch

    loader = make_loader(_EpochItems(), None, 2, 2, list, persistent=True)
    seen = {}
    for epoch in range(3):
        set_loader_epoch(loader, epoch)
        items = [item for batch in loader for item in batch]
        assert [(e, i) for e, i, _ in items] == [(epoch, i) for i in range(4)]
        seen[epoch] = {pid for _, _, pid in items}
    assert seen[0] == seen[1] == seen[2] and os.getpid() not in seen[0]  # the same two workers
    assert len(loader.dataset) == 4 and loader.dataset.epoch == 2


def test_persistent_workers_are_on_by_default_and_recorded(tmp_path):
    cfg = load_config(None, [])
    assert cfg.data.persistent_workers is True and cfg.data.prefetch_factor == 2
    with pytest.raises(ConfigError, match="data.prefetch_factor=0"):
        load_config(None, ["data.prefetch_factor=0"])


# ----------------------------------------------------------------------------- 4. fused AdamW
def test_fused_adamw_is_requested_on_gpus_only():
    assert gd.adamw_fused(torch.device("cuda", 0), offload=False) is True
    assert gd.adamw_fused(torch.device("cuda", 0), offload=True) is False  # DeepSpeedCPUAdam then
    assert gd.adamw_fused(torch.device("cpu"), offload=False) is False
    optim = load_config(None, ["optim.lr=1e-3"]).optim
    groups = [{"params": [nn.Parameter(torch.zeros(3))]}]
    assert gd._build_optimizer(groups, optim, torch.device("cuda", 0), False).defaults["fused"] is True
    groups = [{"params": [nn.Parameter(torch.zeros(3))]}]
    assert not gd._build_optimizer(groups, optim, torch.device("cpu"), False).defaults["fused"]


def test_step_tensors_are_moved_where_fused_adamw_needs_them():
    on_gpu = torch.zeros(3, device="meta")  # stands in for a CUDA parameter: another device
    plain = torch.zeros(3)
    opt = SimpleNamespace(
        param_groups=[{"params": [on_gpu], "fused": True}, {"params": [plain], "fused": False}],
        state={on_gpu: {"step": torch.tensor(7.0, dtype=torch.float64)}, plain: {"step": 7}})
    assert gd.match_step_tensors(opt) == 2
    step = opt.state[on_gpu]["step"]
    assert step.device.type == "meta" and step.dtype == torch.float32
    assert torch.is_tensor(opt.state[plain]["step"]) and float(opt.state[plain]["step"]) == 7.0
    assert gd.match_step_tensors(opt) == 0  # already right: left alone


def test_a_load_leaves_the_optimizer_as_this_run_built_it():
    """DeepSpeed's loads copy the saved param-group settings over the live ones: a checkpoint
    written on a CPU (fused=False) must not turn a GPU run's fused AdamW off."""
    p = nn.Parameter(torch.zeros(3))
    inner = torch.optim.AdamW([p], fused=True)
    engine = SimpleNamespace(optimizer=SimpleNamespace(optimizer=inner))

    def load_checkpoint(path, tag=None):
        inner.param_groups[0].update(fused=False, lr=0.5)  # what the universal load does
        inner.state[p] = {"step": torch.tensor(3.0, dtype=torch.float64), "exp_avg": torch.zeros(3),
                          "exp_avg_sq": torch.zeros(3)}
        return path, {"step": 3}

    engine.load_checkpoint = load_checkpoint
    gd._match_steps_after_load(engine)
    assert engine.load_checkpoint("dir", tag="t") == ("dir", {"step": 3})
    assert inner.param_groups[0]["fused"] is True and inner.param_groups[0]["lr"] == 0.5  # training state kept
    assert inner.state[p]["step"].dtype == torch.float32
    p.grad = torch.ones(3)
    inner.step()  # the fused kernel takes the restored state
    assert float(inner.state[p]["step"]) == 4.0


# ----------------------------------------------------------------------------- TF32, SDPA
@pytest.fixture
def fp32_matmul():
    saved = torch.backends.cuda.matmul.fp32_precision
    yield
    torch.backends.cuda.matmul.fp32_precision = saved


def test_decoder_matmul_tf32_is_set_on_gpus_and_nowhere_else(fp32_matmul, tmp_path):
    cfg = load_config(None, [])
    assert cfg.precision.decoder_matmul == "tf32"
    dump_config(cfg, tmp_path / "config.yaml")
    assert "decoder_matmul: tf32" in (tmp_path / "config.yaml").read_text()
    before = torch.backends.cuda.matmul.fp32_precision
    assert kernels.set_fp32_matmul("tf32", "cpu") is None
    assert torch.backends.cuda.matmul.fp32_precision == before
    assert kernels.set_fp32_matmul("tf32", "cuda") == "tf32" == torch.backends.cuda.matmul.fp32_precision
    assert kernels.set_fp32_matmul("fp32", "cuda") == "ieee" == torch.backends.cuda.matmul.fp32_precision
    with pytest.raises(ConfigError, match="precision.decoder_matmul='bf16': use tf32 or fp32"):
        load_config(None, ["precision.decoder_matmul=bf16"])


def test_attention_priority_per_gpu_generation(monkeypatch):
    assert kernels.attention_priority("auto", "cpu") is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert kernels.attention_priority("auto", "cuda") == ["cudnn", "flash", "efficient", "math"]
    assert kernels.attention_priority("flash,math", "cuda") == ["flash", "math", "cudnn", "efficient"]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert kernels.attention_priority("auto", "cuda") is None  # Ampere: torch's order, flash first
    with pytest.raises(ConfigError, match="engine.attention_backends='cudnn,fast'"):
        load_config(None, ["engine.attention_backends=cudnn,fast"])


def test_blocks_run_under_the_priority_in_forward_and_in_the_recomputation(monkeypatch, fp32_matmul):
    """The engine's GPU set-up on a Hopper (capability patched), run on the CPU: the priority is
    in force inside every block, also when activation checkpointing recomputes it."""
    from giant.models import build_model
    from torch.nn.attention import SDPBackend

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    cfg = load_config(None, ["model.img_size=32", "model.num_frames=4", "model.patch_size=8",
                             "precision.encoder=fp32", "engine.activation_checkpointing=all"])
    model = build_model(resolve_model(cfg.model), "pretrain")
    gd._device_kernels(model, cfg, torch.device("cuda"))  # GPU set-up; the tensors stay on the CPU
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    gd.apply_activation_checkpointing(model, "all")
    seen: list = []
    for blk in [*model.encoder.blocks, *model.decoder.blocks]:
        blk.attn.register_forward_pre_hook(lambda m, a: seen.append(torch._C._get_sdp_priority_order()[:2]))
    outside = torch._C._get_sdp_priority_order()
    from giant.masking import MaskGenerator, token_grid

    enc, dec = MaskGenerator(cfg.mask, token_grid(resolve_model(cfg.model))).batch(2, torch.Generator().manual_seed(0))
    model(torch.randn(2, 3, 4, 32, 32), enc, dec).loss.backward()
    cudnn_first = [int(SDPBackend.CUDNN_ATTENTION), int(SDPBackend.FLASH_ATTENTION)]
    blocks = len(model.encoder.blocks) + len(model.decoder.blocks)
    assert seen == [cudnn_first] * (2 * blocks)  # forward + recomputation
    assert torch._C._get_sdp_priority_order() == outside  # restored after each block


# ----------------------------------------------------------------------------- one cast per trunk
def _classifier():
    from giant.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(name="tiny", img_size=32, num_frames=4, patch_size=8, num_classes=5)
    return build_model(resolve_model(cfg), "classifier")


def _block_dtypes(model, x) -> tuple[list, torch.Tensor]:
    dtypes: list = []
    hooks = [b.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype)) for b in model.blocks]
    with torch.no_grad():
        out = model(x)
    for h in hooks:
        h.remove()
    return dtypes, out


def test_the_classifier_casts_once_into_and_out_of_its_low_precision_trunk():
    x = torch.randn(2, 3, 4, 32, 32)
    assert resolve_cast("auto", "cuda") == "model" and resolve_cast("auto", "cpu") == "block"
    once = apply_precision(_classifier(), "bf16", "cpu", cast="model")
    dtypes, out_once = _block_dtypes(once, x)
    assert dtypes == [torch.bfloat16] * (len(dtypes) - 1) + [torch.float32]  # one cast out, at the end
    per_block = apply_precision(_classifier(), "bf16", "cpu", cast="block")
    dtypes, out_block = _block_dtypes(per_block, x)
    assert dtypes == [torch.float32] * len(dtypes)
    assert out_once.dtype == out_block.dtype == torch.float32
    torch.testing.assert_close(out_once, out_block, rtol=0.1, atol=0.02)
    auto_on_cpu = apply_precision(_classifier(), "bf16", "cpu")  # the CPU default: as before
    assert torch.equal(_block_dtypes(auto_on_cpu, x)[1], out_block)
    fp32 = _classifier()
    assert torch.equal(_block_dtypes(apply_precision(_classifier(), "fp32", "cpu", cast="model"), x)[1],
                       _block_dtypes(fp32, x)[1])


def test_the_teacher_casts_once_too():
    from giant.stages.teacher import freeze_teacher, teacher_logits

    x = torch.randn(2, 3, 4, 32, 32)
    once = freeze_teacher(_classifier(), "bf16", torch.device("cpu"), cast="model")
    dtypes, _ = _block_dtypes(once, x)
    assert dtypes == [torch.bfloat16] * (len(dtypes) - 1) + [torch.float32]
    per_block = freeze_teacher(_classifier(), "bf16", torch.device("cpu"))  # auto on a CPU: block
    assert _block_dtypes(per_block, x)[0] == [torch.float32] * len(dtypes)
    torch.testing.assert_close(teacher_logits(once, x), teacher_logits(per_block, x), rtol=0.1, atol=0.02)


# ----------------------------------------------------------------------------- target on kept tokens
def test_target_on_the_kept_tokens_gives_the_same_loss_bit_for_bit():
    from giant.masking import MaskGenerator, token_grid
    from giant.models import build_model
    from giant.models.mae import masked_token_mse, patchify
    from giant.models.vit import gather_tokens

    torch.manual_seed(0)
    cfg = load_config(None, ["model.img_size=64", "model.num_frames=8"])
    mc = resolve_model(cfg.model)
    model = build_model(mc, "pretrain")
    x = torch.randn(3, 3, 8, 64, 64)
    enc, dec = MaskGenerator(cfg.mask, token_grid(mc)).batch(3, torch.Generator().manual_seed(1))
    tok = patchify(model.pixels(x), mc.patch_size, mc.tubelet_size)  # the former path: all tokens, then gather
    full = ((tok - tok.mean(-2, keepdim=True)) / (tok.var(-2, unbiased=True, keepdim=True).sqrt() + 1e-6)).flatten(2)
    assert torch.equal(model.target(x), full)
    assert torch.equal(model.target(x, dec), gather_tokens(full, dec))
    with torch.no_grad():
        out = model(x, enc, dec)
        old, _ = masked_token_mse(out.pred, gather_tokens(full, dec), enc, dec, model.encoder.num_tokens)
    assert torch.equal(out.loss, old)


# ----------------------------------------------------------------------------- MFU peak
@pytest.mark.parametrize("name,low,tf32", [
    ("NVIDIA H100 80GB HBM3", 989.4, 494.7), ("NVIDIA H100 PCIe", 756.5, 378.0),
    ("NVIDIA H100 NVL", 835.5, 417.5), ("NVIDIA H200", 989.4, 494.7), ("NVIDIA H200 NVL", 835.5, 417.5),
    ("NVIDIA A100-SXM4-80GB", 312.0, 156.0), ("NVIDIA A100 80GB PCIe", 312.0, 156.0)])
def test_the_dense_peak_follows_the_gpu_model(monkeypatch, name, low, tf32):
    monkeypatch.delenv("GIANT_PEAK_TFLOPS", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_tflops("cuda", "bf16") == low and peak_tflops("cuda", "fp32") == tf32
    assert peak_for_name("NVIDIA Unknown 9000") is None and peak_tflops("cpu") is None


# ----------------------------------------------------------------------------- BF16 communication
@pytest.mark.parametrize("name", ["zero1", "zero2", "zero3", "zero3_offload"])
def test_shipped_configs_communicate_in_bf16_with_buckets_for_a_1b_model(name):
    ds = json.loads((REPO / "ds_configs" / f"{name}.json").read_text())
    zero = ds["zero_optimization"]
    assert ds["communication_data_type"] == "bf16"
    assert 2e7 <= zero["reduce_bucket_size"] <= 1e8  # 10-50 buckets for ViT-g's 1B: overlap with backward
    assert zero.get("allgather_bucket_size", 2e8) <= 2e8


def test_bf16_communication_is_for_gpus_with_bf16(monkeypatch):
    ds = {"communication_data_type": "bf16", "zero_optimization": {"stage": 2}}
    assert "communication_data_type" not in gdc.fit_to_device(ds, torch.device("cpu"), 8)  # CPU stays exact
    monkeypatch.setattr(gdc, "cuda_bf16", lambda device: True)
    assert gdc.fit_to_device(ds, torch.device("cuda", 0), world_size=8) == ds
    assert "communication_data_type" not in gdc.fit_to_device(ds, torch.device("cuda", 0), world_size=1)
    monkeypatch.setattr(gdc, "cuda_bf16", lambda device: False)  # a V100
    assert "communication_data_type" not in gdc.fit_to_device(ds, torch.device("cuda", 0), world_size=8)
    merged, _ = gdc.merge_ds_config(gdc.load_ds_json("ds_configs/zero2.json"), load_config(None, []), 2, "zero2.json")
    assert merged["communication_data_type"] == "bf16"


# ----------------------------------------------------------------------------- resume tag on rank 0
def _checkpoints(root: Path, *steps: int) -> None:
    for step in steps:
        (root / ck.tag_for(step)).mkdir(parents=True)
        (root / ck.tag_for(step) / ck.META).write_text(json.dumps({"step": step}))


def _fake_group(monkeypatch, rank: int, reply=None) -> list:
    sent: list = []

    def broadcast(objects, src=0):
        assert src == 0
        if rank == 0:
            sent.append(list(objects))
        else:
            objects[:] = [reply]

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a, **k: 4)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda *a, **k: rank)
    monkeypatch.setattr(torch.distributed, "broadcast_object_list", broadcast)
    return sent


def test_rank_0_chooses_the_resume_tag_and_the_others_open_nothing(monkeypatch, tmp_path):
    root = tmp_path / "checkpoints"
    _checkpoints(root, 2, 4)
    sent = _fake_group(monkeypatch, rank=0)
    assert ck.CheckpointManager(root).find("auto") == (root, "step_00000004")
    assert sent == [[("ok", (root, "step_00000004"))]]
    _fake_group(monkeypatch, rank=2, reply=("ok", (root, "step_00000002")))
    monkeypatch.setattr(ck, "_newest_intact", lambda *a: pytest.fail("a rank other than 0 looked"))
    monkeypatch.setattr(ck, "verify_files", lambda *a: pytest.fail("a rank other than 0 opened files"))
    assert ck.CheckpointManager(root).find("auto") == (root, "step_00000002")  # rank 0's word


def test_rank_0s_error_reaches_every_rank(monkeypatch, tmp_path):
    sent = _fake_group(monkeypatch, rank=0)
    with pytest.raises(CheckpointError, match="no complete checkpoint there"):
        ck.CheckpointManager(tmp_path / "checkpoints").find(str(tmp_path / "elsewhere"))
    assert sent[0][0][0] == "error" and "no complete checkpoint there" in sent[0][0][1]
    _fake_group(monkeypatch, rank=1, reply=sent[0][0])
    with pytest.raises(CheckpointError, match="no complete checkpoint there"):
        ck.CheckpointManager(tmp_path / "checkpoints").find(str(tmp_path / "elsewhere"))


# ----------------------------------------------------------------------------- Slurm threads
@pytest.mark.parametrize("cpus,preset,want", [("12", None, "12"), (None, None, "1"), ("12", "3", "3")])
def test_threads_follow_the_cpus_slurm_grants(tmp_path, cpus, preset, want):
    root = tmp_path / "giant"
    shutil.copytree(REPO / "launch" / "slurm", root / "launch" / "slurm")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "scontrol").write_text("#!/usr/bin/env bash\necho node1\n")
    (tmp_path / "bin" / "scontrol").chmod(0o755)
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "GIANT_ROOT": str(root), "SLURM_JOB_ID": "7",
           "SLURM_JOB_NODELIST": "node1", "HOME": str(tmp_path),
           **({"SLURM_CPUS_PER_TASK": cpus} if cpus else {}), **({"OMP_NUM_THREADS": preset} if preset else {})}
    out = subprocess.run(["bash", "-c", f". {root}/launch/slurm/env.sh && echo $OMP_NUM_THREADS"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == want


def test_new_settings_are_recorded_with_the_run(tmp_path):
    dump_config(RunConfig(), tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    for line in ("decoder_matmul: tf32", "cast: auto", "attention_backends: auto", "prefetch_factor: 2",
                 "persistent_workers: true"):
        assert line in text
