"""checkpoint.resume=never into a directory that already holds a run is refused (it would append
to the old metrics.jsonl and leave the old run's checkpoints next to the new ones)."""
from __future__ import annotations

import json

import pytest

from giant.safety import prepare_run_dir
from giant.errors import ConfigError
from test_pretrain_resume import single


def old_run(run_dir):
    """What a run that trained two steps leaves behind (files as the stage writes them)."""
    (run_dir / "checkpoints" / "step_00000002").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_00000002" / "giant_meta.json").write_text('{"step": 2}')
    (run_dir / "checkpoints" / "latest").write_text("step_00000002")
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n"
                                                   for s in (1, 2)))
    (run_dir / "config.yaml").write_text("stage: {}\n")


def test_never_over_an_old_run_is_refused_naming_dir_and_fix(tmp_path):
    run = tmp_path / "run"
    old_run(run)
    with pytest.raises(ConfigError) as err:
        prepare_run_dir(run, "never")
    msg = str(err.value)
    assert f"{run} already holds a run (checkpoints, metrics.jsonl)" in msg
    assert "new stage.run_dir" in msg and "checkpoint.resume=auto" in msg
    (run / "checkpoints" / "step_00000002" / "giant_meta.json").unlink()
    (run / "checkpoints" / "step_00000002").rmdir()
    (run / "checkpoints" / "latest").unlink()
    with pytest.raises(ConfigError, match=r"already holds a run \(metrics.jsonl\)"):
        prepare_run_dir(run, "never")  # metrics alone would be appended to


def test_fresh_or_setup_only_dirs_and_other_resume_modes_pass(tmp_path):
    prepare_run_dir(tmp_path / "missing", "never")
    setup_only = tmp_path / "setup_only"  # a start that failed before training: nothing to mix
    (setup_only / "checkpoints").mkdir(parents=True)
    (setup_only / "config.yaml").write_text("x: 1\n")
    (setup_only / "ERROR").write_text("DataError: ...\n")
    (setup_only / "metrics.jsonl").write_text("")
    prepare_run_dir(setup_only, "never")
    old_run(tmp_path / "run")
    prepare_run_dir(tmp_path / "run", "auto")  # continuing the run is what auto is for
    prepare_run_dir(tmp_path / "run", str(tmp_path / "run"))
    # it only decides: nothing is created, removed or archived
    assert sorted(p.name for p in setup_only.iterdir()) == ["ERROR", "checkpoints", "config.yaml",
                                                            "metrics.jsonl"]
    assert not (tmp_path / "missing").exists()
    assert (tmp_path / "run" / "checkpoints" / "step_00000002" / "giant_meta.json").is_file()


def test_the_stage_refuses_before_touching_anything(tmp_path):
    run = tmp_path / "run"
    old_run(run)
    before = (run / "metrics.jsonl").read_text()
    proc = single("--recipe", "launch/recipes/demo_pretrain.yaml", f"stage.run_dir={run}",
                  "checkpoint.resume=never", f"data.manifest={tmp_path / 'unused.csv'}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "checkpoint.resume=never but" in out and "Traceback" not in out
    assert (run / "metrics.jsonl").read_text() == before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_00000002"]
