"""The progressive pipeline end to end on real decoded videos through `giant pipeline run`:
pre-train → post-pre-train → fine-tune → [distil] → evaluate, each stage a real subprocess
(`--launcher python`, one rank: the chain is what is tested, and it keeps this under two
minutes). One uninterrupted run is shared by the assertions: a second run launches nothing; a
run stopped in the middle stage (stage.stop_after) and re-run resumes that stage and ends with
the same losses and final metrics; a changed recipe value in a finished stage is refused naming
the field; the plan of the shipped ViT-g pipeline comes from the recipes alone. A SIGTERM to
`giant pipeline run` reaches the stage's whole process group (torchrun, 2 ranks), which saves
and is reported as interrupted, then planned as partial."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from _launch import REPO, env, run_captured

STEPS = 4
LAUNCHER = "python"


def _pipeline(synth, root: Path, middle_extra: dict | None = None) -> dict:
    """The demo chain at test size; `middle_extra` goes to the fine-tune stage (the third)."""
    data = {"data.manifest": str(synth.train_manifest), "data.val_manifest": str(synth.val_manifest),
            "model.num_frames": 4, "data.num_sample": 2, "data.num_workers": 0, "optim.batch_size": 2,
            "optim.total_steps": STEPS, "optim.warmup_steps": 1, "checkpoint.every_steps": 2,
            "logging.log_every": 1, "logging.image_every": 0, "logging.progress": False}
    sup = {**data, "stage.eval_every": 2, "data.test_temporal_views": 1, "data.test_spatial_views": 2}
    stages = [
        {"name": "pretrain", "kind": "pretrain", "recipe": "launch/recipes/demo_pretrain.yaml", "overrides": data},
        {"name": "postpretrain", "kind": "finetune", "recipe": "launch/recipes/demo_finetune.yaml",
         "init_from": "pretrain", "overrides": sup},
        {"name": "finetune", "kind": "finetune", "recipe": "launch/recipes/demo_finetune.yaml",
         "init_from": "postpretrain", "overrides": {**sup, **(middle_extra or {})}},
        {"name": "distill", "kind": "distill", "recipe": "launch/recipes/demo_distill.yaml",
         "teacher": "finetune", "overrides": sup},  # a smaller student: its own init
        {"name": "eval_teacher", "kind": "evaluate", "target": "finetune"},
        {"name": "eval_student", "kind": "evaluate", "target": "distill", "reference": "eval_teacher"},
    ]
    return {"name": "t", "root": str(root), "defaults": {"ds": "ds_configs/zero2.json", "gpus": 2},
            "stages": stages}


def _write(path: Path, pipeline: dict) -> Path:
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return path


def giant(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_captured([sys.executable, "-m", "giant.cli", "pipeline", *args], timeout, cwd=REPO, env=env())


def run(path: Path, *extra: str) -> subprocess.CompletedProcess:
    return giant("run", str(path), "--launcher", LAUNCHER, *extra)


def out(proc: subprocess.CompletedProcess) -> str:
    return (proc.stdout + proc.stderr)[-6000:]


def metrics(root: Path) -> dict:
    rows = json.loads((root / "status.json").read_text())["stages"]
    keys = ("last_loss", "best_val_top1", "test_top1", "test_top5", "steps")
    return {r["stage"]: {k: r[k] for k in keys} for r in rows}


@pytest.fixture(scope="module")
def full(synth_videos, tmp_path_factory):
    d = tmp_path_factory.mktemp("pipeline")
    path = _write(d / "full.yaml", _pipeline(synth_videos, d / "full"))
    proc = run(path)
    assert proc.returncode == 0, out(proc)
    return {"dir": d, "path": path, "root": d / "full", "log": proc.stdout}


def test_uninterrupted_run_completes_every_stage(full):
    m = metrics(full["root"])
    names = ["pretrain", "postpretrain", "finetune", "distill", "eval_teacher", "eval_student"]
    assert list(m) == names
    for name in ("pretrain", "postpretrain", "finetune"):
        assert m[name]["steps"] == STEPS and m[name]["last_loss"] is not None
    assert m["postpretrain"]["best_val_top1"] is not None and 0 <= m["finetune"]["best_val_top1"] <= 100
    assert 0 <= m["eval_teacher"]["test_top1"] <= m["eval_teacher"]["test_top5"] <= 100
    for name in names:
        rec = json.loads((full["root"] / name / "pipeline_stage.json").read_text())
        assert rec["stage"] == name and rec["completed_at"]
    # inputs came from the earlier stages' run dirs, never from the recipes' own paths
    ft = (full["root"] / "finetune" / "config.yaml").read_text()
    assert f"init_from: {full['root'] / 'postpretrain'}" in ft
    assert "final metrics" in full["log"] and "eval_teacher" in full["log"]
    # the student's evaluation is compared with the teacher's, video by video
    rows = {r["stage"]: r for r in json.loads((full["root"] / "status.json").read_text())["stages"]}
    student, teacher = rows["eval_student"], rows["eval_teacher"]
    assert student["reference"] == "eval_teacher" and teacher["agreement_top1"] is None
    assert 0 <= student["agreement_top1"] <= 100 and student["kl_from_reference"] >= 0
    rec = json.loads((full["root"] / "eval_student" / "pipeline_stage.json").read_text())
    assert rec["config"]["reference"].startswith("stage:eval_teacher@")
    assert f"with eval_teacher ({student['kl_from_reference']:.4f})" in full["log"]


def test_second_run_launches_nothing(full):
    t0 = time.time()
    proc = run(full["path"])
    assert proc.returncode == 0, out(proc)
    assert proc.stdout.count("done, skipped") == len(metrics(full["root"]))
    assert "$ " not in proc.stdout  # no stage command was started
    assert time.time() - t0 < 60


def test_interrupted_middle_stage_resumes_to_the_same_final_metrics(full, synth_videos):
    d = full["dir"]
    root = d / "resumed"
    root.mkdir()
    for done in ("pretrain", "postpretrain"):  # same config: skipped, wherever the run dirs are
        shutil.copytree(full["root"] / done, root / done)
    stopped = _write(d / "stopped.yaml", _pipeline(synth_videos, root, {"stage.stop_after": 2}))
    proc = run(stopped)
    assert proc.returncode == 3, out(proc)
    assert "[pretrain] done, skipped" in proc.stdout and "[postpretrain] done, skipped" in proc.stdout
    assert "stopped before its end (stop_after at step 2)" in proc.stderr
    plan = giant("plan", str(stopped), "--no-flops")
    assert "partial at step 2" in plan.stdout, out(plan)

    proc = run(_write(d / "again.yaml", _pipeline(synth_videos, root)))
    assert proc.returncode == 0, out(proc)
    assert "[finetune] partial at step 2: resuming" in proc.stdout
    log = (root / "finetune" / "stage.log").read_text()  # the stage's own output: both attempts
    assert f"resumed from {root / 'finetune' / 'checkpoints' / 'step_00000002'}" in log.split("attempt: $ ")[2]
    assert "[finetune] done in " in proc.stdout and f"step {STEPS}/{STEPS}" in proc.stdout
    resumed = [json.loads(line)["loss"] for line in (root / "finetune" / "metrics.jsonl").open()]
    uninterrupted = [json.loads(line)["loss"] for line in (full["root"] / "finetune" / "metrics.jsonl").open()]
    assert resumed == pytest.approx(uninterrupted, rel=1e-6) and len(resumed) == STEPS
    a, b = metrics(full["root"]), metrics(root)
    assert list(a) == list(b)
    for stage in a:
        for key, value in a[stage].items():
            assert b[stage][key] == (value if value is None else pytest.approx(value, rel=1e-6, abs=1e-7)), \
                (stage, key)


def test_changed_evaluation_is_evaluated_again(full, synth_videos):
    """An evaluation has nothing to resume and its old numbers describe another config: it is
    redone, not refused, and so is every evaluation that compares itself with it."""
    root = full["dir"] / "reevaluated"
    shutil.copytree(full["root"], root)
    pipe = _pipeline(synth_videos, root)
    teacher = next(s for s in pipe["stages"] if s["name"] == "eval_teacher")
    teacher["overrides"] = {"data.test_spatial_views": 1}
    path = _write(full["dir"] / "reevaluated.yaml", pipe)
    plan = {s["name"]: s for s in json.loads(giant("plan", str(path), "--no-flops", "--json").stdout)["stages"]}
    # submit_pipeline.sh clears a "forced" stage's run dir before it submits it
    assert [n for n, s in plan.items() if s["forced"]] == ["eval_teacher", "eval_student"]
    assert plan["eval_teacher"]["status"] == "pending" and plan["eval_teacher"]["changed"]
    proc = run(path)
    assert proc.returncode == 0, out(proc)
    redone = [line.split("]")[0][1:] for line in proc.stdout.splitlines() if "evaluated again" in line]
    assert redone == ["eval_teacher", "eval_student"], out(proc)  # the student's reference changed
    assert proc.stdout.count("done, skipped") == 4  # the four training stages
    views = {n: json.loads((root / n / "results.json").read_text())["views"] for n in redone}
    assert views == {"eval_teacher": 1, "eval_student": 2}  # the student keeps its own 1 × 2 views
    assert "evaluated again" not in run(_write(full["dir"] / "reevaluated.yaml", pipe)).stdout


def test_changed_recipe_value_is_refused_with_the_field(full, synth_videos):
    changed = _pipeline(synth_videos, full["root"])
    changed["stages"][2]["overrides"]["optim.blr"] = 0.02  # the finetune stage; the recipe says 3.2e-2
    path = _write(full["dir"] / "changed.yaml", changed)
    proc = run(path)
    assert proc.returncode == 2
    assert "stage 'finetune'" in proc.stderr and "optim.blr: 0.032 → 0.02" in proc.stderr
    assert "--force finetune" in proc.stderr and "$ " not in proc.stdout
    plan = giant("plan", str(path), "--no-flops", "--json")
    rows = {s["name"]: s for s in json.loads(plan.stdout)["stages"]}
    assert rows["postpretrain"]["status"] == "done" and rows["finetune"]["status"] == "changed"
    later = "distill"  # its input's config changed with it
    assert rows[later]["status"] == "changed"
    assert any(c.startswith(("checkpoint.init_from", "target", "distill.teacher")) for c in rows[later]["changed"])
    forced = {s["name"]: s for s in json.loads(giant("plan", str(path), "--no-flops", "--json", "--force",
                                                     "finetune").stdout)["stages"]}
    assert [n for n, s in forced.items() if s["forced"]] == list(rows)[2:]
    assert forced["finetune"]["status"] == "pending" and forced["postpretrain"]["status"] == "done"


def plan_here(capsys, monkeypatch, *args: str) -> tuple[int, str]:
    """`giant pipeline plan` in this process (the model code is imported once for all calls)."""
    from giant.commands.pipeline import main

    monkeypatch.chdir(REPO)
    capsys.readouterr()
    rc = main(["plan", *args])
    return rc, capsys.readouterr().out


def test_plan_of_the_shipped_vitg_pipeline_from_recipes_alone(capsys, monkeypatch):
    from giant.config import load_config
    from giant.flops import count

    rc, text = plan_here(capsys, monkeypatch, "launch/pipelines/vitg_k400.yaml", "--json")
    has_recipe = (REPO / "launch/recipes/distill_vitg_to_vitb_k710.yaml").is_file()
    assert rc == (0 if has_recipe else 2), text
    rows = {s["name"]: s for s in json.loads(text)["stages"]}
    assert list(rows) == ["pretrain", "k710", "finetune_k400", "pretrain_vitb", "k710_vitb",
                          "distill_vitb", "eval_teacher", "eval_student"]
    pre = rows["pretrain"]
    assert (pre["world"], pre["global_batch"], pre["steps"]) == (64, 8192, 197700)
    assert pre["lr"] == pytest.approx(4.8e-3)
    cfg = load_config("launch/recipes/pretrain_vitg_hybrid.yaml")
    assert pre["flops"] == 197700 * 8192 * count(cfg.model, "pretrain", cfg.mask)["train_flops"]
    assert pre["flops"] / (241 * 3600 * 64) == pytest.approx(42.3e12, rel=0.01)  # the paper's 241 h on 64 A100
    assert (rows["k710"]["global_batch"], rows["k710"]["lr"]) == (192, pytest.approx(3.75e-4))  # 96 videos
    assert (rows["finetune_k400"]["world"], rows["finetune_k400"]["global_batch"]) == (32, 192)
    assert rows["eval_teacher"]["flops_per_video"] == 15 * 2 * count(
        load_config("launch/recipes/finetune_vitg_k400.yaml").model, "finetune")["macs"]
    assert all(r["status"] == "pending" for r in rows.values() if not r["error"])
    assert rows["finetune_k400"]["args"][-1] == "checkpoint.init_from=runs/vitg_k400/k710"
    if not has_recipe:  # until the distillation recipes land, the plan names what is missing
        assert "distill_vitg_to_vitb_k710.yaml does not exist" in rows["distill_vitb"]["error"]
    text = plan_here(capsys, monkeypatch, "launch/pipelines/vitg_k400.yaml", "--gpu-tflops", "42.3")[1]
    text = text.splitlines()
    assert text[3].split() == ["pretrain", "pretrain", "pending", "64", "8192", "0.0048", "197700",
                               "2.35", "Z", "15,418"]  # ≈ 241 h × 64


def test_stop_signal_to_the_pipeline_reaches_the_stage(synth_videos, tmp_path):
    pipe = _pipeline(synth_videos, tmp_path / "runs")
    pipe["stages"] = pipe["stages"][:1]
    pipe["stages"][0]["overrides"].update({"optim.total_steps": 100000, "checkpoint.every_steps": 0})
    path = _write(tmp_path / "p.yaml", pipe)
    proc = subprocess.Popen([sys.executable, "-m", "giant.cli", "pipeline", "run", str(path), "--launcher",
                             "torchrun", "--nproc", "2"], cwd=REPO, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    metrics_file = tmp_path / "runs" / "pretrain" / "metrics.jsonl"
    try:
        t0 = time.time()
        while not (metrics_file.is_file() and len(metrics_file.read_text().splitlines()) >= 2):
            assert proc.poll() is None and time.time() - t0 < 120, proc.stdout.read() if proc.poll() else "slow"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # to `giant pipeline` only: it forwards to the stage's group
        log = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, log[-4000:]
    assert "[pretrain] interrupted (SIGTERM" in log and "re-run the same command to resume" in log
    summary = json.loads((tmp_path / "runs" / "pretrain" / "summary.json").read_text())
    assert summary["reason"] == "signal:SIGTERM" and summary["steps"] >= 2
    plan = giant("plan", str(path), "--no-flops")
    assert f"partial at step {summary['steps']}" in plan.stdout, out(plan)


def test_launcher_commands(monkeypatch):
    from giant.stages.pipeline_run import command

    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    args = ["--recipe", "r.yaml", "stage.run_dir=runs/x"]
    ds, _ = command("deepspeed", 8, 29500, "launch/finetune.py", args)
    assert Path(ds[0]).name == "deepspeed" and ds[1:5] == ["--num_gpus", "8", "--master_port", "29500"]
    assert ds[5].endswith("launch/finetune.py") and ds[6:] == args
    tr, e = command("torchrun", 4, 29501, "launch/pretrain.py", args)
    assert tr[:7] == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "4",
                      "--master_port", "29501"] and "RANK" not in e
    sr, e = command("srun", 16, 29502, "launch/evaluate.py", args)
    assert sr[:4] == ["srun", "--ntasks=16", "--kill-on-bad-exit=1", "--export=ALL"] and e["MASTER_PORT"] == "29502"
    assert "RANK=$SLURM_PROCID" in sr[6] and sr[8:] == [sys.executable, sr[9], *args]
    assert command("python", 1, 0, "launch/pretrain.py", args)[0][2:] == args


@pytest.mark.parametrize("stage, message", [
    ({"name": "b", "kind": "finetune", "recipe": "launch/recipes/demo_finetune.yaml", "init_from": "nope"},
     "'nope' is not an earlier stage (earlier: ['a'])"),
    ({"name": "b", "kind": "finetune", "recipe": "launch/recipes/demo_finetune.yaml", "init_from": "a",
      "overrides": {"checkpoint.init_from": "runs/a"}}, "write `init_from: STAGE_NAME` in the stage instead"),
    ({"name": "b", "kind": "finetune", "recipe": "launch/recipes/demo_finetune.yaml"}, "needs init_from: STAGE"),
    ({"name": "b", "kind": "evaluate", "target": "a", "teacher": "a"}, "'teacher' is not an input of evaluate stages"),
    ({"name": "a", "kind": "evaluate", "target": "a"}, "stage name 'a' is used twice"),
    ({"name": "b", "kind": "train"}, "kind='train'; use one of pretrain, finetune, distill, evaluate"),
    ({"name": "b", "kind": "evaluate", "target": "a", "reference": "a"},
     "reference: 'a' is a pretrain stage; name the evaluate stage"),
    ({"name": "b", "kind": "finetune", "recipe": "launch/recipes/demo_finetune.yaml", "init_from": "a",
      "reference": "a"}, "'reference' is not an input of finetune stages"),
])
def test_pipeline_file_mistakes_are_named(tmp_path, stage, message):
    from giant.errors import ConfigError
    from giant.stages.pipeline import load_pipeline

    path = _write(tmp_path / "p.yaml", {"name": "t", "stages": [
        {"name": "a", "kind": "pretrain", "recipe": "launch/recipes/demo_pretrain.yaml"}, stage]})
    with pytest.raises(ConfigError, match="stages\\[1\\]") as err:
        load_pipeline(path)
    assert message in str(err.value)


@pytest.mark.parametrize("name", ["demo", "vitg_k400", "vitg_ssv2"])
def test_shipped_pipelines_chain_by_stage_name(name, monkeypatch):
    from giant.stages.pipeline import load_pipeline

    monkeypatch.chdir(REPO)
    pipe = load_pipeline(f"launch/pipelines/{name}.yaml")
    kinds = [s.kind for s in pipe.stages]
    assert kinds.count("pretrain") >= 1 and "distill" in kinds
    for s in pipe.stages:
        assert all(isinstance(v, str) for v in s.inputs.values()), s.name  # stage names, no paths
        assert s.recipe is None or (REPO / s.recipe).is_file() or "distill" in s.recipe, s.recipe
    distill = next(s for s in pipe.stages if s.kind == "distill")
    evaluated = [s.inputs["target"] for s in pipe.stages if s.kind == "evaluate"]
    assert distill.name in evaluated and len(set(evaluated)) >= 2  # the student and a teacher-side model


def test_init_from_scratch_is_said_out_loud(tmp_path, monkeypatch):
    """`init_from: scratch` trains a supervised stage from random weights (the demo's hard-label
    baseline), even where the recipe names weights; leaving init_from out is still an error."""
    from giant.config import load_config
    from giant.errors import ConfigError
    from giant.stages.pipeline import load_pipeline, resolve

    monkeypatch.chdir(REPO)
    stage = {"name": "b", "kind": "finetune", "recipe": "launch/recipes/demo_finetune.yaml", "init_from": "scratch"}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "root": str(tmp_path / "runs"), "stages": [stage]}))
    (r,) = resolve(load_pipeline(path))
    assert load_config("launch/recipes/demo_finetune.yaml").checkpoint.init_from  # the recipe names weights
    assert r.cfg.checkpoint.init_from == "" and "checkpoint.init_from=" in r.args
    stage = {"name": "b", "kind": "evaluate", "init_from": "scratch"}
    path.write_text(yaml.safe_dump({"name": "p", "root": str(tmp_path / "runs"), "stages": [stage]}))
    with pytest.raises(ConfigError, match="not an input of evaluate"):
        load_pipeline(path)


def test_evaluate_slices_a_larger_head_by_the_rowmap(tmp_path):
    """The student distilled on K710 is scored on K400: its head's K400 rows, in K400 order."""
    import torch

    from giant.config import load_config
    from giant.errors import ConfigError
    from giant.stages.evaluate import _slice_head

    (tmp_path / "rows.json").write_text("[4, 1, 2]")
    cfg = load_config(None, [f"finetune.head_rowmap={tmp_path / 'rows.json'}", "model.num_classes=6"])
    w, b = torch.arange(12.0).reshape(6, 2), torch.arange(6.0)
    state = {"head.weight": w.clone(), "head.bias": b.clone()}
    assert _slice_head(cfg, cfg.model, state).num_classes == 3
    assert torch.equal(state["head.bias"], b[[4, 1, 2]]) and torch.equal(state["head.weight"], w[[4, 1, 2]])
    kept = {"head.weight": w[:3].clone(), "head.bias": b[:3].clone()}  # already sliced when fine-tuned
    assert _slice_head(cfg, cfg.model, kept) is cfg.model and torch.equal(kept["head.bias"], b[:3])
    with pytest.raises(ConfigError, match="row 4 but the head"):
        _slice_head(cfg, cfg.model, {"head.weight": w[:4], "head.bias": b[:4]})


