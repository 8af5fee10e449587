"""giant deletes only what it created (giant/safety.py), and every deletion goes through it.

Unit level: a run dir goes only under its own record; `/`, $HOME, the cwd, the checkout, the
pipeline root and file and every folder holding one are kept even with a forged record;
checkpoint folders go only under giant's tag names inside `checkpoints/`, and pruning leaves
every other file there. End to end, `giant pipeline run [--force]` in a temporary workspace
whose `launch/pretrain.py` is a stub that writes a finished stage at once (a stage takes well
under a second): unrelated files in a run dir, `run_dir: .`, a stage named `..`, a link to a
folder of files and another pipeline's or stage's record are refused with one line naming the
folder and stay byte for byte; a stage the pipeline created is listed, then deleted."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from giant import safety
from giant.errors import GiantError

REPO = Path(__file__).resolve().parents[1]
STUB = """import json, sys
from pathlib import Path
run = Path(next(a.split("=", 1)[1] for a in sys.argv if a.startswith("stage.run_dir=")))
run.mkdir(parents=True, exist_ok=True)
(run / "summary.json").write_text(json.dumps({"reason": "completed", "steps": 1}))
(run / "model.json").write_text("{}")
(run / "weights.safetensors").write_text("x")
"""
RECIPE = str(REPO / "launch/recipes/demo_pretrain.yaml")


def snapshot(folder: Path) -> dict:
    """Every file's bytes and every link's target under `folder` (links not followed)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(folder))
            if p.is_symlink():
                found[rel] = ("link", os.readlink(p))
            elif p.is_file():
                found[rel] = p.read_bytes()
    return found


def files(folder: Path, **extra: str) -> dict:
    """A folder of unrelated files (one in a sub-folder), → its snapshot."""
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    (folder / "thesis.tex").write_text("\\section{Results}\n")
    (folder / "sub" / "data.bin").write_bytes(bytes(range(256)))
    for name, text in extra.items():
        (folder / name).write_text(text)
    return snapshot(folder)


def record(folder: Path, pipeline: str = "t", stage: str = "a") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / safety.RECORD).write_text(json.dumps({"pipeline": pipeline, "stage": stage, "hash": "forged"}))


# ----------------------------------------------------------------------------- the rule
def test_run_dir_is_deleted_only_under_its_own_record(tmp_path):
    assert safety.remove_run_dir(tmp_path / "missing", "t", "a") is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert safety.remove_run_dir(empty, "t", "a") is None and empty.is_dir()  # nothing to delete

    unrelated = tmp_path / "unrelated"
    before = files(unrelated)
    with pytest.raises(GiantError, match=re.escape(f"{unrelated} holds files this pipeline did not write")):
        safety.remove_run_dir(unrelated, "t", "a")
    for owner, whose in ((("other", "a"), "pipeline 'other'"), (("t", "b"), "stage 'b'")):
        theirs = tmp_path / f"{owner[0]}_{owner[1]}"
        record(theirs, *owner)
        kept = files(theirs)
        with pytest.raises(GiantError, match=whose):
            safety.remove_run_dir(theirs, "t", "a")
        assert snapshot(theirs) == kept
    link = tmp_path / "link"
    link.symlink_to(unrelated)
    with pytest.raises(GiantError, match="holds files this pipeline did not write"):
        safety.remove_run_dir(link, "t", "a")
    linked_record = tmp_path / "linked_record"  # a record elsewhere proves nothing about this folder
    files(linked_record)
    record(tmp_path / "real_record")
    (linked_record / safety.RECORD).symlink_to(tmp_path / "real_record" / safety.RECORD)
    with pytest.raises(GiantError, match="no pipeline_stage.json"):
        safety.remove_run_dir(linked_record, "t", "a")
    assert snapshot(unrelated) == before and link.is_symlink()

    ours = tmp_path / "ours"
    record(ours)
    (ours / "checkpoints").mkdir()
    assert safety.remove_run_dir(ours, "t", "a") == ours.resolve() and not ours.exists()
    target = tmp_path / "scratch_run"  # a run dir that is a link to other storage keeps its link
    record(target)
    (tmp_path / "run_link").symlink_to(target)
    assert safety.remove_run_dir(tmp_path / "run_link", "t", "a") == target.resolve()
    assert (tmp_path / "run_link").is_symlink() and target.is_dir() and not any(target.iterdir())


