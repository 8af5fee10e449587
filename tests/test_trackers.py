"""`logging.report_to`: real wandb (offline) and MLflow (local file store) runs written by
MetricsLogger, read back from their own files; a resume continues the same tracker runs; a
tracker whose package is missing is one line before anything starts."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from _launch import REPO, env

CONFIG = {"optim": {"lr": 0.001, "total_steps": 4}, "stage": {"name": "finetune"}}
LOSSES = {1: 2.0, 2: 1.5, 3: 1.25, 4: 1.0}


def _wandb_records(path: Path) -> list:
    """The records of a wandb transaction log (.wandb): a 7-byte header, then LevelDB-log
    framing (32 KiB blocks; per chunk crc32 u32, length u16, type u8: 1 full, 2 first, 3 middle,
    4 last), each record a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", data[:8]
    pos, records, parts = 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(pb.Record.FromString(parts))
            parts = b""
    return records


def _wandb_history(path: Path) -> tuple[dict, dict, str]:
    """{step: train/loss}, the config record's values, the run's display name."""
    history, config, name = {}, {}, ""
    for r in _wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            if "train/loss" in items:
                history[items["_step"]] = items["train/loss"]
        elif kind == "run":
            name = r.run.display_name
            config.update({u.key: json.loads(u.value_json) for u in r.run.config.update})
        elif kind == "config":
            config.update({u.key: json.loads(u.value_json) for u in r.config.update})
    return history, config, name


@pytest.fixture
def tracker_env(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # no network: everything stays in RUN_DIR/wandb
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")  # pytest owns the console streams
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE", "WANDB_PROJECT", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)


def test_wandb_offline_and_mlflow_file_store_hold_the_logged_values_across_a_resume(tmp_path, tracker_env):
    from giant.engine.metrics import MetricsLogger

    names = ["tensorboard", "wandb", "mlflow"]
    first = MetricsLogger(tmp_path, report_to=names, progress=False, total_steps=4, run_name="finetune",
                          config=CONFIG)
    for step in (1, 2, 3):
        first.log_step(step, {"loss": LOSSES[step], **({"val/top1": 25.0} if step == 2 else {})})
    first.close()
    ids = json.loads((tmp_path / "trackers.json").read_text())
    again = MetricsLogger(tmp_path, report_to=names, progress=False, total_steps=4, run_name="finetune",
                          config=CONFIG, resume_step=3)
    again.log_step(4, {"loss": LOSSES[4]})
    again.close()
    assert json.loads((tmp_path / "trackers.json").read_text()) == ids  # the same runs continued

    # wandb: two offline attempts of one run id (`wandb sync` merges them), in RUN_DIR/wandb
    files = sorted((tmp_path / "wandb").glob(f"offline-run-*-{ids['wandb']}/run-{ids['wandb']}.wandb"))
    assert len(files) == 2, sorted((tmp_path / "wandb").iterdir())
    history, config, name = _wandb_history(files[0])
    assert history == {1: 2.0, 2: 1.5, 3: 1.25} and name == "finetune"
    assert config["optim.lr"] == 0.001 and config["stage.name"] == "finetune"
    assert _wandb_history(files[1])[0] == {4: 1.0}

    # mlflow: one run in RUN_DIR/mlruns, params once, the whole loss history, finished
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    run = client.get_run(ids["mlflow"])
    assert run.info.run_name == "finetune" and run.info.status == "FINISHED"
    assert run.data.params == {"optim.lr": "0.001", "optim.total_steps": "4", "stage.name": "finetune"}
    history = client.get_metric_history(ids["mlflow"], "train/loss")
    assert sorted((m.step, m.value) for m in history) == sorted(LOSSES.items())
    assert [(m.step, m.value) for m in client.get_metric_history(ids["mlflow"], "val/top1")] == [(2, 25.0)]


def test_tensorboard_only_writes_no_tracker_ids(tmp_path):
    from giant.engine.metrics import MetricsLogger

    logger = MetricsLogger(tmp_path, progress=False, config=CONFIG)
    logger.log_step(1, {"loss": 1.0})
    logger.close()
    assert not (tmp_path / "trackers.json").exists() and (tmp_path / "tensorboard").is_dir()
    none = MetricsLogger(tmp_path / "none", report_to=[], progress=False)
    none.log_step(1, {"loss": 1.0})
    none.close()
    assert sorted(p.name for p in (tmp_path / "none").iterdir()) == ["metrics.jsonl"]


def test_config_checks_report_to_and_profile():
    from giant.config import load_config
    from giant.errors import ConfigError

    cfg = load_config(None, ["logging.report_to=[wandb, mlflow]", "logging.profile={start: 3, steps: 2}"])
    assert cfg.logging.report_to == ["wandb", "mlflow"] and cfg.logging.profile == {"start": 3, "steps": 2}
    assert load_config(None, []).logging.report_to == ["tensorboard"]
    for override, expect in (
            ("logging.tensorboard=false", "override.logging.tensorboard: replaced by logging.report_to"),
            ("logging.report_to=[tb]", "logging.report_to=['tb']: a list of distinct tensorboard, wandb, mlflow"),
            ("logging.report_to=[wandb, wandb]", "a list of distinct"),
            ("logging.report_to=wandb", "override.logging.report_to: expected list"),
            ("logging.profile={start: 1, step: 2}", "logging.profile: unknown key(s) ['step']"),
            ("logging.profile={start: -1, steps: 2}", "logging.profile.start=-1: must be an integer >= 0"),
            ("logging.profile={steps: 0}", "logging.profile.steps=0: must be an integer >= 1"),
            ("logging.profile={steps: true}", "logging.profile.steps=True"),
            ("logging.profile=3", "logging.profile=3: give a mapping")):
        with pytest.raises(ConfigError) as err:
            load_config(None, [override])
        assert expect in str(err.value) and "\n" not in str(err.value), (override, str(err.value))


def _blocked(tmp_path: Path) -> dict:
    """An environment in which `import wandb` fails the way a missing package does."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['wandb'] = None\n")
    e = env()
    e["PYTHONPATH"] = os.pathsep.join([str(site), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return e


def test_missing_tracker_package_is_one_line_before_anything_starts(tmp_path):
    bin_dir = Path(sys.executable).parent
    recipe = REPO / "launch" / "recipes" / "demo_finetune.yaml"
    run_dir = tmp_path / "run"
    proc = subprocess.run([str(bin_dir / "giant"), "finetune", "--recipe", str(recipe), "logging.report_to=[wandb]",
                           f"stage.run_dir={run_dir}"], cwd=tmp_path, env=_blocked(tmp_path),
                          capture_output=True, text=True, timeout=300)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("giant finetune: error: ") and "pip install 'giant[wandb]'" in lines[0], lines
    assert not run_dir.exists()
