"""The CPU-checkable pieces of scripts/bench/gpu_check.sh: its argument checks, its dry run (setup
and imports), the report that collects sections fail-soft, and the speed estimator's table."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts/bench/gpu_check.sh"
sys.path.insert(0, str(REPO / "scripts/bench"))


def run(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.mark.parametrize("args, named", [(("--only", "bogus"), "--only: unknown section 'bogus'"),
                                         (("--budget", "soon"), "--budget 'soon'"),
                                         (("--frobnicate",), "unknown argument '--frobnicate'")])
def test_bad_arguments_are_one_line_exit_2(args, named):
    proc = run(*args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("gpu_check.sh: error: ") and named in proc.stderr


def test_dry_run_checks_setup_and_helpers(tmp_path):
    proc = run("--dry-run", "--only", "env,pretrain", "--out", str(tmp_path / "out"), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "setup: torch" in proc.stdout and "dry run: sections env pretrain_new pretrain_shipped" in proc.stdout
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def write_section(work: Path, name: str, status: str, result=None, log: str = "") -> None:
    (work / f"{name}.status").write_text(json.dumps({"section": name, "status": status, "seconds": 3,
                                                     "limit": 60}) + "\n")
    (work / f"{name}.json").write_text("" if result is None else "noise line\n" + json.dumps(result) + "\n")
    (work / f"{name}.log").write_text(log)


def test_report_collects_every_section_fail_soft(tmp_path):
    from gpu_report import main

    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    write_section(work, "setup", "ok")
    write_section(work, "env", "ok", {"gpu": "NVIDIA H200", "torch": "2.11", "memory_gib": 140.4})
    write_section(work, "pretrain_new", "ok", {"act_ckpt": "off", "batch_per_device": 128, "clips_per_s": 230.5,
                                               "tflops": 334.0, "mfu": 0.338, "mem_alloc_gib": 101.2,
                                               "planned_allocated_gib": 98.0, "planned_peak_gib": 108.0})
    write_section(work, "finetune", "timeout after 80s", None, log="Traceback ... CUDA out of memory\n")
    (work / "decoder.status").write_text("{broken")  # an unreadable status is left out, not fatal
    write_section(work, "official", "ok", {"ok": False, "skipped": "no .whl/VideoMAEv2"})
    assert main([str(work), str(out), "--budget", "470", "--elapsed", "455"]) == 0
    report = json.loads((out / "gpu_check.json").read_text())
    assert list(report["sections"]) == ["setup", "env", "pretrain_new", "finetune", "official"]
    assert report["sections"]["finetune"]["status"] == "timeout after 80s"
    assert "CUDA out of memory" in report["sections"]["finetune"]["log_tail"]
    md = (out / "gpu_check.md").read_text()
    assert "NVIDIA H200" in md and "| ViT-g pre-training, today's defaults | off | 128 | 230.5 | 334.0 | 33.8% |" in md
    assert "| finetune | timeout after 80s | 3 |" in md
    assert "===== finetune: timeout after 80s" in (out / "gpu_check.log").read_text()


def test_speed_estimate_applies_each_change_and_the_planners_checkpointing():
    from estimate_speed import PRETRAIN_CHANGES, table

    from giant.config import load_config
    from giant.memory import plan, stage_from_config

    result = table("pretrain", "launch/recipes/pretrain_vitg_hybrid.yaml", 64, "h100", PRETRAIN_CHANGES)
    rows = result["rows"]
    assert [r["change"] for r in rows] == [c[0] for c in PRETRAIN_CHANGES]
    steps = [r["step_s"] for r in rows]
    assert all(b <= a for a, b in zip(steps, steps[1:])) and steps[-1] < steps[0]  # no change slows the step
    assert rows[0]["ckpt"] == "all"
    cfg = load_config(REPO / "launch/recipes/pretrain_vitg_hybrid.yaml", [])
    assert rows[-1]["ckpt"] == plan(stage_from_config(cfg, "pretrain", 64), 79.6).fastest.ckpt
    assert rows[1]["parts_s"]["decoder matmuls (FP32)"] < rows[0]["parts_s"]["decoder matmuls (FP32)"] / 3  # TF32
