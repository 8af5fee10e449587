"""Fail fast: every stage checks its static inputs (giant/stages/inputs.py) before a run dir, a
process group, a model or a DeepSpeed engine exists, so a typo is one line seconds after the
launch instead of after an engine build (and a queue wait on a cluster).

Each case: exit 2, exactly one stderr line `giant KIND: error: ...` naming the key/file and the
fix, nothing written in its folder (no run dir, no ERROR marker), and no sign of a start
(DeepSpeed's accelerator line is printed when DeepSpeed is imported by init_distributed; giant's
precision and engine lines come after the checks). `giant ...` cases are forked from one warm
process (tests/_contract_runner.py); two cases run through the real launchers, 2 ranks each,
and both ranks must print the same line. No timings are asserted.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _launch import REPO, free_port, run_captured, tail

PY = sys.executable
BIN = Path(PY).parent
RECIPE = {k: str(REPO / "launch" / "recipes" / f"demo_{k}.yaml") for k in ("pretrain", "finetune", "distill")}
STARTED = ("Setting accelerator", "giant.engine.deepspeed: engine:", "precision.encoder=", "TorchBackend")
SUPERVISED = ("data.manifest={W}/train.csv", "data.val_manifest={W}/val.csv", "checkpoint.init_from=")

# (id, argv after `giant`, what the line must say)
CASES = [
    ("pretrain-no-recipe", ("pretrain", "--ds", "ds_configs/zero2.json"),
     ("data.manifest is empty", "--recipe launch/recipes/demo_pretrain.yaml")),
    ("pretrain-empty-manifest", ("pretrain", "--recipe", RECIPE["pretrain"], "data.manifest={W}/empty.csv"),
     ("empty.csv lists no videos",)),
    ("pretrain-malformed-line", ("pretrain", "--recipe", RECIPE["pretrain"], "data.manifest={W}/bad.csv"),
     ("bad.csv:3: label 'x' is not an integer",)),
    ("pretrain-ds-batch", ("pretrain", "--recipe", RECIPE["pretrain"], "--ds", "{W}/ds_bad.json",
                           "data.manifest={W}/train.csv"), ("ds_bad.json: train_batch_size=7",)),
    ("pretrain-missing-init", ("pretrain", "--recipe", RECIPE["pretrain"], "data.manifest={W}/train.csv",
                               "checkpoint.init_from={W}/missing"), ("checkpoint.init_from=", "does not exist")),
    ("pretrain-file-run-dir", ("pretrain", "--recipe", RECIPE["pretrain"], "data.manifest={W}/train.csv",
                               "stage.run_dir={W}/train.csv"), ("stage.run_dir=", "is a file")),
    ("finetune-no-recipe", ("finetune",), ("data.manifest is empty", "--recipe launch/recipes/demo_finetune.yaml")),
    ("finetune-missing-val", ("finetune", "--recipe", RECIPE["finetune"], *SUPERVISED,
                              "data.val_manifest={W}/missing_val.csv", "stage.eval_every=1"),
     ("data.val_manifest=", "missing_val.csv does not exist")),
    ("finetune-label-past-head", ("finetune", "--recipe", RECIPE["finetune"], *SUPERVISED, "model.num_classes=3"),
     ("train.csv:3: label 3 but the model has 3 classes", "model.num_classes")),
    ("finetune-unlabelled", ("finetune", "--recipe", RECIPE["finetune"], *SUPERVISED,
                             "data.manifest={W}/unlabelled.csv"), ("needs a label on every line",)),
    ("finetune-missing-init", ("finetune", "--recipe", RECIPE["finetune"], *SUPERVISED,
                               "checkpoint.init_from={W}/missing"), ("checkpoint.init_from=", "does not exist")),
    ("distill-missing-teacher", ("distill", "--recipe", RECIPE["distill"], *SUPERVISED,
                                 "distill.teacher={W}/missing"), ("distill.teacher=", "does not exist")),
    ("distill-malformed-val", ("distill", "--recipe", RECIPE["distill"], *SUPERVISED, "distill.teacher={W}/clf",
                               "data.val_manifest={W}/bad.csv"), ("bad.csv:3",)),
    ("evaluate-missing-run-dir", ("evaluate", "{W}/missing_run"), ("TARGET", "does not exist")),
    ("evaluate-no-weights", ("evaluate", "{W}/noweights"), ("holds no model.json",)),
    ("evaluate-malformed-test", ("evaluate", "{W}/clf", "data.test_manifest={W}/bad.csv"), ("bad.csv:3",)),
    ("evaluate-label-past-head", ("evaluate", "{W}/clf", "data.test_manifest={W}/train.csv"),
     ("train.csv:3: label 3 but the model has 3 classes",)),
    ("evaluate-missing-reference", ("evaluate", "{W}/clf", "data.test_manifest={W}/val.csv", "--reference",
                                    "{W}/noweights"), ("--reference", "scores.npz")),
]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    """A real tiny 3-class classifier export (weights.safetensors + model.json)."""
    from giant.artifact import write_artifact
    from giant.config import ModelConfig, to_dict
    from giant.models import build_model, resolve

    cfg = resolve(ModelConfig(name="tiny", img_size=32, patch_size=8, num_frames=8, num_classes=3))
    out = tmp_path_factory.mktemp("clf")
    write_artifact(out, build_model(cfg, "classifier").state_dict(), {"kind": "finetune", "model": to_dict(cfg)})
    return out


def _inputs(w: Path, classifier: Path) -> None:
    w.mkdir(parents=True)
    (w / "train.csv").write_text("path,label\nvideos/a.mp4,0\nvideos/b.mp4,3\n")
    (w / "val.csv").write_text("path,label\nvideos/a.mp4,0\nvideos/c.mp4,2\n")
    (w / "bad.csv").write_text("path,label\nvideos/a.mp4,0\nvideos/b.mp4,x\n")
    (w / "unlabelled.csv").write_text("path\nvideos/a.mp4\n")
    (w / "empty.csv").write_text("")
    (w / "ds_bad.json").write_text(json.dumps({"train_batch_size": 7, "zero_optimization": {"stage": 2}}))
    (w / "noweights").mkdir()
    (w / "noweights" / "notes.txt").write_text("no weights here\n")
    shutil.copytree(classifier, w / "clf")


def _snapshot(w: Path) -> dict:
    return {str(p.relative_to(w)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(w.rglob("*"))}


def _env() -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_JOB_ID")}
    e.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    e["OMP_NUM_THREADS"] = "1"
    return e


@pytest.fixture(scope="module")
def results(tmp_path_factory, classifier) -> dict:
    base = tmp_path_factory.mktemp("failfast")
    cases, before = [], {}
    for name, args, _ in CASES:
        w, logs = base / name / "w", base / name / "logs"
        _inputs(w, classifier)
        logs.mkdir()
        before[name] = _snapshot(w)
        cases.append({"name": name, "argv": [a.replace("{W}", str(w)) for a in args], "cwd": str(w),
                      "env": _env(), "logs": str(logs)})
    (base / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run([PY, str(REPO / "tests" / "_contract_runner.py"), str(base / "cases.json"),
                           str(base / "codes.json"), "2"], cwd=base, env=_env(), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    codes = json.loads((base / "codes.json").read_text())
    return {c["name"]: {"rc": codes[c["name"]], "err": (Path(c["logs"]) / "err").read_text(),
                        "out": (Path(c["logs"]) / "out").read_text(),
                        "same": _snapshot(Path(c["cwd"])) == before[c["name"]]} for c in cases}


@pytest.mark.parametrize("name, args, expect", CASES, ids=[c[0] for c in CASES])
def test_mistake_is_one_line_before_anything_starts(name, args, expect, results):
    r = results[name]
    shown = f"rc={r['rc']}\n--- stderr ---\n{r['err'][-3000:]}\n--- stdout ---\n{r['out'][-1000:]}"
    lines = r["err"].splitlines()
    assert r["rc"] == 2, shown
    assert len(lines) == 1 and re.match(rf"^giant {args[0]}: error: \S", lines[0]), shown
    for text in expect:
        assert text in lines[0], shown
    assert not any(marker in r["err"] + r["out"] for marker in STARTED), shown
    assert r["same"], f"{shown}\nthe case's folder changed (a run dir or ERROR marker was written)"


def _two_ranks(w: Path, cmd: list, kind: str, expect: str) -> None:
    before = _snapshot(w)
    proc = run_captured(cmd, timeout=300, cwd=w, env=_env())
    out = proc.stdout + proc.stderr
    lines = [line for line in out.splitlines() if f"giant {kind}: error:" in line]
    assert proc.returncode != 0, tail(proc)
    assert len(lines) == 2 and len({re.sub(r"^.*?giant ", "giant ", line) for line in lines}) == 1, tail(proc)
    assert expect in lines[0], tail(proc)
    assert "giant.engine.deepspeed: engine:" not in out and "precision.encoder=" not in out, tail(proc)
    assert _snapshot(w) == before, tail(proc)


def test_deepspeed_launcher_both_ranks_fail_at_once(tmp_path, classifier):
    """The issue's own command: `deepspeed launch/pretrain.py --ds ds_configs/zero2.json`, no recipe."""
    w = tmp_path / "w"
    _inputs(w, classifier)
    cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
           str(REPO / "launch" / "pretrain.py"), "--ds", "ds_configs/zero2.json"]
    _two_ranks(w, cmd, "pretrain", "pass --recipe launch/recipes/demo_pretrain.yaml")


