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
What a run dir says about its stage is giant/stages/pipeline_state.py; what each kind takes,
launches and leaves is giant/stages/registry.py. Launching (giant pipeline run) lives in
giant/stages/pipeline_run.py; Slurm in launch/slurm/submit_pipeline.sh. This module starts nothing.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from giant import safety
from giant.config import RunConfig, from_dict, load_config, merge_trees, parse_overrides, read_yaml, validate
from giant.errors import ConfigError, GiantError
from giant.stages.registry import INPUT_FIELDS as INPUTS
from giant.stages.registry import KINDS

SCRATCH = "scratch"  # `init_from: scratch`: a supervised stage from random weights (e.g. a baseline)
RECORD = safety.RECORD  # giant.safety deletes a run dir only when this record names its stage
# Settings that change how a stage runs, not what it produces: left out of the hash, so changing
# them (more loader workers, another ZeRO layout, checkpoint cadence) never invalidates a stage.
UNHASHED = ("logging.", "engine.", "stage.run_dir", "stage.stop_after", "checkpoint.resume",
            "checkpoint.keep_last", "checkpoint.every_steps", "data.num_workers",
            "data.loader_timeout_s", "data.prefetch_factor", "data.persistent_workers", "precision.cast",
            "precision.decoder_matmul")
INPUT_KEYS = ("init_from", "teacher", "target", "reference")  # what any kind may take (registry.Kind.inputs)
STAGE_KEYS = {"name", "kind", "recipe", "ds", "run_dir", "overrides", "gpus", *INPUT_KEYS}
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
    data = read_yaml(path, "pipeline file", "launch/pipelines/")
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
    if KINDS[kind].trains and not item.get("recipe"):
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
        if "init_from" not in KINDS[kind].inputs:
            raise ConfigError(f"{where}: 'init_from' is not an input of {kind} stages")
        overrides.append(f"{INPUTS['init_from']}=")
    for key in INPUT_KEYS:
        if key in item and not (key == "init_from" and scratch):
            inputs[key] = _input(item[key], key, kind, earlier, where)
    missing = [k for k in KINDS[kind].needs if k not in inputs and not (k == "init_from" and scratch)]
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
    if key not in KINDS[kind].inputs:
        raise ConfigError(f"{where}: '{key}' is not an input of {kind} stages")
    if isinstance(value, dict) and set(value) == {"path"}:  # outside weights (e.g. an official checkpoint)
        return {"path": str(value["path"])}
    names = {s.name: s for s in earlier}
    if value not in names:
        raise ConfigError(f"{where}: {key}: {value!r} is not an earlier stage (earlier: {list(names) or 'none'}); "
                          "name one, or write {path: DIR} for weights from outside the pipeline")
    if key == "reference" and KINDS[names[value].kind].trains:  # scores come from an evaluation
        raise ConfigError(f"{where}: reference: {value!r} is a {names[value].kind} stage; name the "
                          "evaluate stage whose scores to compare with (e.g. the teacher's)")
    if key != "reference" and not KINDS[names[value].kind].trains:
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


def _recipe_tree(recipe: Optional[str], where: str) -> dict:
    if not recipe:
        return {}
    p = Path(recipe)
    if not p.is_file():
        raise ConfigError(f"{where}: recipe {recipe} does not exist")
    return read_yaml(p, "recipe", "launch/recipes/")


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
    kind = KINDS[r.spec.kind]
    r.script = kind.launch
    (_resolve_training if kind.trains else _resolve_evaluation)(r, done, parse_overrides(r.spec.overrides))
    r.hash = _hash(r.tree)


