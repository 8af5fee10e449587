"""Stopping cleanly: SIGUSR1 (Slurm preemption) saves a checkpoint on every rank and exits 0,
and the relaunch resumes from it (ZeRO-3); a non-finite loss raises TrainingError without
writing a checkpoint over the last good one."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _launch import REPO, env, free_port
from test_pretrain_resume import overrides, single


def spawn_ranks(args: list[str], world: int = 2) -> list[subprocess.Popen]:
    """One process per rank with the env a launcher would set, so signals reach them directly
    (as with `srun` one task per GPU in launch/slurm)."""
    port, procs = free_port(), []
    for rank in range(world):
        e = {**env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "launch/pretrain.py", *args], cwd=REPO, env=e,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def wait_for_steps(metrics: Path, n: int, procs: list, timeout: float = 120) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= n:
            return
        assert all(p.poll() is None for p in procs), "a rank exited early"
        time.sleep(0.2)
    raise AssertionError("training did not reach the expected step in time")


@pytest.mark.slow
def test_sigusr1_saves_then_exits_and_relaunch_resumes(synth_videos, tmp_path):
    run = tmp_path / "run"
    args = ["--ds", "ds_configs/zero3.json", "--recipe", "launch/recipes/demo_pretrain.yaml",
            *overrides(synth_videos, run, "optim.total_steps=500", "checkpoint.every_steps=0",
                       "logging.image_every=0")]
    procs = spawn_ranks(args)
    try:
        wait_for_steps(run / "metrics.jsonl", 2, procs)
        for p in procs:
            p.send_signal(signal.SIGUSR1)
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["reason"] == "signal:SIGUSR1"
    step = summary["steps"]
    assert 2 <= step < 500
    assert (run / "checkpoints" / "latest").read_text() == f"step_{step:08d}"
    assert len(list((run / "checkpoints" / f"step_{step:08d}").glob("zero_pp_rank_*_optim_states.pt"))) == 2
    assert (run / "PREEMPTED").is_file()  # launch/slurm requeues on it
    assert not (run / "weights.safetensors").exists()  # only a completed run exports

    procs = spawn_ranks(args + ["stage.stop_after=1"])
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert rows[-1]["step"] == step + 1  # continued from the saved step
    assert f"resumed from {run / 'checkpoints' / f'step_{step:08d}'}" in outs[0]


def test_nonfinite_loss_stops_without_touching_checkpoints(synth_videos, tmp_path):
    run = tmp_path / "run"
    proc = single("--recipe", "launch/recipes/demo_pretrain.yaml",
                  *overrides(synth_videos, run, "optim.lr=1e30", "optim.warmup_steps=0",
                             "optim.total_steps=6", "logging.image_every=0"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "non-finite loss" in out and "checkpoints up to the last good one are intact" in out
    assert "Traceback" not in out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    bad = rows[-1]["step"]
    good = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert good and good[-1] == f"step_{bad - 1:08d}"  # nothing saved at or after the bad step
    assert (run / "checkpoints" / "latest").read_text() == good[-1]
    assert json.loads((run / "checkpoints" / good[-1] / "giant_meta.json").read_text())["step"] == bad - 1
    assert not list((run / "checkpoints").glob(".tmp_*"))
    assert not (run / "summary.json").exists() and not (run / "weights.safetensors").exists()
    assert os.path.getsize(run / "checkpoints" / good[-1] / "mp_rank_00_model_states.pt") > 0
