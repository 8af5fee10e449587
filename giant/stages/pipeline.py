"""The progressive pipeline as data: a pipeline file, its stages resolved against each other,
and what each stage's run directory says about it (done / partial at step N / pending).

A pipeline file names stages in order; a stage's input is an EARLIER stage's exported artifact
by stage name (`init_from: pretrain`, `teacher: k710`, `target: finetune_k400`; an evaluation's
`reference: eval_teacher` names an earlier evaluation's scores), resolved here
to that stage's run directory, so no path is ever copied by hand. A stage is done when its
artifact is complete AND was produced from the same resolved config: the hash of what
determines the result (recipe + overrides + inputs, see UNHASHED) is recorded in
RUN_DIR/pipeline_stage.json when the stage is launched, and compared on every later run, so a
changed value is reported by field name instead of being silently skipped or mixed into a
resume. An evaluation whose config changed is redone instead (it has nothing to resume).
Launching (giant pipeline run) lives in giant/stages/pipeline_cli.py; Slurm in
launch/slurm/submit_pipeline.sh. This module starts nothing.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from giant import safety
from giant.config import RunConfig, from_dict, load_config, parse_overrides, validate, yaml_load
from giant.errors import ConfigError, GiantError

KINDS = ("pretrain", "finetune", "distill", "evaluate")
TRAINING = ("pretrain", "finetune", "distill")
# stage-file key → the config field it fills with an earlier stage's run dir
INPUTS = {"init_from": "checkpoint.init_from", "teacher": "distill.teacher"}
NEEDS = {"finetune": ("init_from",), "distill": ("teacher",), "evaluate": ("target",)}  # a student may start from its own init
SCRATCH = "scratch"  # `init_from: scratch`: a supervised stage from random weights (e.g. a baseline)
RECORD = safety.RECORD  # giant.safety deletes a run dir only when this record names its stage
# Settings that change how a stage runs, not what it produces: left out of the hash, so changing
# them (more loader workers, another ZeRO layout, checkpoint cadence) never invalidates a stage.
UNHASHED = ("logging.", "engine.", "stage.run_dir", "stage.stop_after", "checkpoint.resume",
            "checkpoint.keep_last", "checkpoint.every_steps", "data.num_workers",
            "data.loader_timeout_s", "data.prefetch_factor", "data.persistent_workers", "precision.cast",
            "precision.decoder_matmul")
STAGE_KEYS = {"name", "kind", "recipe", "ds", "run_dir", "overrides", "gpus", "init_from", "teacher", "target",
              "reference"}
TOP_KEYS = {"name", "root", "gpus_per_node", "defaults", "stages"}
DEFAULT_KEYS = {"ds", "gpus", "overrides"}


@dataclass
class StageSpec:
    """One stage as written in the pipeline file (paths as given, relative to the cwd)."""

    name: str
    kind: str
    run_dir: Path
    recipe: Optional[str] = None
    ds: Optional[str] = None
    overrides: list[str] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)  # init_from/teacher/target/reference → name | {path: P}
    gpus: int = 1
    index: int = 0
    pipeline: str = ""  # the pipeline's name: what this stage's record must say to be its own


@dataclass
class Pipeline:
    name: str
    path: Path
    root: Path
    stages: list[StageSpec]
    gpus_per_node: int = 8

    def protected(self) -> list[Path]:
        """Besides giant.safety's own list: the pipeline root and file are never deleted."""
        return [self.root, self.path]

    def stage(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(f"{self.path}: no stage named {name!r}; stages: {[s.name for s in self.stages]}")


@dataclass
class Resolved:
    """A stage with its inputs resolved: the command to launch it, the config it will run with
    (for training stages: exactly what launch/<kind>.py will load) and its hash."""

    spec: StageSpec
    script: str = ""
    args: list[str] = field(default_factory=list)
    sbatch_args: list[str] = field(default_factory=list)  # launch/slurm/<kind>.sbatch's arguments
    tree: dict = field(default_factory=dict)  # flat dotted key → value: what the hash covers
    hash: str = ""
    cfg: Optional[RunConfig] = None
    cfg_tree: dict = field(default_factory=dict)  # nested recipe + overrides (an evaluate stage reads it)
    error: Optional[str] = None


# ----------------------------------------------------------------------------- the file
def _overrides(value: Any, where: str) -> list[str]:
    """`{optim.lr: 1e-3}` or `[optim.lr=1e-3]` → ['optim.lr=1e-3']."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [f"{k}={_scalar(v)}" for k, v in value.items()]
    if isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value):
        return list(value)
    raise ConfigError(f"{where}: overrides must be a mapping (optim.lr: 1e-3) or a list of "
                      "KEY=VALUE strings")


def _scalar(v: Any) -> str:
    if isinstance(v, str):
        return v
    return yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()


def load_pipeline(path: str | Path) -> Pipeline:
    """Parse and check a pipeline file (names unique, kinds known, inputs name earlier stages
    that export weights, no input path hand-written into overrides)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pipeline file {path} does not exist (shipped ones: launch/pipelines/*.yaml)")
    try:
        data = yaml_load(path.read_text()) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"pipeline file {path} is not UTF-8 text (byte {exc.start}); a pipeline is YAML "
                          "(see launch/pipelines/)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    _check_keys(data, TOP_KEYS, str(path))
    name = str(data.get("name") or path.stem)
    root = Path(data.get("root") or f"runs/{name}")
    defaults = data.get("defaults") or {}
    _check_keys(defaults, DEFAULT_KEYS, f"{path}: defaults")
    raw = data.get("stages")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{path}: 'stages' must be a non-empty list of stages")
    stages: list[StageSpec] = []
    for i, item in enumerate(raw):
        stages.append(_stage(item, i, stages, defaults, root, f"{path}: stages[{i}]"))
        stages[-1].pipeline = name
    _check_run_dirs(stages, root, path)
    return Pipeline(name=name, path=path, root=root, stages=stages,
                    gpus_per_node=int(data.get("gpus_per_node", 8)))


def _check_keys(data: Any, allowed: set, where: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(allowed)}")


def _stage(item: Any, i: int, earlier: list[StageSpec], defaults: dict, root: Path, where: str) -> StageSpec:
    _check_keys(item, STAGE_KEYS, where)
    name, kind = item.get("name"), item.get("kind")
    if not name or not isinstance(name, str) or name in (".", "..") or any(c in name for c in " /\\:,"):
        raise ConfigError(f"{where}: 'name' must be a word without spaces, '/', '\\', ':' or ',' and not "
                          f"'.' or '..' (got {name!r}; it names the stage's run dir under the root)")
    where = f"{where} ({name})"
    if name in {s.name for s in earlier}:
        raise ConfigError(f"{where}: stage name {name!r} is used twice")
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind={kind!r}; use one of {', '.join(KINDS)}")
    if kind in TRAINING and not item.get("recipe"):
        raise ConfigError(f"{where}: a {kind} stage needs a recipe (launch/recipes/*.yaml)")
    overrides = _overrides(defaults.get("overrides"), where) + _overrides(item.get("overrides"), where)
    for o in overrides:
        key = o.split("=", 1)[0].strip()
        if key in INPUTS.values() or key == "stage.run_dir":
            hint = "run_dir: DIR" if key == "stage.run_dir" else \
                f"{[k for k, v in INPUTS.items() if v == key][0]}: STAGE_NAME"
            raise ConfigError(f"{where}: override {key} — write `{hint}` in the stage instead, so the "
                              "path comes from the pipeline (never a hand-copied path)")
    inputs, scratch = {}, item.get("init_from") == SCRATCH
    if scratch:  # said out loud, so a forgotten init_from is still an error
        if kind not in TRAINING:
            raise ConfigError(f"{where}: 'init_from' is not an input of {kind} stages")
        overrides.append(f"{INPUTS['init_from']}=")
    for key in ("init_from", "teacher", "target", "reference"):
        if key in item and not (key == "init_from" and scratch):
            inputs[key] = _input(item[key], key, kind, earlier, where)
    missing = [k for k in NEEDS.get(kind, ()) if k not in inputs and not (k == "init_from" and scratch)]
    if missing:
        raise ConfigError(f"{where}: a {kind} stage needs {', '.join(f'{k}: STAGE' for k in missing)} "
                          "(an earlier stage's name)")
    return StageSpec(name=name, kind=kind, run_dir=Path(item.get("run_dir") or root / name),
                     recipe=item.get("recipe"), ds=item.get("ds", defaults.get("ds")),
                     overrides=overrides, inputs=inputs, gpus=int(item.get("gpus", defaults.get("gpus", 1))),
                     index=i)


def _check_run_dirs(stages: list[StageSpec], root: Path, path: Path) -> None:
    """Each stage has its own run dir, holding neither another stage's, the root nor the pipeline
    file: redoing one stage deletes its run dir and must never take anything else with it."""
    real = [(s, s.run_dir.resolve()) for s in stages]
    keep = {"the pipeline root": root.resolve(), "the pipeline file": path.resolve()}
    for i, (s, d) in enumerate(real):
        where = f"{path}: stages[{s.index}] ({s.name})"
        for what, k in keep.items():
            if d == k or d in k.parents:
                raise ConfigError(f"{where}: run_dir {s.run_dir} holds {what} {k}; give the stage its own folder")
        for t, e in real[:i]:
            if d == e or d in e.parents or e in d.parents:
                raise ConfigError(f"{where}: run_dir {s.run_dir} overlaps stage {t.name!r}'s {t.run_dir}; "
                                  "give each stage its own folder")


def _input(value: Any, key: str, kind: str, earlier: list[StageSpec], where: str) -> Any:
    allowed = {"init_from": TRAINING, "teacher": ("distill",), "target": ("evaluate",),
               "reference": ("evaluate",)}[key]
    if kind not in allowed:
        raise ConfigError(f"{where}: '{key}' is not an input of {kind} stages")
    if isinstance(value, dict) and set(value) == {"path"}:  # outside weights (e.g. an official checkpoint)
        return {"path": str(value["path"])}
    names = {s.name: s for s in earlier}
    if value not in names:
        raise ConfigError(f"{where}: {key}: {value!r} is not an earlier stage (earlier: {list(names) or 'none'}); "
                          "name one, or write {path: DIR} for weights from outside the pipeline")
    if key == "reference" and names[value].kind != "evaluate":
        raise ConfigError(f"{where}: reference: {value!r} is a {names[value].kind} stage; name the "
                          "evaluate stage whose scores to compare with (e.g. the teacher's)")
    if key != "reference" and names[value].kind == "evaluate":
        raise ConfigError(f"{where}: {key}: {value!r} is an evaluate stage, which exports no weights")
    return value


# ----------------------------------------------------------------------------- resolution
def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _recipe_tree(recipe: Optional[str], where: str) -> dict:
    if not recipe:
        return {}
    p = Path(recipe)
    if not p.is_file():
        raise ConfigError(f"{where}: recipe {recipe} does not exist")
    return yaml_load(p.read_text()) or {}


def _hash(tree: dict) -> str:
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()


def _hashed(flat: dict) -> dict:
    return {k: v for k, v in flat.items() if not any(k == u or k.startswith(u) for u in UNHASHED)}


def resolve(pipe: Pipeline) -> list[Resolved]:
    """Every stage resolved in order. A stage that cannot be (missing recipe, invalid config)
    carries `error` instead of raising, so `plan` can show all of them at once."""
    done: dict[str, Resolved] = {}
    out = []
    for spec in pipe.stages:
        r = Resolved(spec=spec)
        try:
            _resolve_one(r, done)
        except GiantError as exc:
            r.error = str(exc)
        done[spec.name] = r
        out.append(r)
    return out


def _ref(value: Any, done: dict[str, Resolved]) -> tuple[str, str]:
    """(path for the command line, what the hash records: the stage and its config hash)."""
    if isinstance(value, dict):
        return value["path"], f"path:{value['path']}"
    up = done[value]
    if up.error:
        raise ConfigError(f"input stage {value!r} cannot be resolved: {up.error}")
    return str(up.spec.run_dir), f"stage:{value}@{up.hash[:12]}"


def _resolve_one(r: Resolved, done: dict[str, Resolved]) -> None:
    spec = r.spec
    where = f"stage {spec.name}"
    over_tree = parse_overrides(spec.overrides)
    if spec.kind == "evaluate":
        path, ref = _ref(spec.inputs["target"], done)
        target = done.get(spec.inputs["target"]) if isinstance(spec.inputs["target"], str) else None
        base = _recipe_tree(spec.recipe, where) if spec.recipe else (target.cfg_tree if target else {})
        r.script = "launch/evaluate.py"
        recipe = ["--recipe", spec.recipe] if spec.recipe else []
        compare: list[str] = []
        r.tree = {"kind": spec.kind, "target": ref}
        if "reference" in spec.inputs:  # another evaluation's scores: agreement + KL in results.json
            ref_path, r.tree["reference"] = _ref(spec.inputs["reference"], done)
            compare = ["--reference", ref_path]
        r.args = [path, "--out", str(spec.run_dir)] + recipe + compare + spec.overrides
        r.sbatch_args = [path] + recipe + compare + spec.overrides  # evaluate.sbatch adds --out "$RUN_DIR"
        own = _merge(_recipe_tree(spec.recipe, where), over_tree)  # the target's config is in its hash
        r.tree.update(_hashed(_flat(own)))
        nested = _merge(base, over_tree)
        nested = _merge(nested, {"checkpoint": {"init_from": path}})
        r.cfg = from_dict(RunConfig, nested, where)
        validate(r.cfg)
    else:
        extra = [f"stage.run_dir={spec.run_dir}"]
        refs = {}
        for key, value in spec.inputs.items():
            path, refs[INPUTS[key]] = _ref(value, done)
            extra.append(f"{INPUTS[key]}={path}")
        r.script = f"launch/{spec.kind}.py"
        r.args = ["--recipe", spec.recipe] + (["--ds", spec.ds] if spec.ds else []) + spec.overrides + extra
        r.cfg = load_config(spec.recipe, spec.overrides + extra + ([f"engine.ds_config={spec.ds}"] if spec.ds else []))
        r.sbatch_args = [spec.recipe, r.cfg.engine.ds_config] + spec.overrides + extra
        nested = _merge(_recipe_tree(spec.recipe, where), over_tree)
        r.cfg_tree = _merge(nested, {"stage": {"run_dir": str(spec.run_dir)}})
        r.tree = {"kind": spec.kind, **_hashed(_flat(nested)), **refs}
    r.hash = _hash(r.tree)


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
    """Training: the driver's summary says completed and the export is there. Evaluate: results
    and the per-video scores a later evaluation compares itself with (`reference`)."""
    if kind == "evaluate":
        # evaluate.SCORES; named here so a status check never imports torch (login nodes)
        return all((run_dir / f).is_file() for f in ("results.json", "scores.npz"))
    summary = read_json(run_dir / "summary.json") or {}
    return summary.get("reason") == "completed" and all(
        (run_dir / f).is_file() for f in ("weights.safetensors", "model.json"))


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
    run_dir, kind = r.spec.run_dir, r.spec.kind
    if r.error:
        return State("error", note=r.error)
    foreign = safety.not_ours(run_dir, r.spec.pipeline, r.spec.name)
    if foreign:  # unrelated files or another stage's run: never adopted, resumed or deleted
        return _reused(r) or State("unrecorded", note=foreign)
    complete = artifact_complete(kind, run_dir)
    step = None if complete or kind == "evaluate" else partial_step(run_dir)
    error = (run_dir / "ERROR").read_text().strip() if (run_dir / "ERROR").is_file() else ""
    note = f"last attempt failed: {error}" if error else ""
    if not complete and step is None:
        return State("pending", note=note)
    rec = read_record(run_dir) or {}  # there: not_ours found this stage's record in a non-empty folder
    if rec.get("hash") != r.hash:
        changed = diff(rec.get("config", {}), r.tree)
        if kind == "evaluate":  # nothing to resume, and its numbers describe another config: redo it
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

    cfg, kind = r.cfg, r.spec.kind
    row: dict[str, Any] = {"world": world, "global_batch": None, "lr": None, "steps": None, "flops": None}
    if cfg is None:
        return row
    if kind != "evaluate":
        row.update(global_batch=world * cfg.optim.batch_size * cfg.optim.accum_steps * cfg.data.num_sample,
                   steps=cfg.optim.total_steps)
        row["lr"] = peak_lr(cfg.optim, videos_per_step(cfg.optim, world))  # videos, not clips
    if not flops:
        return row
    from giant.flops import count, train_flops_per_clip

    if kind == "evaluate":
        model = _input_model(r.spec.inputs["target"], by_name)
        if model is None:
            return row
        views = cfg.data.test_temporal_views * cfg.data.test_spatial_views
        per_video = views * count(model, "finetune")["flops"]
        videos = _count_videos(cfg.data.test_manifest or cfg.data.val_manifest, cfg.data.root)
        row.update(views=views, videos=videos, flops_per_video=per_video,
                   flops=per_video * videos if videos else None)
        return row
    model = cfg.model.resolved()
    per_clip = train_flops_per_clip(model, cfg.mask, "pretrain") if kind == "pretrain" \
        else train_flops_per_clip(model, None, "finetune")
    if kind == "distill":  # + the teacher's forward on every clip (eval mode, no backward)
        teacher = _input_model(r.spec.inputs["teacher"], by_name)
        per_clip += count(teacher, "finetune")["flops"] if teacher is not None else 0
    row.update(flops=per_clip * row["global_batch"] * cfg.optim.total_steps, flops_per_clip=per_clip)
    return row


def _input_model(value: Any, by_name: dict[str, Resolved]) -> Any:
    """The model config an input stage exports (or an outside artifact's model.json)."""
    from giant.config import ModelConfig

    if isinstance(value, str):
        up = by_name[value]
        return up.cfg.model.resolved() if up.cfg is not None else None
    from giant.stages.weights import artifact_model

    art = artifact_model(value["path"])
    if not art:
        return None
    fields = set(ModelConfig.__dataclass_fields__)
    return ModelConfig(**{k: v for k, v in art.items() if k in fields}).resolved()


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
    results = read_json(run_dir / "results.json") or {} if spec.kind == "evaluate" else {}
    named = {k: v if isinstance(v, str) else v["path"] for k, v in spec.inputs.items()}  # stage or path
    return {"stage": spec.name, "kind": spec.kind, "status": state.label(), "run_dir": str(run_dir),
            "steps": summary.get("steps"), "first_loss": summary.get("first_loss"),
            "last_loss": summary.get("last_loss"), "best_val_top1": summary.get("best_val_top1"),
            "test_top1": results.get("top1"), "test_top5": results.get("top5"),
            "test_videos": results.get("videos"), "views": results.get("views"),
            "agreement_top1": results.get("agreement_top1"), "kl_from_reference": results.get("kl_from_reference"),
            "reference": named.get("reference"), "target": named.get("target")}