def _resolve_evaluation(r: Resolved, done: dict[str, Resolved], over_tree: dict) -> None:
    """Its command takes the target (and a reference's scores) as arguments; its config is the
    target's (or its own recipe) + overrides; its hash covers only its own settings (the
    target's config is in the target's hash)."""
    spec, where = r.spec, f"stage {r.spec.name}"
    path, ref = _ref(spec.inputs["target"], done)
    target = done.get(spec.inputs["target"]) if isinstance(spec.inputs["target"], str) else None
    base = _recipe_tree(spec.recipe, where) if spec.recipe else (target.cfg_tree if target else {})
    recipe = ["--recipe", spec.recipe] if spec.recipe else []
    compare: list[str] = []
    r.tree = {"kind": spec.kind, "target": ref}
    if "reference" in spec.inputs:  # another evaluation's scores: agreement + KL in results.json
        ref_path, r.tree["reference"] = _ref(spec.inputs["reference"], done)
        compare = ["--reference", ref_path]
    r.args = [path, "--out", str(spec.run_dir)] + recipe + compare + spec.overrides
    r.sbatch_args = [path] + recipe + compare + spec.overrides  # evaluate.sbatch adds --out "$RUN_DIR"
    own = merge_trees(_recipe_tree(spec.recipe, where), over_tree)
    r.tree.update(_hashed(_flat(own)))
    nested = merge_trees(base, over_tree)
    nested = merge_trees(nested, {"checkpoint": {"init_from": path}})
    r.cfg = from_dict(RunConfig, nested, where)
    validate(r.cfg)


def _resolve_training(r: Resolved, done: dict[str, Resolved], over_tree: dict) -> None:
    """Its command is the recipe + overrides + each input's run dir in its config field: the
    very config launch/<kind>.py will load."""
    spec, where = r.spec, f"stage {r.spec.name}"
    extra = [f"stage.run_dir={spec.run_dir}"]
    refs = {}
    for key, value in spec.inputs.items():
        path, refs[INPUTS[key]] = _ref(value, done)
        extra.append(f"{INPUTS[key]}={path}")
    r.args = ["--recipe", spec.recipe] + (["--ds", spec.ds] if spec.ds else []) + spec.overrides + extra
    r.cfg = load_config(spec.recipe, spec.overrides + extra + ([f"engine.ds_config={spec.ds}"] if spec.ds else []))
    r.sbatch_args = [spec.recipe, r.cfg.engine.ds_config] + spec.overrides + extra
    nested = merge_trees(_recipe_tree(spec.recipe, where), over_tree)
    r.cfg_tree = merge_trees(nested, {"stage": {"run_dir": str(spec.run_dir)}})
    r.tree = {"kind": spec.kind, **_hashed(_flat(nested)), **refs}


# ----------------------------------------------------------------------------- inputs
def input_errors(resolved: list[Resolved], names: Optional[set] = None,
                 worlds: Optional[dict] = None) -> list[str]:
    """`stage NAME: problem` for each stage (of `names`, default all) whose inputs that exist
    before the pipeline starts are wrong: manifests (every line parsed), weights from outside
    ({path: P} or the recipe's own), an evaluation's outside target and reference, the DeepSpeed
    JSON at `worlds[name]` ranks when given. Inputs an earlier stage produces are not there yet:
    skipped. giant/stages/inputs.py is what each stage checks again when it starts."""
    from giant.stages.inputs import check_stage

    errors = []
    for r in resolved:
        if r.error or r.cfg is None or (names is not None and r.spec.name not in names):
            continue
        inputs = r.spec.inputs
        produced = tuple(INPUTS.get(k, k) for k, v in inputs.items() if isinstance(v, str))
        if r.spec.kind == "evaluate":
            produced = tuple("checkpoint.init_from" if k == "target" else k for k, v in inputs.items()
                             if isinstance(v, str))
        reference = inputs.get("reference")
        try:
            check_stage(r.spec.kind, r.cfg, produced, run_dir=False, out=str(r.spec.run_dir),
                        reference=reference["path"] if isinstance(reference, dict) else None)
            if worlds and r.spec.name in worlds and KINDS[r.spec.kind].trains:
                from giant.engine.ds_config import check_ds_config

                check_ds_config(r.cfg, worlds[r.spec.name])
        except GiantError as exc:
            errors.append(f"stage {r.spec.name}: {exc}")
    return errors
