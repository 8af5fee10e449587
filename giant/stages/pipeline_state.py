"""What a pipeline stage's run directory says about it (done / partial at step N / pending /
changed), the numbers `plan` shows before anything runs, and the final metrics `status` reads.

Reads run dirs only; deletes and starts nothing (giant/stages/pipeline_run.py does). What marks a
kind's stage done is its registry row (giant/stages/registry.py).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from giant import safety
from giant.errors import GiantError
from giant.stages.pipeline import RECORD, Pipeline, Resolved
from giant.stages.registry import KINDS


# ----------------------------------------------------------------------------- run-dir state
def read_record(run_dir: Path) -> Optional[dict]:
    try:
        return json.loads((run_dir / RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_record(r: Resolved, pipe: Pipeline, **extra: Any) -> None:
    """RUN_DIR/pipeline_stage.json: which config this run dir is being produced from."""
    run_dir = r.spec.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    rec = {"pipeline": pipe.name, "pipeline_file": str(pipe.path), "stage": r.spec.name,
           "kind": r.spec.kind, "hash": r.hash, "config": r.tree, "launched_at": time.time(),
           "completed_at": None, **extra}
    tmp = run_dir / (RECORD + ".tmp")
    tmp.write_text(json.dumps(rec, indent=1, default=str) + "\n")
    tmp.replace(run_dir / RECORD)


def mark_completed(run_dir: Path) -> None:
    rec = read_record(run_dir)
    if rec is not None and not rec.get("completed_at"):
        rec["completed_at"] = time.time()
        (run_dir / RECORD).write_text(json.dumps(rec, indent=1, default=str) + "\n")


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def artifact_complete(kind: str, run_dir: Path) -> bool:
    """What the kind's registry row says marks it done (training: the driver's summary says
    completed and the export is there; evaluate: results and per-video scores)."""
    return KINDS[kind].done(run_dir)


def partial_step(run_dir: Path) -> Optional[int]:
    """Step of the newest complete checkpoint, or None."""
    if not (run_dir / "checkpoints").is_dir():
        return None  # (and the engine, torch included, need not be imported to say so)
    from giant.engine.checkpoint import latest_tag

    tag = latest_tag(run_dir / "checkpoints")
    if tag is None:
        return None
    try:
        return int(tag.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        return None


@dataclass
class State:
    status: str  # done | partial | pending | changed | unrecorded | error
    step: Optional[int] = None
    changed: list[str] = field(default_factory=list)  # "key: old → new"
    note: str = ""
    redo: bool = False  # an evaluation of another config: its run dir is cleared and it runs again
    reused: bool = False  # done by another pipeline's stage (its record): read, never written or deleted

    def label(self) -> str:
        if self.status == "partial":
            return f"partial at step {self.step}"
        if self.status == "changed":
            return "changed: " + "; ".join(self.changed)
        return self.status


def stage_state(r: Resolved) -> State:
    run_dir, trains = r.spec.run_dir, KINDS[r.spec.kind].trains
    if r.error:
        return State("error", note=r.error)
    foreign = safety.not_ours(run_dir, r.spec.pipeline, r.spec.name)
    if foreign:  # unrelated files or another stage's run: never adopted, resumed or deleted
        return _reused(r) or State("unrecorded", note=foreign)
    complete = artifact_complete(r.spec.kind, run_dir)
    step = None if complete or not trains else partial_step(run_dir)
    error = (run_dir / "ERROR").read_text().strip() if (run_dir / "ERROR").is_file() else ""
    note = f"last attempt failed: {error}" if error else ""
    if not complete and step is None:
        return State("pending", note=note)
    rec = read_record(run_dir) or {}  # there: not_ours found this stage's record in a non-empty folder
    if rec.get("hash") != r.hash:
        changed = diff(rec.get("config", {}), r.tree)
        if not trains:  # nothing to resume, and its numbers describe another config: redo it
            return State("pending", changed=changed, redo=True,
                         note="evaluated again: its inputs or settings changed")
        return State("changed", step=step, changed=changed)
    return State("done", note=note) if complete else State("partial", step=step, note=note)


def _reused(r: Resolved) -> Optional[State]:
    """Another pipeline's finished stage of the same config (e.g. vitg_ssv2 pointing its root at
    vitg_k400's pre-training): its artifact is read as it is, never resumed, redone or deleted."""
    owner, rec = safety.read_owner(r.spec.run_dir), read_record(r.spec.run_dir) or {}
    if owner is None or rec.get("hash") != r.hash or not artifact_complete(r.spec.kind, r.spec.run_dir):
        return None
    return State("done", reused=True, note=f"reused as is: done by stage {owner[1]!r} of pipeline {owner[0]!r} "
                 "(its record); never resumed, redone or deleted from here")


def planned_state(r: Resolved, forced: bool) -> State:
    """stage_state, except that a --force'd stage is redone, if its run dir is its own to delete."""
    if not forced or r.error:
        return stage_state(r)
    foreign = safety.not_ours(r.spec.run_dir, r.spec.pipeline, r.spec.name)
    if foreign:
        return State("unrecorded", note=f"--force refused: {foreign}")
    return State("pending", note="forced: deleted and redone by run --force")