def test_protected_paths_are_kept_whatever_the_record_says(tmp_path, monkeypatch):
    for real in ("/", REPO, Path.home(), Path.cwd(), Path.cwd().parent):
        with pytest.raises(GiantError, match="never deletes"):
            safety.check_protected(real)
    home, cwd, repo = tmp_path / "home", tmp_path / "cwd", tmp_path / "checkout"
    root = tmp_path / "pipes" / "runs" / "t"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(safety, "REPO", repo)
    for folder in (home, cwd, repo, root, tmp_path / "pipes"):
        record(folder)  # a forged (or copied) record naming this very stage
    kept = files(tmp_path)
    monkeypatch.chdir(cwd)
    (tmp_path / "cwd_link").symlink_to(cwd)
    for doomed in (home, cwd, repo, root, tmp_path / "pipes", tmp_path / "cwd_link", Path(".")):
        with pytest.raises(GiantError, match="which giant never deletes"):
            safety.remove_run_dir(doomed, "t", "a", protect=[root])
    with pytest.raises(GiantError, match="holds"):  # a folder holding $HOME and the rest
        safety.check_protected(tmp_path)
    assert snapshot(tmp_path) == {**kept, "cwd_link": ("link", str(cwd))}


def test_checkpoint_folders_only_under_giant_tag_names(tmp_path):
    ck = tmp_path / "run" / "checkpoints"
    tag = ck / "step_00000002"
    tag.mkdir(parents=True)
    (tag / "giant_meta.json").write_text("{}")
    ours = [ck / ".tmp_step_00000004", ck / ".old_step_00000002", tag / "universal", tag / ".tmp_universal"]
    for d in ours:
        (d / "zero").mkdir(parents=True)
    (tag / ".failed_universal").write_text("conversion failed\n")
    theirs = [ck / "notes", ck / "step_2", ck / "my_step_00000002", ck / ".tmp_mine", tmp_path / "step_00000002",
              tmp_path / "run" / "universal", ck / "universal", tag / "sub"]
    for d in theirs:
        d.mkdir(parents=True, exist_ok=True)
        (d / "keep.txt").write_text("mine\n")
    (ck / "step_00000009").symlink_to(tmp_path / "step_00000002")  # a tag that is a link to elsewhere
    kept = snapshot(tmp_path / "step_00000002")
    for d in [*theirs, ck / "step_00000009"]:
        with pytest.raises(GiantError, match="not one of giant's checkpoint folders"):
            safety.remove_checkpoint_dir(d)
    assert snapshot(tmp_path / "step_00000002") == kept
    for d in [*ours, tag / ".failed_universal", tag]:
        safety.remove_checkpoint_dir(d)
        assert not d.exists(), d
    safety.remove_checkpoint_dir(ck / ".tmp_step_00000006")  # missing is fine
    assert all((d / "keep.txt").read_text() == "mine\n" for d in theirs if d.parent != tag)


def test_pruning_never_touches_what_is_not_a_giant_tag(tmp_path):
    from giant.engine import checkpoint as ck

    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        (root / ck.tag_for(step)).mkdir(parents=True)
        (root / ck.tag_for(step) / ck.META).write_text("{}")
    for leftover in (".tmp_step_00000008", ".old_step_00000004"):
        (root / leftover).mkdir()
    for mine in (".tmp_notes", ".old_backup", "step_abc", "plots"):
        (root / mine).mkdir()
        (root / mine / "f.bin").write_bytes(b"\x00\x01")
    (root / ".tmp_readme").write_text("my notes\n")
    kept = {k: v for k, v in snapshot(root).items() if not k.startswith(("step_0", ".tmp_step", ".old_step"))}
    ck.CheckpointManager(root, keep_last=1)._prune(keep="step_00000006")
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(("step_0", ".tmp_step", ".old_step"))) \
        == ["step_00000006"]
    assert {k: v for k, v in snapshot(root).items() if not k.startswith("step_0")} == kept


