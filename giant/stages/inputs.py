"""Everything static a stage needs, checked before a process group, a model or DeepSpeed exists:
manifests (set, readable, every line parsed, labels inside the head), the weights to start from
or evaluate, the run dir. A mistake then costs the seconds of an interpreter and a torch import,
not an engine build after a queue wait. The checks read only files every rank sees, so every rank
of a multi-rank launch fails the same way at once and none waits in a collective for another.

The driver calls `check_stage` first thing in run_stage, evaluation in its run; `giant pipeline
run` calls it per stage with the inputs earlier stages will produce left out (`produced`). The
DeepSpeed JSON needs the device's precision, so the driver merges it right after (set_up).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from giant.errors import ConfigError, GiantError
from giant.stages.registry import EVAL_FILES

SCORES = EVAL_FILES[1]  # evaluate.SCORES, named without importing torch

TEACHER_WHERE = ("a giant run dir / weights.safetensors of a fine-tuned classifier, an official VideoMAE / "
                 "V2 checkpoint or a Hugging Face VideoMAE directory")


def check_stage(kind: str, cfg: Any, produced: tuple = (), run_dir: bool = True,
                reference: Optional[str] = None, out: Optional[str] = None) -> None:
    """All of `kind`'s static inputs; raises the first problem as one line. `produced`: config
    keys (checkpoint.init_from, distill.teacher) an earlier pipeline stage will write: skipped.
    run_dir=False: the caller owns the run dir (the pipeline). `reference`/`out`: evaluate's."""
    if kind == "evaluate":
        check_evaluate(cfg, reference, out, produced)
        return
    known = kind in ("pretrain", "finetune", "distill")  # another Stage subclass: what every stage has
    if known and not cfg.data.manifest:
        raise ConfigError(no_manifest(kind))
    if run_dir:
        check_run_dir(cfg.stage.run_dir, cfg.checkpoint.resume)
    if cfg.checkpoint.init_from and "checkpoint.init_from" not in produced:
        check_weights("checkpoint.init_from", cfg.checkpoint.init_from, "empty = random init")
    if kind == "distill" and "distill.teacher" not in produced:
        check_teacher(cfg.distill.teacher)
    if kind == "pretrain":
        manifest_entries(cfg, "data.manifest", "pretrain")
    elif known:
        _supervised(cfg, kind)


def no_manifest(kind: str) -> str:
    what = "a manifest" if kind == "pretrain" else "a labelled manifest (path,label)"
    return (f"data.manifest is empty (no recipe sets it): pass --recipe launch/recipes/demo_{kind}.yaml (or "
            f"another launch/recipes/*.yaml) or data.manifest=PATH, {what}; `giant data synth data/synth` "
            "writes a demo set (data/synth/train.csv)")


def _supervised(cfg: Any, kind: str) -> None:
    """Fine-tuning and distillation: a class count, labelled manifests inside it, the row maps."""
    from giant.data.manifest import check_labels

    classes = cfg.model.num_classes
    if classes < 1:
        raise ConfigError(f"model.num_classes must be set (>= 1) for a supervised stage: pass a {kind} recipe "
                          f"(--recipe launch/recipes/demo_{kind}.yaml) or model.num_classes=N")
    check_labels(manifest_entries(cfg, "data.manifest", "labeled"), "data.manifest", classes)
    if cfg.data.val_manifest:  # validated every stage.eval_every steps and at the end
        check_labels(manifest_entries(cfg, "data.val_manifest", "labeled"), "data.val_manifest", classes)
    for key in ("finetune.head_rowmap", "distill.head_rowmap"):
        path = _get(cfg, key)
        if path and (kind == "distill" or key.startswith("finetune")):
            _rowmap(path, key)


