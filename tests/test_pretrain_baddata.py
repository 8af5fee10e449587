"""Unreadable videos during pre-training (2 CPU ranks): skipped and counted while rare; past
data.max_fail_fraction every rank stops at the same step with one clear error (no rank is left
waiting in a collective)."""
from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest

from _launch import REPO, tail, torchrun

pytestmark = pytest.mark.slow  # multi-process DeepSpeed runs (pyproject.toml markers)


def _manifest(tmp: Path, synth, bad: list[Path]) -> Path:
    rows = ["path,label,source"] + [f"{p},,synthetic" for p in synth.videos] + [f"{p},,broken" for p in bad]
    out = tmp / "mixed.csv"
    out.write_text("\n".join(rows) + "\n")
    return out


def _run(manifest: Path, run_dir: Path, *extra: str):
    return torchrun("launch/pretrain.py", "--ds", "ds_configs/zero2.json",
                    "--recipe", "launch/recipes/demo_pretrain.yaml",
                    f"data.manifest={manifest}", f"stage.run_dir={run_dir}", "model.img_size=32",
                    "model.patch_size=8", "model.num_frames=4", "data.sampling_rate=2",
                    "data.num_sample=1", "data.num_workers=0", "optim.batch_size=4",
                    "optim.total_steps=3", "optim.warmup_steps=1", "checkpoint.every_steps=0",
                    "logging.image_every=0", "logging.progress=false", *extra)


def test_bad_videos_are_skipped_and_counted_or_stop_all_ranks(synth_videos, corrupt_videos, tmp_path):
    bad = [corrupt_videos[k] for k in ("garbage", "empty", "missing", "truncated")]
    manifest = _manifest(tmp_path, synth_videos, bad)

    ok = _run(manifest, tmp_path / "tolerant", "data.max_fail_fraction=0.9")
    assert ok.returncode == 0, tail(ok)
    rows = [json.loads(line) for line in (tmp_path / "tolerant" / "metrics.jsonl").open()]
    assert len(rows) == 3 and rows[-1]["data_failures"] >= 1  # 16 videos, 4 bad, 24 draws
    assert "skipping unreadable video" in ok.stdout + ok.stderr

    strict = _run(manifest, tmp_path / "strict", "data.max_fail_fraction=0.0", "data.min_fail_count=1")
    log = strict.stdout + strict.stderr
    assert strict.returncode != 0, tail(strict)
    assert "video reads failed" in log and "data.max_fail_fraction=0" in log
    assert log.count("video reads failed") == 2  # both ranks stop at the same step, exit 2
    # torchrun ends the peer once the first rank exits, so the peer may report exit 2 or the
    # agent's SIGTERM/SIGKILL depending on timing; nobody may fail any other way
    codes = [int(c) for c in re.findall(r"exitcode\s*:\s*(-?\d+)", log)]
    assert 2 in codes and set(codes) <= {2, -signal.SIGTERM, -signal.SIGKILL}, codes
    assert f'File "{REPO / "giant"}' not in log  # a clear line, not a stack dump from giant
    # whatever code torchrun/srun report for the killed peer, launch/slurm reads this and stops
    assert (tmp_path / "strict" / "ERROR").read_text().startswith("DataError: ")
