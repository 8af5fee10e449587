"""What `pip install giant` promises, checked against the code and this environment.

Every third-party module giant/ and launch/ import is a core dependency, or an optional one behind
a guard whose message names its extra; the Python floor holds for every file, tests included;
the installed versions satisfy the declared ranges and torch / DeepSpeed are the oldest claimed
(scripts/setup.sh pins them), so a floor is a version the suite ran on; the core metadata pip
builds holds no extra. With transformers unimportable, the demo's stages still import and a
one-step pre-train -> fine-tune pipeline runs, and `giant convert --to hf` is one line naming
the extra (exit 2)."""
from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from email.parser import Parser
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from _launch import REPO, env, run_captured

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# import name -> the extra that installs it; every file importing it must name `giant[<extra>]`
OPTIONAL = {"transformers": "hf", "wandb": "wandb", "mlflow": "mlflow"}
# imports that need a distribution the import name does not reveal
INDIRECT = {"torch.utils.tensorboard": "tensorboard"}
# the suite must run on the oldest release claimed for these (scripts/setup.sh pins them)
AT_FLOOR = ("torch", "torchvision", "deepspeed")
# stdlib modules newer than some Python 3 still in use -> the first Python that has them
VERSION_GATED = {"tomllib": (3, 11)}
HF_LINE = "--to hf needs the Hugging Face extra: pip install 'giant[hf]'"
DEMO_STAGES = ("pretrain", "finetune", "distill", "evaluate", "pipeline", "pipeline_run")


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def core_names() -> set[str]:
    return {canon(Requirement(r).name) for r in PROJECT["dependencies"]}


def imports(*roots: str) -> dict[str, set[str]]:
    """Every absolute import (module level or inside functions, plus importlib.import_module /
    giant's `_import("name")` calls with a literal) -> the files that make it."""
    found: dict[str, set[str]] = {}
    for root in roots:
        for path in sorted((REPO / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                      and isinstance(node.args[0].value, str)
                      and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "_import")):
                    names = [node.args[0].value]
                for name in names:
                    found.setdefault(name, set()).add(str(path.relative_to(REPO)))
    return found


def third_party(found: dict[str, set[str]]) -> dict[str, set[str]]:
    tops: dict[str, set[str]] = {}
    for name, files in found.items():
        top = name.split(".")[0]
        if top not in sys.stdlib_module_names and top != "giant":
            tops.setdefault(top, set()).update(files)
    return tops


def test_every_runtime_import_is_declared():
    found = imports("giant", "launch")
    tops, dists = third_party(found), importlib.metadata.packages_distributions()
    core, extras = core_names(), PROJECT["optional-dependencies"]
    for top, files in sorted(tops.items()):
        if top in OPTIONAL:
            extra = OPTIONAL[top]
            assert {canon(d) for d in dists.get(top, [])} & {canon(Requirement(r).name) for r in extras[extra]}, \
                f"extra {extra!r} does not install {top}"
            for f in files:
                assert f"giant[{extra}]" in (REPO / f).read_text(), \
                    f"{f} imports optional {top} without a message naming pip install 'giant[{extra}]'"
            continue
        assert top in dists, f"{top} (imported by {sorted(files)}) is not installed; which distribution is it?"
        assert {canon(d) for d in dists[top]} & core, \
            f"{top} (imported by {sorted(files)}) comes from {dists[top]}, not a core dependency in pyproject.toml"
    used = {canon(d) for top in tops for d in dists.get(top, [])}
    used |= {dist for mod, dist in INDIRECT.items() if any(m == mod or m.startswith(mod + ".") for m in found)}
    assert core - used == set(), f"core dependencies nothing in giant/ or launch/ imports: {sorted(core - used)}"
    assert set(OPTIONAL) & set(third_party(imports("giant"))) == set(OPTIONAL), "an optional import is gone"


def floor(spec) -> Version:
    (low,) = [s.version for s in spec if s.operator == ">="]
    return Version(low)


def test_python_floor_holds_for_every_file():
    spec = Requirement(f"python{PROJECT['requires-python']}").specifier
    low = floor(spec).release[:2]
    assert low == (3, 11), "the floor is the oldest Python the suite runs on (.venv, docs/install.md)"
    assert ".".join(map(str, sys.version_info[:3])) in spec
    for root in ("giant", "launch", "tests", "scripts"):
        for path in (REPO / root).rglob("*.py"):
            ast.parse(path.read_text(), str(path), feature_version=low)  # syntax newer than the floor
    for name, files in imports("giant", "launch", "tests", "scripts").items():
        need = VERSION_GATED.get(name.split(".")[0])
        assert need is None or need <= low, f"{sorted(files)} import {name}, new in Python {need}"


