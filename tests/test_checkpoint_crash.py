"""A crash in the middle of a checkpoint save (after DeepSpeed wrote its files, before the save
is committed) leaves `latest` on the previous complete checkpoint; relaunching resumes from it
and replays the lost step exactly."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from _launch import REPO, env

CRASHING_LAUNCH = """
import os, runpy, sys
real_rename = os.rename
def rename(src, dst):  # die exactly where the save would be committed
    if str(src).endswith(".tmp_step_00000002"):
        os._exit(17)
    return real_rename(src, dst)
os.rename = rename
sys.argv = ["launch/pretrain.py", *sys.argv[1:]]
runpy.run_path("launch/pretrain.py", run_name="__main__")
"""


def _args(synth, run_dir: Path) -> list[str]:
    return ["--recipe", "launch/recipes/demo_pretrain.yaml", "--ds", "ds_configs/zero2.json",
            f"data.manifest={synth.train_manifest}", f"stage.run_dir={run_dir}",
            "model.img_size=32", "model.patch_size=8", "model.num_frames=4", "data.sampling_rate=2",
            "data.num_sample=1", "data.num_workers=0", "optim.batch_size=2", "optim.total_steps=3",
            "optim.warmup_steps=1", "checkpoint.every_steps=1", "logging.image_every=0",
            "logging.progress=false"]


def _losses(run_dir: Path) -> dict:
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").open())}


def test_crash_mid_save_keeps_previous_checkpoint(synth_videos, tmp_path):
    run = tmp_path / "run"
    crashed = subprocess.run([sys.executable, "-c", CRASHING_LAUNCH, *_args(synth_videos, run)],
                             cwd=REPO, env=env(), capture_output=True, text=True, timeout=180)
    assert crashed.returncode == 17, crashed.stderr[-3000:]
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text() == "step_00000001"
    assert (ckpts / ".tmp_step_00000002").is_dir() and not (ckpts / "step_00000002").exists()
    before = _losses(run)
    assert sorted(before) == [1, 2]  # step 2 ran, its checkpoint never committed

    again = subprocess.run([sys.executable, "launch/pretrain.py", *_args(synth_videos, run)],
                           cwd=REPO, env=env(), capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout + again.stderr
    after = _losses(run)
    assert sorted(after) == [1, 2, 3]
    assert after[2] == before[2]  # the lost step is replayed bit for bit
    assert not list(ckpts.glob(".tmp_*"))
    assert (ckpts / "latest").read_text() == "step_00000003"
