"""A run preempted on N ranks resumes on M ranks (DeepSpeed universal checkpoint) and continues
the same training: with one clip per micro-batch, 2 ranks × 1 and 1 rank × 2 accumulation steps
group the same clips into the same steps, so the losses must equal an uninterrupted run's."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _launch import REPO, env, run_captured, tail, torchrun
from giant.engine import checkpoint as ck, reshard
from giant.errors import CheckpointError
from giant.interop import load_weights

STEPS = 4


def _args(synth, run_dir: Path, ds: str, *extra: str) -> list[str]:
    return ["--ds", ds, "--recipe", "launch/recipes/demo_pretrain.yaml",
            f"data.manifest={synth.train_manifest}", f"stage.run_dir={run_dir}", "model.img_size=32",
            "model.patch_size=8", "model.num_frames=4", "data.sampling_rate=2", "data.num_sample=1",
            "data.num_workers=0", "optim.batch_size=1", f"optim.total_steps={STEPS}",
            "optim.warmup_steps=1", "checkpoint.every_steps=1", "precision.encoder=fp32",
            "logging.image_every=0", "logging.progress=false", *extra]


def two_ranks(synth, run_dir: Path, *extra: str, ds: str = "ds_configs/zero2.json"):
    return torchrun("launch/pretrain.py", *_args(synth, run_dir, ds, *extra))


def one_rank(synth, run_dir: Path, *extra: str, ds: str = "ds_configs/zero2.json"):
    """Half the ranks, twice the accumulation: the same global batch of the same clips."""
    return run_captured([sys.executable, "launch/pretrain.py",
                         *_args(synth, run_dir, ds, "optim.accum_steps=2", *extra)], 180, cwd=REPO, env=env())


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").open())}


def _ok(proc) -> str:
    assert proc.returncode == 0, tail(proc)
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def full(synth_videos, tmp_path_factory):
    run = tmp_path_factory.mktemp("reshard") / "full"
    _ok(two_ranks(synth_videos, run))
    return run


@pytest.mark.slow
def test_zero2_shrinks_and_grows_mid_run_and_matches_the_uninterrupted_run(synth_videos, full, tmp_path):
    run = tmp_path / "elastic"
    _ok(two_ranks(synth_videos, run, "stage.stop_after=2"))                 # steps 1-2 on 2 ranks
    log = _ok(one_rank(synth_videos, run, "stage.stop_after=1"))            # step 3 on 1 rank
    assert "written by 2 ranks with ZeRO-2, re-sharded onto 1 ranks with ZeRO-2" in log
    assert (run / "checkpoints" / "step_00000002" / ck.UNIVERSAL / "zero").is_dir()
    log = _ok(two_ranks(synth_videos, run))                                 # step 4 on 2 ranks
    assert "written by 1 ranks with ZeRO-2, re-sharded onto 2 ranks with ZeRO-2" in log

    want, got = losses(full), losses(run)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-7), step
    a, _ = load_weights(full)
    b, _ = load_weights(run)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow
def test_zero2_on_2_ranks_resumes_as_zero1_on_1_rank_into_fused_adamw(synth_videos, full, tmp_path):
    """The GPU path's optimizer (fused AdamW) restored from the universal copy of a checkpoint
    written by another world size and ZeRO stage: its step tensors (FP32 on the parameters'
    device, the count of steps taken) and the run's continuation (the same loss and weights as
    the uninterrupted run). Reuses `full`'s 2-rank run: one more 1-rank process."""
    tag = "step_00000003"
    shutil.copytree(full / "checkpoints" / tag, tmp_path / "from" / tag)  # `full` stays as it is
    out, run = tmp_path / "report.json", tmp_path / "fused"
    proc = run_captured([sys.executable, "tests/_resume_fused_worker.py", str(out),
                         *_args(synth_videos, run, "ds_configs/zero1.json", "optim.accum_steps=2",
                                f"checkpoint.resume={tmp_path / 'from' / tag}")], 180, cwd=REPO, env=env())
    log = _ok(proc)
    assert "written by 2 ranks with ZeRO-2, re-sharded onto 1 ranks with ZeRO-1" in log
    report = json.loads(out.read_text())
    assert report["resumed_at"] == 3 and report["fused"] and all(report["fused"])
    assert report["steps"] and all(s == {"dtype": "torch.float32", "device": s["param_device"], "param_device": "cpu",
                                         "value": 3.0} for s in report["steps"])
    want, got = losses(full), losses(run)
    assert sorted(got) == [4] and got[4] == pytest.approx(want[4], rel=1e-6, abs=1e-7)
    a, _ = load_weights(full)
    b, _ = load_weights(run)
    for k in a:  # the restored moments and step drove the same update (fused vs for-each rounding)
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow
def test_zero3_resumes_on_fewer_ranks_from_a_pre_converted_checkpoint(synth_videos, full, tmp_path):
    run = tmp_path / "z3"
    _ok(two_ranks(synth_videos, run, "stage.stop_after=2", ds="ds_configs/zero3.json"))
    cli = subprocess.run([sys.executable, "-m", "giant.cli", "reshard", str(run)], cwd=REPO, env=env(),
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert (run / "checkpoints" / "step_00000002" / ck.UNIVERSAL / "zero").is_dir()
    log = _ok(one_rank(synth_videos, run, ds="ds_configs/zero3.json"))
    assert "converting to a universal checkpoint" not in log  # `giant reshard` already did
    assert "written by 2 ranks with ZeRO-3, re-sharded onto 1 ranks with ZeRO-3" in log
    want, got = losses(full), losses(run)
    for step in range(1, STEPS + 1):  # ZeRO-3 vs ZeRO-2 reduction order: float32 rounding only
        assert got[step] == pytest.approx(want[step], rel=1e-4), step


@pytest.mark.slow
def test_moving_zero2_state_into_zero3_is_a_clear_error(synth_videos, tmp_path):
    run = tmp_path / "z2"
    _ok(two_ranks(synth_videos, run, "stage.stop_after=1"))
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    proc = one_rank(synth_videos, run, ds="ds_configs/zero3.json")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, tail(proc)
    assert "holds ZeRO-2 state, this run uses ZeRO-3" in out and "Traceback" not in out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before  # nothing converted or lost


@pytest.mark.parametrize("saved,now,want", [
    ((2, 2), (2, 2), False), ((2, 2), (1, 2), True), ((1, 2), (4, 2), True), ((2, 1), (2, 2), True),
    ((2, 3), (3, 3), True), ((2, 0), (4, 0), False)])
def test_needs_reshard(saved, now, want):
    meta = {"world_size": saved[0], "zero_stage": saved[1]}
    assert ck.needs_reshard(meta, {"world_size": now[0], "zero_stage": now[1]}) is want


@pytest.mark.parametrize("saved,now,ok", [(1, 2, True), (2, 1, True), (3, 3, True), (2, 3, False),
                                          (3, 1, False), (0, 2, False)])
def test_reshardable_only_within_a_shard_format(saved, now, ok, tmp_path):
    call = lambda: ck.check_reshardable({"zero_stage": saved}, {"zero_stage": now}, tmp_path)  # noqa: E731
    if ok:
        call()
    else:
        with pytest.raises(CheckpointError, match=f"ZeRO-{saved} state, this run uses ZeRO-{now}"):
            call()


def test_a_failed_conversion_leaves_no_half_written_universal_copy(tmp_path):
    tag_dir = tmp_path / "checkpoints" / "step_00000001"
    tag_dir.mkdir(parents=True)
    (tag_dir / ck.META).write_text(json.dumps({"step": 1, "zero_stage": 2, "world_size": 2}))
    with pytest.raises(CheckpointError, match="converting to a universal checkpoint failed"):
        reshard.convert_universal(tag_dir.parent, tag_dir.name)  # no DeepSpeed files in it
    assert not (tag_dir / ck.UNIVERSAL).exists() and not (tag_dir / f".tmp_{ck.UNIVERSAL}").exists()
    # a peer waiting on the shared filesystem reads the same message instead of timing out
    with pytest.raises(CheckpointError, match="converting to a universal checkpoint failed"):
        reshard.prepare_universal(tag_dir.parent, tag_dir.name, poll_s=0.01, wait_s=5, rank=1)
    (tag_dir / f".failed_{ck.UNIVERSAL}").unlink()
    with pytest.raises(CheckpointError, match="did not appear within"):
        reshard.prepare_universal(tag_dir.parent, tag_dir.name, poll_s=0.01, wait_s=0.05, rank=1)


def test_too_little_disk_for_the_universal_copy_is_said_up_front(tmp_path, monkeypatch):
    tag_dir = tmp_path / "checkpoints" / "step_00000001"
    tag_dir.mkdir(parents=True)
    torch.save({"w": torch.ones(1 << 16)}, tag_dir / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    full_disk = type(shutil.disk_usage(tmp_path))(total=1 << 40, used=1 << 40, free=1000)
    monkeypatch.setattr(reshard.shutil, "disk_usage", lambda _: full_disk)  # a full disk cannot be made here
    with pytest.raises(CheckpointError, match=r"needs about 0\.0 GiB free there"):
        reshard.convert_universal(tag_dir.parent, tag_dir.name)
    assert (tag_dir / f".failed_{ck.UNIVERSAL}").read_text().startswith(str(tag_dir))  # peers read it
    assert not (tag_dir / ck.UNIVERSAL).exists()