def check_evaluate(cfg: Any, reference: Optional[str] = None, out: Optional[str] = None,
                   produced: tuple = ()) -> None:
    """The target's weights are a classifier, the test list parses with labels inside its head,
    the reference has scores, the output folder can be one."""
    from giant.data.manifest import check_labels

    classes = 0
    if "checkpoint.init_from" not in produced:
        classes = _eval_target(cfg.checkpoint.init_from)
    key = "data.test_manifest" if cfg.data.test_manifest else "data.val_manifest"
    if not _get(cfg, key):
        raise ConfigError("data.test_manifest (or data.val_manifest) is empty: set it, e.g. "
                          "data.test_manifest=data/synth/val.csv")
    if cfg.finetune.head_rowmap:
        classes = len(_rowmap(cfg.finetune.head_rowmap, "finetune.head_rowmap")) if classes else 0
    check_labels(manifest_entries(cfg, key, "labeled"), key, classes,
                 f"evaluate it with the class list it was fine-tuned on ({key}), or set finetune.head_rowmap")
    if reference and "reference" not in produced and not (Path(reference) / SCORES).is_file():
        raise ConfigError(f"--reference {reference}: no {SCORES} there; evaluate the reference first "
                          f"(`giant evaluate RUN --out {reference}`)")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for results.json and predictions.csv")


def _eval_target(target: str) -> int:
    """The target's class count; raises when it is no classifier giant can evaluate."""
    from giant.artifact import artifact_model

    if not target:
        raise ConfigError("TARGET is empty: give a fine-tuned run dir or its weights.safetensors + model.json")
    if not Path(target).exists():
        raise ConfigError(f"TARGET {target} does not exist (give a fine-tuned run dir or its "
                          "weights.safetensors + model.json)")
    try:
        art = artifact_model(target)
    except GiantError as exc:
        raise ConfigError(f"{target}: {exc}") from None
    if art is None:
        raise ConfigError(f"{target} holds no model.json: point it at a run dir with weights.safetensors "
                          "(fine-tune first, or `giant export`)")
    check_weights("TARGET", target)
    classes = int(art.get("num_classes") or 0)
    if classes < 1:
        raise ConfigError(f"{target}: the weights are not a classifier (num_classes 0); evaluate a fine-tuned run")
    return classes


def manifest_entries(cfg: Any, key: str, list_format: str) -> list:
    """Every line of the manifest parsed (no video opened), as the dataset will read it; the
    parse is kept, so the dataset's read costs nothing more (giant/data/manifest.py)."""
    from giant.data.manifest import check_manifest, load_entries

    path = _get(cfg, key)
    check_manifest(path, key)
    return load_entries(path, cfg.data.root, list_format, cfg.stage.seed, weighted=False)


def check_teacher(path: str) -> str:
    if not path:
        raise ConfigError(f"distill.teacher is empty: a teacher without weights teaches nothing; give "
                          f"--teacher PATH or distill.teacher=PATH ({TEACHER_WHERE})")
    if not Path(path).exists():
        raise ConfigError(f"distill.teacher={path} does not exist; point --teacher / distill.teacher at "
                          f"{TEACHER_WHERE}")
    check_weights("distill.teacher", path)
    return path


def check_weights(key: str, path: str, fix: str = "") -> None:
    """`path` is weights giant can start from (a giant export, an HF directory or a checkpoint
    file): decided from names alone, no tensor read."""
    from giant.interop import detect_format

    if not Path(path).exists():
        raise ConfigError(f"{key}={path} does not exist (give a run dir, weights dir or checkpoint file"
                          f"{'; ' + fix if fix else ''})")
    try:
        detect_format(path)
    except GiantError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def check_run_dir(run_dir: str, resume: str) -> None:
    """A folder this run can create or use: not a file, inside a writable folder, and not an
    earlier run when checkpoint.resume=never (giant.safety.prepare_run_dir)."""
    from giant.safety import prepare_run_dir

    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"stage.run_dir={run_dir} is a file; give a folder (created when missing)")
    prepare_run_dir(path, resume)
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"stage.run_dir={run_dir}: {existing} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"stage.run_dir={run_dir}: {existing} is not writable; choose another stage.run_dir")


def _rowmap(path: str, key: str) -> list:
    from giant.artifact import read_rowmap

    if not Path(path).is_file():
        raise ConfigError(f"{key}={path} does not exist; write one with `giant data k710 rowmap`")
    return read_rowmap(path, key)


def _get(cfg: Any, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)