def test_torchrun_both_ranks_fail_at_once(tmp_path, classifier):
    w = tmp_path / "w"
    _inputs(w, classifier)
    cmd = [PY, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(REPO / "launch" / "finetune.py"), "--recipe", RECIPE["finetune"],
           *[a.replace("{W}", str(w)) for a in SUPERVISED], f"data.val_manifest={w}/missing_val.csv"]
    _two_ranks(w, cmd, "finetune", "missing_val.csv does not exist")


def test_pipeline_checks_outside_inputs_and_skips_produced_ones(tmp_path, classifier):
    """`giant pipeline run` checks what exists before it starts (manifests, weights from outside);
    what an earlier stage will write is not there yet and is left to that stage's own start."""
    import yaml

    from giant.stages.pipeline import input_errors, load_pipeline, resolve

    w = tmp_path / "w"
    _inputs(w, classifier)
    sup = {"data.manifest": str(w / "train.csv"), "data.val_manifest": str(w / "val.csv"), "model.num_classes": 4}
    stages = [
        {"name": "pre", "kind": "pretrain", "recipe": RECIPE["pretrain"], "overrides": {"data.manifest": str(w / "bad.csv")}},
        {"name": "ft", "kind": "finetune", "recipe": RECIPE["finetune"], "init_from": "pre", "overrides": sup},
        {"name": "ft_out", "kind": "finetune", "recipe": RECIPE["finetune"], "init_from": {"path": str(w / "gone")},
         "overrides": sup},
        {"name": "dist", "kind": "distill", "recipe": RECIPE["distill"], "teacher": "ft", "overrides": sup},
        {"name": "ev", "kind": "evaluate", "target": "ft", "overrides": {"data.test_manifest": str(w / "val.csv")}},
        {"name": "ev_out", "kind": "evaluate", "target": {"path": str(w / "clf")},
         "overrides": {"data.test_manifest": str(w / "missing.csv")}},
    ]
    (w / "pipe.yaml").write_text(yaml.safe_dump({"name": "t", "root": str(w / "runs"), "stages": stages}))
    resolved = resolve(load_pipeline(w / "pipe.yaml"))
    assert [r.error for r in resolved if r.error] == []
    errors = input_errors(resolved)
    assert [e.split(":", 1)[0] for e in errors] == ["stage pre", "stage ft_out", "stage ev_out"], errors
    assert "bad.csv:3: label 'x'" in errors[0] and f"checkpoint.init_from={w / 'gone'} does not exist" in errors[1]
    assert "data.test_manifest=" in errors[2] and "missing.csv does not exist" in errors[2]
    assert input_errors(resolved, names={"ft", "dist", "ev"}) == []
    assert not (w / "runs").exists()