@pytest.mark.parametrize("name", [".", "..", "", "a/b", "a\\b", "../up", "/abs"])
def test_stage_names_that_are_paths_are_refused_when_loaded(tmp_path, name):
    """A stage's name is its run dir under the root: `..` would be the root's parent."""
    from giant.errors import ConfigError
    from giant.stages.pipeline import load_pipeline

    path = _write(tmp_path / "p.yaml", {"name": "t", "root": str(tmp_path / "runs"), "stages": [
        {"name": name, "kind": "pretrain", "recipe": "launch/recipes/demo_pretrain.yaml"}]})
    with pytest.raises(ConfigError, match=r"stages\[0\]: 'name' must be a word without spaces"):
        load_pipeline(path)


@pytest.mark.parametrize("run_dirs, message", [
    (["x", "x"], "overlaps stage 'a'"), (["x", "x/inner"], "overlaps stage 'a'"), (["x/inner", "x"], "overlaps"),
    (["runs", None], "holds the pipeline root"), (["cfg", None], "holds the pipeline file"),
    ([".", None], "holds the pipeline root"),
])
def test_run_dirs_that_overlap_or_hold_the_pipeline_are_refused(tmp_path, monkeypatch, run_dirs, message):
    """Redoing one stage deletes its run dir: it must never take another stage, the root or the
    pipeline file with it."""
    from giant.errors import ConfigError
    from giant.stages.pipeline import load_pipeline

    monkeypatch.chdir(tmp_path)
    stages = [{"name": n, "kind": "pretrain", "recipe": "launch/recipes/demo_pretrain.yaml",
               **({"run_dir": d} if d else {})} for n, d in zip("ab", run_dirs)]
    (tmp_path / "cfg").mkdir()
    path = _write(tmp_path / "cfg" / "p.yaml", {"name": "t", "root": "runs/t", "stages": stages})
    with pytest.raises(ConfigError, match=message):
        load_pipeline(path)