def declared() -> list[Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    reqs += [Requirement(r) for rs in PROJECT["optional-dependencies"].values() for r in rs]
    return [r for r in reqs if canon(r.name) != "giant" and (r.marker is None or r.marker.evaluate())]


def test_installed_versions_satisfy_the_declared_ranges():
    for req in declared():
        got = importlib.metadata.version(req.name)
        assert req.specifier.contains(got, prereleases=True), f"{req.name} {got} is outside {req} (pyproject.toml)"
    for name in AT_FLOOR:
        (req,) = [Requirement(r) for r in PROJECT["dependencies"] if canon(Requirement(r).name) == name]
        low, got = floor(req.specifier), Version(importlib.metadata.version(name))
        assert got.release[:len(low.release)] == low.release, (
            f"the suite runs on {name} {got}, not on the oldest release pyproject.toml claims ({low}): "
            "scripts/setup.sh pins the floors; raise the floor (and docs/install.md) or test on it")


def test_core_metadata_holds_no_extra(tmp_path):
    """The Requires-Dist pip installs without extras, from setuptools' own PEP 517 hook."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "giant", tmp_path / "giant", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "meta").mkdir()
    code = ("import sys; from setuptools import build_meta; "
            "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "meta")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = Parser().parsestr((tmp_path / "meta" / proc.stdout.split()[-1] / "METADATA").read_text())
    reqs = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    core = {canon(r.name) for r in reqs if r.marker is None or "extra" not in str(r.marker)}
    assert core == core_names()
    heavy = {"transformers", "tokenizers", "huggingface-hub", "wandb", "mlflow", "mlflow-skinny"}
    assert core & heavy == set()
    assert meta["Requires-Python"] == ">=3.11"
    extras = set(meta.get_all("Provides-Extra"))
    assert {"hf", "wandb", "mlflow", "test"} <= extras
    by_extra = {e: {canon(r.name) for r in reqs if r.marker and r.marker.evaluate({"extra": e})} - core
                for e in extras}
    assert "transformers" in by_extra["hf"] and "wandb" in by_extra["wandb"] and "mlflow-skinny" in by_extra["mlflow"]
    assert "giant" in by_extra["test"]  # giant[hf,wandb,mlflow]: the suite covers every extra


# ----------------------------------------------------------------------- without transformers

@pytest.fixture(scope="module")
def no_hf(tmp_path_factory) -> dict:
    """The environment of a process where `import transformers` fails as if it were absent."""
    hide = tmp_path_factory.mktemp("hide_transformers")
    (hide / "transformers").mkdir()
    (hide / "transformers" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'transformers'\", name='transformers')\n")
    e = env()
    e["PYTHONPATH"] = os.pathsep.join([str(hide), str(REPO)] + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    return e


def test_demo_stages_import_without_transformers(no_hf):
    mods = ", ".join(f"giant.stages.{m}" for m in DEMO_STAGES)
    code = (f"import sys, {mods}, giant.interop, giant.interop.hf, giant.commands.convert\n"
            "assert 'transformers' not in sys.modules\n"
            "try:\n    import transformers\nexcept ModuleNotFoundError:\n    print('hidden')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=no_hf, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "hidden", proc.stderr[-3000:]


def test_pipeline_and_hf_export_without_transformers(synth_videos, no_hf, tmp_path):
    data = {"data.manifest": str(synth_videos.train_manifest), "data.val_manifest": str(synth_videos.val_manifest),
            "model.num_frames": 4, "data.num_sample": 2, "data.num_workers": 0, "optim.batch_size": 2,
            "optim.total_steps": 1, "optim.warmup_steps": 0, "checkpoint.every_steps": 1,
            "logging.log_every": 1, "logging.image_every": 0, "logging.progress": False}
    stages = [{"name": "pretrain", "kind": "pretrain", "recipe": "launch/recipes/demo_pretrain.yaml",
               "overrides": data},
              {"name": "finetune", "kind": "finetune", "recipe": "launch/recipes/demo_finetune.yaml",
               "init_from": "pretrain", "overrides": {**data, "data.val_manifest": "", "stage.eval_every": 1}}]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "nohf", "root": str(tmp_path / "runs"), "stages": stages,
                                    "defaults": {"ds": "ds_configs/zero2.json", "gpus": 1}}, sort_keys=False))
    cli = [sys.executable, "-m", "giant.cli"]
    proc = run_captured(cli + ["pipeline", "run", str(path), "--launcher", "python"], 600, cwd=REPO, env=no_hf)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    rows = {r["stage"]: r for r in json.loads((tmp_path / "runs" / "status.json").read_text())["stages"]}
    assert [rows[s]["steps"] for s in ("pretrain", "finetune")] == [1, 1]
    src = tmp_path / "runs" / "finetune"
    assert (src / "weights.safetensors").is_file()
    assert ("stage.eval_every=1 but data.val_manifest is empty: this run validates nothing"
            in (src / "stage.log").read_text())  # asked for, and said so once, by rank 0

    conv = subprocess.run(cli + ["convert", str(src), str(tmp_path / "hf"), "--to", "hf"], cwd=REPO, env=no_hf,
                          capture_output=True, text=True, timeout=300)
    assert conv.returncode == 2 and conv.stdout == ""
    assert conv.stderr.strip().splitlines() == [f"giant convert: error: {HF_LINE}"]
    assert not (tmp_path / "hf").exists()
    # the control: the same command with transformers visible writes an HF directory
    ok = subprocess.run(cli + ["convert", str(src), str(tmp_path / "hf"), "--to", "hf"], cwd=REPO, env=env(),
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert {p.name for p in (tmp_path / "hf").iterdir()} == {"config.json", "model.safetensors"}
    # reading an HF directory (init_from / teacher / convert source) needs no transformers
    back = subprocess.run(cli + ["convert", str(tmp_path / "hf"), str(tmp_path / "g")], cwd=REPO, env=no_hf,
                          capture_output=True, text=True, timeout=300)
    assert back.returncode == 0 and "(hf) -> " in back.stdout, back.stderr[-3000:]
    assert (tmp_path / "g" / "weights.safetensors").is_file()