def deletion(pipe: Pipeline, r: Resolved) -> Optional[Path]:
    """What redoing this stage deletes (None: nothing); raises giant.safety's refusal."""
    return safety.check_run_dir(r.spec.run_dir, pipe.name, r.spec.name, pipe.protected())


def diff(old: dict, new: dict) -> list[str]:
    """'key: old → new' for every field that differs (unset = the recipe did not state it)."""
    rows = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "(unset)"), new.get(key, "(unset)")
        if json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            rows.append(f"{key}: {a} → {b}")
    return rows or ["(the recorded hash differs; the record holds no field list)"]


def downstream(pipe: Pipeline, names: list[str]) -> list[str]:
    """The named stages and every stage after the earliest of them (what --force redoes)."""
    for n in names:
        pipe.stage(n)  # a typo is an error, not a no-op
    if not names:
        return []
    first = min(pipe.stage(n).index for n in names)
    return [s.name for s in pipe.stages[first:]]


# ----------------------------------------------------------------------------- plan numbers
def plan_numbers(r: Resolved, world: int, by_name: dict[str, Resolved], flops: bool = True) -> dict:
    """World size, global batch (clips), peak lr, steps and estimated FLOPs of one stage, from
    its config alone (no data, no device). Evaluate: FLOPs per test video × videos if the test
    manifest is readable here. `flops=False` skips the estimate (it imports the model code)."""
    from giant.engine.schedule import peak_lr, videos_per_step

    cfg, kind = r.cfg, KINDS[r.spec.kind]
    row: dict[str, Any] = {"world": world, "global_batch": None, "lr": None, "steps": None, "flops": None}
    if cfg is None:
        return row
    if kind.trains:
        row.update(global_batch=world * cfg.optim.batch_size * cfg.optim.accum_steps * cfg.data.num_sample,
                   steps=cfg.optim.total_steps)
        row["lr"] = peak_lr(cfg.optim, videos_per_step(cfg.optim, world))  # videos, not clips
    if not flops:
        return row
    from giant.models import resolve as resolve_model

    inputs = r.spec.inputs
    teacher = _input_model(inputs["teacher"], by_name) if "teacher" in inputs else None
    if kind.trains:
        per_clip = kind.clip_flops(cfg, resolve_model(cfg.model), teacher)
        row.update(flops=per_clip * row["global_batch"] * cfg.optim.total_steps, flops_per_clip=per_clip)
        return row
    model = _input_model(inputs["target"], by_name)  # what an evaluation runs is its target's model
    if model is None:
        return row
    views = cfg.data.test_temporal_views * cfg.data.test_spatial_views
    per_video = views * kind.clip_flops(cfg, model)
    videos = _count_videos(cfg.data.test_manifest or cfg.data.val_manifest, cfg.data.root)
    row.update(views=views, videos=videos, flops_per_video=per_video,
               flops=per_video * videos if videos else None)
    return row


def _input_model(value: Any, by_name: dict[str, Resolved]) -> Any:
    """The model config an input stage exports (or an outside artifact's model.json)."""
    from giant.config import ModelConfig
    from giant.models import resolve as resolve_model

    if isinstance(value, str):
        up = by_name[value]
        return resolve_model(up.cfg.model) if up.cfg is not None else None
    from giant.artifact import artifact_model

    art = artifact_model(value["path"])
    if not art:
        return None
    fields = set(ModelConfig.__dataclass_fields__)
    return resolve_model(ModelConfig(**{k: v for k, v in art.items() if k in fields}))


def _count_videos(manifest: str, root: str) -> Optional[int]:
    if not manifest or not Path(manifest).is_file():
        return None
    from giant.data.manifest import read_manifest

    try:
        return len(read_manifest(manifest, root))
    except GiantError:
        return None


# ----------------------------------------------------------------------------- final metrics
def status_row(r: Resolved) -> dict:
    """One stage's final numbers from its run dir: the driver's summary.json (losses, steps,
    best validation top-1) or the evaluation's results.json (multi-view top-1/top-5)."""
    spec, run_dir = r.spec, r.spec.run_dir
    state = stage_state(r) if not r.error else State("error", note=r.error)
    summary = read_json(run_dir / "summary.json") or {}
    results = {} if KINDS[spec.kind].trains else read_json(run_dir / "results.json") or {}
    named = {k: v if isinstance(v, str) else v["path"] for k, v in spec.inputs.items()}  # stage or path
    return {"stage": spec.name, "kind": spec.kind, "status": state.label(), "run_dir": str(run_dir),
            "steps": summary.get("steps"), "first_loss": summary.get("first_loss"),
            "last_loss": summary.get("last_loss"), "best_val_top1": summary.get("best_val_top1"),
            "best_step": (summary.get("best") or {}).get("step"), "exported": summary.get("exported"),
            "test_top1": results.get("top1"), "test_top5": results.get("top5"),
            "test_videos": results.get("videos"), "views": results.get("views"),
            "agreement_top1": results.get("agreement_top1"), "kl_from_reference": results.get("kl_from_reference"),
            "reference": named.get("reference"), "target": named.get("target")}
