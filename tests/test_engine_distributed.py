"""2 CPU ranks (gloo), one launch: ZeRO-1/2/3/3-offload agree in FP32, accumulation
equivalence, BF16 dtypes through the engine, FP16 loss scaling with overflow skips, and a
ZeRO-3 checkpoint exported without a process group loads into a plain model.
See tests/_engine_worker.py for what runs inside."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from _launch import tail, torchrun

pytestmark = pytest.mark.slow  # multi-process DeepSpeed runs (pyproject.toml markers)


SHM = Path("/dev/shm")


def _shm_files() -> set:
    return {p.name for p in SHM.glob("deepspeed_*")} if SHM.is_dir() else set()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    d = tmp_path_factory.mktemp("engine")
    before = _shm_files()
    proc = torchrun("tests/_engine_worker.py", str(d / "out.json"), str(d))
    assert proc.returncode == 0, tail(proc)
    return {**json.loads((d / "out.json").read_text()), "new_shm": sorted(_shm_files() - before)}


def test_no_shared_memory_left_behind(results):
    """DeepSpeed's CPU shm all-reduce op maps a 69 MB /dev/shm file per rank and never
    removes it; giant does not build the op (giant/engine/deepspeed.py), so a run leaves none."""
    assert results["new_shm"] == []


def test_zero_stages_agree_in_fp32(results):
    ref = results["zero1"]
    for name in ("zero2", "zero3_ckpt_all", "zero3_offload"):
        assert results[name]["losses"] == pytest.approx(ref["losses"], rel=1e-6), name
        assert results[name]["grad_norms"] == pytest.approx(ref["grad_norms"], rel=1e-5), name
    assert [results[n]["zero_stage"] for n in ("zero1", "zero2", "zero3_ckpt_all")] == [1, 2, 3]
    assert results["zero3_ckpt_all"]["partitioned"] and results["zero3_offload"]["partitioned"]
    # ZeRO-3 builds under zero.Init (no rank ever holds the full model) and its gathered,
    # rank-0 init gives the very weights of a plain build: the final params below agree
    assert results["zero3_ckpt_all"]["built_partitioned"] and results["zero3_offload"]["built_partitioned"]
    assert not results["zero1"]["built_partitioned"] and not results["zero2"]["built_partitioned"]
    # FP32 parameters on every CPU/GPU kind, whatever DeepSpeed's accelerator reports for fp16
    for name in ("zero1", "zero2", "zero3_ckpt_all", "zero3_offload"):
        assert results[name]["built_dtypes"] == ["torch.float32"], name
    assert results["maxdiff_zero1_zero2"] < 1e-6
    assert results["maxdiff_zero1_zero3_ckpt_all"] < 1e-6  # ZeRO-3 + activation checkpointing
    assert results["maxdiff_zero1_zero3_offload"] < 1e-6
    assert ref["losses"][-1] < ref["losses"][0]


def test_gradient_accumulation_matches_one_big_batch(results):
    a, b = results["accum_2x2"], results["accum_1x4"]
    assert a["train_batch_size"] == b["train_batch_size"] == 8
    assert a["losses"] == pytest.approx(b["losses"], rel=1e-6)
    assert a["grad_norms"] == pytest.approx(b["grad_norms"], rel=1e-5)
    assert results["maxdiff_accum_1x4_accum_2x2"] < 1e-5


def test_bf16_encoder_fp32_decoder_through_the_engine(results):
    d = results["bf16_dtypes"]
    assert d["enc_fc1"] == d["enc_attn_proj"] == "torch.bfloat16"
    assert d["enc_to_dec"] == d["dec_fc1"] == d["dec_head"] == d["loss"] == "torch.float32"
    assert d["param_dtypes"] == ["torch.float32"]


def test_fp16_loss_scaling_skips_overflow_steps_on_every_rank(results):
    assert results["fp16_losses"] == pytest.approx(results["zero1"]["losses"], rel=1e-2)
    assert results["fp16_scales"] == [2.0 ** 16] * 3
    o = results["overflow"]
    skipped, scales = o["skipped"], o["scales"]
    assert skipped[0] == 1 and skipped[-1] < len(skipped)  # overflowed first, then recovered
    for i, n in enumerate(skipped):
        was_skipped = n > (skipped[i - 1] if i else 0)
        assert o["has_grad_norm"][i] == (not was_skipped)  # skipped steps report no grad norm
        if was_skipped and n == i + 1:  # every step so far skipped: weights untouched
            assert o["param_sums"][i] == pytest.approx(o["init_sum"], rel=1e-12)
    assert scales[0] == 2.0 ** 29 and scales[-1] < scales[0]
    assert o["final_changed"] > 0


def test_zero3_export_loads_into_plain_model(results):
    e = results["export"]
    assert e["num_tensors"] == 49 and e["kind"] == "pretrain"
    assert e["maxdiff"] == 0.0


def test_exported_weights_load_into_a_zero_init_model(results):
    r = results["zero3_init_from"]
    assert r["partitioned"] and r["missing"] == [] and r["unexpected"] == []
    assert r["maxdiff"] == 0.0