# ----------------------------------------------------------------------------- giant pipeline run
def workspace(tmp_path: Path) -> Path:
    """A folder with a stub launch/pretrain.py: the pipeline launches it instead of training."""
    w = tmp_path / "w"
    (w / "launch").mkdir(parents=True)
    (w / "launch" / "pretrain.py").write_text(STUB)
    # the recipe's manifest: `pipeline run` checks outside inputs before it starts (no video is read)
    (w / "data" / "synth").mkdir(parents=True)
    (w / "data" / "synth" / "train.csv").write_text("path,label\nvideos/00000.mp4,0\n")
    return w


def pipeline_file(path: Path, stages: list[dict], **top) -> Path:
    stages = [{"kind": "pretrain", "recipe": RECIPE, **s} for s in stages]
    path.write_text(yaml.safe_dump({"name": "t", **top, "stages": stages}, sort_keys=False))
    return path


def giant(cwd: Path, *args: str, home: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **({"HOME": str(home)} if home else {})}
    return subprocess.run([sys.executable, "-m", "giant.cli", "pipeline", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def _unrelated(tmp_path: Path) -> tuple:
    w = workspace(tmp_path)
    return w, pipeline_file(w / "p.yaml", [{"name": "a"}]), w / "runs" / "t" / "a", "a", "holds files this pipeline"


def _dot(tmp_path: Path) -> tuple:
    here = tmp_path / "project"  # the working directory, full of the user's files; root elsewhere
    p = pipeline_file(tmp_path / "p.yaml", [{"name": "a", "run_dir": "."}], root=str(tmp_path / "runs"))
    return here, p, here, "a", f"{here} holds files this pipeline"


def _dot_holding_the_pipeline(tmp_path: Path) -> tuple:
    w = workspace(tmp_path)
    return w, pipeline_file(w / "p.yaml", [{"name": "a", "run_dir": "."}]), w, "a", "run_dir . holds the pipeline"


def _dotdot(tmp_path: Path) -> tuple:
    w = workspace(tmp_path)  # `..` would be runs/, the root's parent
    return w, pipeline_file(w / "p.yaml", [{"name": ".."}]), w / "runs", "..", "and not '.' or '..'"


def _link(tmp_path: Path) -> tuple:
    w = workspace(tmp_path)
    (w / "runs" / "t").mkdir(parents=True)
    (w / "runs" / "t" / "a").symlink_to(tmp_path / "elsewhere")
    return w, pipeline_file(w / "p.yaml", [{"name": "a"}]), tmp_path / "elsewhere", "a", \
        f"runs/t/a (→ {tmp_path / 'elsewhere'}) holds files"


def _other_pipeline(tmp_path: Path) -> tuple:
    w = workspace(tmp_path)
    record(w / "runs" / "t" / "a", pipeline="other")
    return w, pipeline_file(w / "p.yaml", [{"name": "a"}]), w / "runs" / "t" / "a", "a", \
        "holds stage 'a' of pipeline 'other'"


def _other_stage(tmp_path: Path) -> tuple:
    w = workspace(tmp_path)
    record(w / "runs" / "t" / "a", stage="b")
    return w, pipeline_file(w / "p.yaml", [{"name": "a"}]), w / "runs" / "t" / "a", "a", \
        "holds stage 'b' of pipeline 't'"


@pytest.mark.parametrize("case", [_unrelated, _dot, _dot_holding_the_pipeline, _dotdot, _link, _other_pipeline,
                                  _other_stage])
def test_run_and_force_refuse_what_the_pipeline_did_not_create(tmp_path, case):
    cwd, path, folder, stage, why = case(tmp_path)
    before = files(folder)
    for args in (["run", str(path), "--launcher", "python"], ["run", str(path), "--launcher", "python",
                                                              "--force", stage]):
        proc = giant(cwd, *args)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert why in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith("giant pipeline: error: ") and "Traceback" not in proc.stderr
        assert "$ " not in proc.stdout  # nothing launched
        assert snapshot(folder) == before  # no record adopted into it, nothing deleted
    plan = giant(cwd, "plan", str(path), "--no-flops", "--json", "--force", stage)
    if plan.returncode == 0:  # the file loads: the folder is planned as unrecorded, not deleted
        row = json.loads(plan.stdout)["stages"][0]
        assert row["status"] == "unrecorded" and row["delete"] is None and why in row["note"]
    assert snapshot(folder) == before


def test_force_lists_then_deletes_the_stage_the_pipeline_created(tmp_path):
    w = workspace(tmp_path)
    path = pipeline_file(w / "p.yaml", [{"name": "a"}, {"name": "b"}])
    assert giant(w, "run", str(path), "--launcher", "python").returncode == 0
    a, b = w / "runs" / "t" / "a", w / "runs" / "t" / "b"
    (a / "stale.txt").write_text("from the first run\n")
    beside = files(w / "runs" / "t" / "notes")  # the user's files next to the run dirs
    plan = giant(w, "plan", str(path), "--no-flops", "--force", "b")
    assert plan.returncode == 0 and f"b: would delete: {b.resolve()}" in plan.stdout, plan.stdout
    assert "a: would delete" not in plan.stdout and (b / safety.RECORD).is_file()  # plan deletes nothing
    (b / "stale.txt").write_text("from the first run\n")
    proc = giant(w, "run", str(path), "--launcher", "python", "--force", "b")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines.index(f"[b] --force: will delete {b.resolve()}") < lines.index("[b] pending: starting pretrain")
    assert not (b / "stale.txt").exists() and (b / "summary.json").is_file()  # deleted, then redone
    assert (a / "stale.txt").is_file() and snapshot(w / "runs" / "t" / "notes") == beside


def test_force_keeps_protected_folders_even_with_a_forged_record(tmp_path):
    home, here = tmp_path / "home", tmp_path / "project"
    root = str(tmp_path / "runs")
    cases = [(here, pipeline_file(tmp_path / "dot.yaml", [{"name": "a", "run_dir": "."}], root=root), here),
             (here, pipeline_file(tmp_path / "home.yaml", [{"name": "a", "run_dir": str(home)}], root=root), home)]
    for cwd, path, folder in cases:
        record(folder)  # says it is stage a of pipeline t: still never deleted
        before = files(folder)
        plan = giant(cwd, "plan", str(path), "--no-flops", "--force", "a", home=home)
        assert plan.returncode == 2 and "which giant never deletes" in plan.stdout, plan.stdout + plan.stderr
        proc = giant(cwd, "run", str(path), "--launcher", "python", "--force", "a", home=home)
        assert proc.returncode == 2 and "which giant never deletes" in proc.stderr, proc.stderr
        assert len(proc.stderr.splitlines()) == 1 and "$ " not in proc.stdout
        assert snapshot(folder) == before


def test_empty_folder_is_adopted_and_another_pipelines_finished_stage_reused_read_only(tmp_path):
    w = workspace(tmp_path)
    (w / "runs" / "t" / "a").mkdir(parents=True)
    path = pipeline_file(w / "p.yaml", [{"name": "a"}])
    assert giant(w, "run", str(path), "--launcher", "python").returncode == 0
    assert json.loads((w / "runs" / "t" / "a" / safety.RECORD).read_text())["stage"] == "a"
    rec = json.loads((w / "runs" / "t" / "a" / safety.RECORD).read_text())
    (w / "runs" / "t" / "a" / safety.RECORD).write_text(json.dumps({**rec, "completed_at": None}))
    before = snapshot(w / "runs" / "t" / "a")
    other = pipeline_file(w / "other.yaml", [{"name": "a"}], name="other", root="runs/t")
    proc = giant(w, "run", str(other), "--launcher", "python")
    assert proc.returncode == 0 and "reused as is: done by stage 'a' of pipeline 't'" in proc.stdout, proc.stderr
    proc = giant(w, "run", str(other), "--launcher", "python", "--force", "a")
    assert proc.returncode == 2 and "--force refused" in proc.stderr, proc.stderr
    assert snapshot(w / "runs" / "t" / "a") == before  # not even its completed_at was written
