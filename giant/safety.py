"""The one deletion rule: giant deletes only what it created.

- A stage's run dir only when its `pipeline_stage.json` (giant's record, written when the
  pipeline launches the stage) names this pipeline and this stage.
- A checkpoint folder only directly inside a run's `checkpoints/` under giant's tag names
  (`step_N`, `.tmp_step_N`, `.old_step_N`) or, inside a complete tag, its `universal` copy and
  that copy's `.tmp_universal` / `.failed_universal` leftovers.
- Paths are resolved (symlinks too) first, and `/`, `$HOME`, the working directory, the giant
  checkout, whatever the caller adds (the pipeline root and file) and every folder that holds
  one of them are never deleted, whatever a record says: a record can be copied or forged.

Every deletion in giant goes through `remove_run_dir` or `remove_checkpoint_dir`; a refusal is a
GiantError naming the folder and what to do. The same rule keeps a fresh start from writing over
an earlier run (`prepare_run_dir`). Imports nothing of giant but errors (it sits below
the engine and the stages, and submit_pipeline.sh calls it without torch).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterable, Optional

from giant.errors import ConfigError, GiantError

RECORD = "pipeline_stage.json"
REPO = Path(__file__).resolve().parents[1]
TAG = r"step_\d{8,}"  # engine/checkpoint.py's tag_for
CHECKPOINT_NAMES = re.compile(rf"^(\.tmp_|\.old_)?{TAG}$")  # directly inside checkpoints/
TAG_NAMES = re.compile(r"^(\.tmp_|\.failed_)?universal$")  # directly inside a step_N tag
TAG_META = "giant_meta.json"  # what makes a step_N folder a complete giant checkpoint
# What a run that has started training leaves in its directory (config.yaml, ds_config.json
# and the ERROR/PREEMPTED markers are rewritten by every start and prove nothing);
# "weights.safetensors" is giant.artifact.WEIGHTS, named here to import nothing of giant.
RUN_RECORDS = ("checkpoints", "metrics.jsonl", "tensorboard", "images", "weights.safetensors", "summary.json")


class DeletionRefused(GiantError):
    """giant was asked to delete something it did not create, or that holds what it must keep."""


def protected(extra: Iterable[str | Path] = ()) -> list[Path]:
    """The resolved paths that neither they nor any folder holding them is ever deleted."""
    paths = [Path("/"), Path.cwd(), REPO, *(Path(p) for p in extra)]
    try:
        paths.append(Path.home())
    except RuntimeError:  # no $HOME and no passwd entry (some containers): nothing to keep there
        pass
    return [p.resolve() for p in paths]


def _show(path: Path, real: Path) -> str:
    """The path as the user wrote it, and where it really is when that differs ('.', a link)."""
    if not path.parts:
        return str(real)
    return str(path) if Path(os.path.abspath(path)) == real else f"{path} (→ {real})"


def check_protected(path: str | Path, extra: Iterable[str | Path] = ()) -> Path:
    """→ the resolved path, unless it is or holds a protected one (then refused)."""
    path = Path(path)
    real = path.resolve()
    for keep in protected(extra):
        if keep == real or real in keep.parents:
            what = "is" if keep == real else "holds"
            raise DeletionRefused(f"{_show(path, real)} {what} {keep}, which giant never deletes (/, $HOME, the "
                                  "working directory, the giant checkout, the pipeline root and file); "
                                  "give the stage its own run_dir")
    return real


def read_owner(run_dir: Path) -> Optional[tuple[str, str]]:
    """(pipeline, stage) from the folder's own record, or None when it has no readable one (a
    record that is a link to a file elsewhere proves nothing about this folder)."""
    record = run_dir / RECORD
    if record.is_symlink() or not record.is_file():
        return None
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("pipeline", "stage")):
        return None
    return data["pipeline"], data["stage"]


def not_ours(run_dir: str | Path, pipeline: str, stage: str) -> Optional[str]:
    """Why `run_dir` is not this stage's to use or delete, or None: missing, empty, or its record
    names this pipeline and stage. The reason is one line naming the folder and the fix."""
    path = Path(run_dir)
    real = path.resolve()
    fix = f"move its files away or give stage {stage!r} another run_dir; giant neither adopts nor deletes it"
    if not real.exists():
        return None
    if not real.is_dir():
        return f"{_show(path, real)} is a file, not a folder; give stage {stage!r} another run_dir"
    try:
        if not any(real.iterdir()):
            return None
    except OSError as exc:
        return f"{_show(path, real)} cannot be read ({exc.strerror}); {fix}"
    owner = read_owner(real)
    if owner is None:
        return f"{_show(path, real)} holds files this pipeline did not write (no {RECORD}); {fix}"
    if owner != (pipeline, stage):
        return (f"{_show(path, real)} holds stage {owner[1]!r} of pipeline {owner[0]!r} (its {RECORD}), not "
                f"stage {stage!r} of {pipeline!r}; {fix}")
    return None


def check_run_dir(run_dir: str | Path, pipeline: str, stage: str,
                  protect: Iterable[str | Path] = ()) -> Optional[Path]:
    """What `remove_run_dir` would delete: the resolved folder, or None when there is nothing to
    delete (missing or empty). Raises DeletionRefused when the rule forbids it."""
    reason = not_ours(run_dir, pipeline, stage)
    if reason:
        raise DeletionRefused(f"not deleted: {reason}")
    real = Path(run_dir).resolve()
    if not real.is_dir() or not any(real.iterdir()):
        return None
    return check_protected(run_dir, protect)


def remove_run_dir(run_dir: str | Path, pipeline: str, stage: str,
                   protect: Iterable[str | Path] = ()) -> Optional[Path]:
    """Delete a stage's run dir under the rule; → what was deleted (None: nothing was there).
    A run dir that is a link keeps the link: its target is emptied, not removed."""
    real = check_run_dir(run_dir, pipeline, stage, protect)
    if real is None:
        return None
    shutil.rmtree(real)
    if Path(run_dir).is_symlink():
        real.mkdir()
    return real


def check_checkpoint_dir(path: str | Path) -> Path:
    """→ the resolved path when the rule lets giant delete it (see the module docstring)."""
    path = Path(os.path.abspath(path))
    real = path.resolve()
    parent = path.parent
    inside_tag = re.fullmatch(TAG, parent.name) and (parent.parent.name == "checkpoints"
                                                     or (parent / TAG_META).is_file())  # a copied tag
    ok = not path.is_symlink() and (
        (CHECKPOINT_NAMES.match(path.name) and parent.name == "checkpoints")
        or (TAG_NAMES.match(path.name) and inside_tag))
    if not ok:
        raise DeletionRefused(f"{_show(path, real)} is not one of giant's checkpoint folders (checkpoints/step_N, "
                              ".tmp_step_N, .old_step_N, or a tag's universal copy); not deleted: move it "
                              "away by hand if it is stale")
    return check_protected(path)


def remove_checkpoint_dir(path: str | Path, ignore_errors: bool = False) -> None:
    """Delete one of giant's checkpoint folders (or a tag's `.failed_universal` marker file);
    missing is fine. `ignore_errors` is for OS errors only: a refusal always raises."""
    if not os.path.lexists(path):
        return
    real = check_checkpoint_dir(path)
    if real.is_dir():
        shutil.rmtree(real, ignore_errors=ignore_errors)
        return
    try:
        real.unlink(missing_ok=True)
    except OSError:
        if not ignore_errors:
            raise


def prepare_run_dir(run_dir: str | Path, resume: str) -> None:
    """Refuse checkpoint.resume=never over an earlier run: the new run would append to its
    metrics.jsonl and TensorBoard logs, and its later checkpoints would stay next to the new
    ones (a requeue with resume=auto would then continue the OLD run). Runs before any process
    group exists; every rank sees the same files, so every rank refuses alike."""
    if resume != "never":
        return

    def holds(path: Path) -> bool:  # an empty file or folder (a start that failed) holds nothing
        return path.stat().st_size > 0 if path.is_file() else path.is_dir() and any(path.iterdir())

    run_dir = Path(run_dir)
    found = [name for name in RUN_RECORDS if holds(run_dir / name)]
    if found:
        raise ConfigError(
            f"checkpoint.resume=never but {run_dir} already holds a run ({', '.join(found)}); "
            f"starting over there would mix the two. Use a new stage.run_dir, move or delete "
            f"{run_dir}, or set checkpoint.resume=auto to continue that run")
