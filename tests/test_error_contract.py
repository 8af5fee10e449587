"""The one error contract, swept over every command: a bad input (missing, empty, random bytes,
wrong type, out of range, a folder for a file and the reverse, unknown keys and options, a
missing launcher binary) ends the process with exit 2 and exactly one stderr line
`giant <command>: error: ...` — no traceback, no usage dump — and writes nothing.

Each case runs in its own copy of a small folder of inputs, which is its working directory too,
so a command that writes a default output (runs/..., TARGET/eval) is caught. `giant ...` cases
are forked from one process that imported every command once (tests/_contract_runner.py: a
real process each, without ~3 s of torch import per case); the `distill` script and
launch/*.py start as processes of their own. They print the same prefix as `giant <command>`:
they are the same commands.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
BIN = Path(PY).parent
RECIPE = {k: str(REPO / "launch" / "recipes" / f"demo_{k}.yaml") for k in ("pretrain", "finetune", "distill")}

# (id, command the line must name, argv after the entry point; "{W}" is the case's folder).
# The entry point is `giant` unless argv starts with "@distill" (the console script) or
# "@launch/<kind>.py".
CASES: list[tuple[str, str, tuple[str, ...]]] = [
    ("giant-unknown-command", "", ("nonsense",)),
    # -- stages
    ("pretrain-missing-recipe", "pretrain", ("pretrain", "--recipe", "{W}/missing.yaml")),
    ("pretrain-random-recipe", "pretrain", ("pretrain", "--recipe", "{W}/random.bin")),
    ("pretrain-folder-recipe", "pretrain", ("pretrain", "--recipe", "{W}/folder")),
    ("pretrain-unknown-key", "pretrain", ("pretrain", "--recipe", RECIPE["pretrain"], "optim.bogus=1")),
    ("pretrain-wrong-type", "pretrain", ("pretrain", "--recipe", RECIPE["pretrain"], "optim.total_steps=abc")),
    ("pretrain-zero-batch", "pretrain", ("pretrain", "--recipe", RECIPE["pretrain"], "optim.batch_size=0")),
    ("pretrain-unknown-option", "pretrain", ("pretrain", "--bogus")),
    ("pretrain-random-ds", "pretrain", ("pretrain", "--recipe", RECIPE["pretrain"], "--ds", "{W}/random.bin",
                                        "data.manifest={W}/m.csv")),
    ("pretrain-folder-ds", "pretrain", ("pretrain", "--recipe", RECIPE["pretrain"], "--ds", "{W}/folder",
                                        "data.manifest={W}/m.csv")),
    ("pretrain-folder-manifest", "pretrain", ("pretrain", "--recipe", RECIPE["pretrain"], "data.manifest={W}/folder")),
    ("pretrain-random-manifest", "pretrain", ("pretrain", "--recipe", RECIPE["pretrain"],
                                              "data.manifest={W}/random.bin")),
    ("pretrain-empty-manifest", "pretrain", ("pretrain", "--recipe", RECIPE["pretrain"],
                                             "data.manifest={W}/empty.csv", "stage.run_dir={W}/run")),
    ("pretrain-no-recipe", "pretrain", ("pretrain", "--ds", "ds_configs/zero2.json")),  # the card's own command
    ("pretrain-file-run-dir", "pretrain", ("pretrain", "--recipe", RECIPE["pretrain"], "data.manifest={W}/m.csv",
                                           "stage.run_dir={W}/file.txt")),
    ("finetune-no-recipe", "finetune", ("finetune",)),
    ("finetune-missing-val", "finetune", ("finetune", "--recipe", RECIPE["finetune"], "data.manifest={W}/m.csv",
                                          "data.val_manifest={W}/missing.csv", "checkpoint.init_from=")),
    ("finetune-empty-recipe", "finetune", ("finetune", "--recipe", "{W}/empty.yaml")),
    ("finetune-missing-init", "finetune", ("finetune", "--recipe", RECIPE["finetune"],
                                           "checkpoint.init_from={W}/missing", "data.manifest={W}/m.csv")),
    ("finetune-folder-init", "finetune", ("finetune", "--recipe", RECIPE["finetune"],
                                          "checkpoint.init_from={W}/folder", "data.manifest={W}/m.csv")),
    ("finetune-negative-lr", "finetune", ("finetune", "--recipe", RECIPE["finetune"], "optim.blr=-1")),
    ("finetune-bad-report-to", "finetune", ("finetune", "--recipe", RECIPE["finetune"], "logging.report_to=[tb]")),
    ("finetune-retired-tensorboard", "finetune", ("finetune", "--recipe", RECIPE["finetune"],
                                                  "logging.tensorboard=false")),
    ("pretrain-bad-profile", "pretrain", ("pretrain", "--recipe", RECIPE["pretrain"], "logging.profile={steps: 0}")),
    ("finetune-bogus-export", "finetune", ("finetune", "--recipe", RECIPE["finetune"], "checkpoint.export=bogus")),
    ("finetune-early-stop-no-eval", "finetune", ("finetune", "--recipe", RECIPE["finetune"], "stage.eval_every=0",
                                                 "stage.early_stop=3")),
    ("pretrain-best-export", "pretrain", ("pretrain", "--recipe", RECIPE["pretrain"], "checkpoint.export=best")),
    ("distill-bad-teacher", "distill", ("distill", "--teacher", "nonsense")),
    ("distill-folder-teacher", "distill", ("distill", "--teacher", "{W}/folder", "data.manifest={W}/m.csv",
                                           "checkpoint.init_from=")),
    ("distill-script-unknown-option", "distill", ("@distill", "--bogus")),
    ("distill-script-unknown-key", "distill", ("@distill", "distill.bogus=1")),
    ("evaluate-no-target", "evaluate", ("evaluate",)),
    ("evaluate-missing-target", "evaluate", ("evaluate", "{W}/nonexistent")),
    ("evaluate-file-target", "evaluate", ("evaluate", "{W}/file.txt")),
    ("evaluate-folder-target", "evaluate", ("evaluate", "{W}/folder")),
    ("evaluate-wrong-type", "evaluate", ("evaluate", "{W}/folder", "--local_rank", "x")),
    ("launch-pretrain-unknown-option", "pretrain", ("@launch/pretrain.py", "--bogus")),
    ("launch-finetune-missing-recipe", "finetune", ("@launch/finetune.py", "--recipe", "{W}/missing.yaml")),
    ("launch-distill-bad-student", "distill", ("@launch/distill.py", "--student", "nonsense")),
    ("launch-evaluate-missing-target", "evaluate", ("@launch/evaluate.py", "{W}/nonexistent")),
    # -- pipeline
    ("pipeline-missing-file", "pipeline", ("pipeline", "plan", "{W}/missing.yaml")),
    ("pipeline-empty-file", "pipeline", ("pipeline", "plan", "{W}/empty.yaml")),
    ("pipeline-random-file", "pipeline", ("pipeline", "run", "{W}/random.bin")),
    ("pipeline-folder-file", "pipeline", ("pipeline", "status", "{W}/folder")),
    ("pipeline-unknown-subcommand", "pipeline", ("pipeline", "frobnicate")),
    ("pipeline-wrong-type", "pipeline", ("pipeline", "plan", "{W}/pipe.yaml", "--nproc", "abc")),
    ("pipeline-negative-nproc", "pipeline", ("pipeline", "run", "{W}/pipe.yaml", "--nproc", "-1")),
    ("pipeline-unknown-stage", "pipeline", ("pipeline", "run", "{W}/pipe.yaml", "--force", "nosuch")),
    ("pipeline-no-srun", "pipeline", ("pipeline", "run", "{W}/pipe.yaml", "--launcher", "srun")),
    ("pipeline-unknown-launcher", "pipeline", ("pipeline", "run", "{W}/pipe.yaml", "--launcher", "mpirun")),
    # -- checkpoints and weights
    ("export-missing", "export", ("export", "{W}/missing", "--out", "{W}/out")),
    ("export-random", "export", ("export", "{W}/random.bin", "--out", "{W}/out")),
    ("export-folder", "export", ("export", "{W}/folder", "--out", "{W}/out")),
    ("export-no-path", "export", ("export", "--out", "{W}/out")),
    ("export-unknown-option", "export", ("export", "{W}/folder", "--bogus")),
    ("reshard-missing", "reshard", ("reshard", "{W}/missing")),
    ("reshard-file", "reshard", ("reshard", "{W}/file.txt")),
    ("convert-missing", "convert", ("convert", "{W}/missing.pth", "{W}/out")),
    ("convert-empty", "convert", ("convert", "{W}/empty.pth", "{W}/out")),
    ("convert-random", "convert", ("convert", "{W}/random.bin", "{W}/out")),
    ("convert-random-trusted", "convert", ("convert", "{W}/random.bin", "{W}/out", "--trust-pickle")),
    ("convert-folder", "convert", ("convert", "{W}/folder", "{W}/out")),
    ("convert-bad-choice", "convert", ("convert", "{W}/random.bin", "{W}/out", "--to", "onnx")),
    ("convert-maest-missing", "convert-maest", ("convert-maest", "{W}/missing.pyth", "{W}/out")),
    ("convert-maest-random", "convert-maest", ("convert-maest", "{W}/random.bin", "{W}/out")),
    ("convert-maest-folder", "convert-maest", ("convert-maest", "{W}/folder", "{W}/out")),
    ("convert-maest-wrong-type", "convert-maest", ("convert-maest", "{W}/random.bin", "{W}/out", "--frames", "x")),
    ("convert-maest-bad-model", "convert-maest", ("convert-maest", "{W}/random.bin", "{W}/out", "--model", "vit_q")),
    # -- data
    ("data-no-subcommand", "data", ("data",)),
    ("data-synth-negative-count", "data", ("data", "synth", "{W}/synth", "--num-videos", "-1")),
    ("data-synth-wrong-type", "data", ("data", "synth", "{W}/synth", "--num-videos", "abc")),
    ("data-synth-file-for-folder", "data", ("data", "synth", "{W}/file.txt", "--num-videos", "2")),
    ("data-synth-zero-frames", "data", ("data", "synth", "{W}/synth", "--frames", "0")),
    ("data-validate-missing", "data", ("data", "validate", "{W}/missing.csv", "--workers", "1")),
    ("data-validate-empty", "data", ("data", "validate", "{W}/empty.csv", "--workers", "1")),
    ("data-validate-random", "data", ("data", "validate", "{W}/random.bin", "--workers", "1")),
    ("data-validate-folder", "data", ("data", "validate", "{W}/folder", "--workers", "1")),
    ("data-validate-zero-frames", "data", ("data", "validate", "{W}/m.csv", "--num-frames", "0")),
    ("data-validate-zero-workers", "data", ("data", "validate", "{W}/m.csv", "--workers", "-1")),
    ("data-k710-labels-missing", "data", ("data", "k710", "labels", "--k400", "{W}/missing.txt", "--k600",
                                          "{W}/missing.txt", "--k700", "{W}/missing.txt", "--out", "{W}/k710.txt")),
    ("data-k710-labels-random", "data", ("data", "k710", "labels", "--k400", "{W}/random.bin", "--k600",
                                         "{W}/random.bin", "--k700", "{W}/random.bin", "--out", "{W}/k710.txt")),
    ("data-k710-rowmap-folder", "data", ("data", "k710", "rowmap", "--k710", "{W}/folder", "--target",
                                         "{W}/file.txt", "--out", "{W}/rows.json")),
    ("data-k710-manifests-empty", "data", ("data", "k710", "manifests", "--k400", "{W}/empty.csv",
                                           "--labels", "{W}/empty.csv", "--out-dir", "{W}/k710")),
    ("data-prepare-missing", "data", ("data", "prepare", "{W}/missing.csv", "{W}/prepared")),
    ("data-prepare-negative-workers", "data", ("data", "prepare", "{W}/m.csv", "{W}/prepared", "--workers", "-1")),
    ("data-prepare-crf-out-of-range", "data", ("data", "prepare", "{W}/m.csv", "{W}/prepared", "--crf", "99")),
    ("data-bench-missing", "data", ("data", "bench", "{W}/missing.csv")),
    ("data-bench-zero-batch", "data", ("data", "bench", "{W}/m.csv", "--batch-size", "0")),
    ("data-bench-negative-workers", "data", ("data", "bench", "{W}/m.csv", "--workers", "-2")),
    ("data-bench-random", "data", ("data", "bench", "{W}/random.bin", "--workers", "0")),
    # -- analysis
    ("flops-unknown-model", "flops", ("flops", "vit_q")),
    ("flops-wrong-type", "flops", ("flops", "vit_b", "--frames", "abc")),
    ("flops-zero-frames", "flops", ("flops", "vit_b", "--frames", "0")),
    ("flops-negative-size", "flops", ("flops", "vit_b", "--img-size", "-224")),
    ("flops-mask-ratio", "flops", ("flops", "vit_b", "--mask-ratio", "1.5")),
    ("bench-wrong-type", "bench", ("bench", "--steps", "abc")),
    ("bench-zero-batch", "bench", ("bench", "--batch", "0")),
    ("bench-negative-steps", "bench", ("bench", "--steps", "-1")),
    ("bench-unknown-model", "bench", ("bench", "--model", "vit_q")),
    ("bench-unknown-key", "bench", ("bench", "optim.bogus=1")),
    ("memory-no-recipe", "memory", ("memory",)),
    ("memory-random-recipe", "memory", ("memory", "--recipe", "{W}/random.bin")),
    ("memory-zero-world", "memory", ("memory", "--recipe", RECIPE["pretrain"], "--world", "0")),
    ("memory-unknown-key", "memory", ("memory", "--recipe", RECIPE["pretrain"], "optim.bogus=1")),
    ("memory-missing-recipe", "memory", ("memory", "--recipe", "{W}/missing.yaml")),
    ("memory-bad-gpu-mem", "memory", ("memory", "--recipe", RECIPE["pretrain"], "--gpu-mem", "lots")),
]


def _inputs(w: Path) -> None:
    """The folder every case starts from (and its working directory)."""
    w.mkdir(parents=True)
    (w / "empty.yaml").write_bytes(b"")
    (w / "empty.csv").write_bytes(b"")
    (w / "empty.pth").write_bytes(b"")
    (w / "random.bin").write_bytes(random.Random(0).randbytes(4096))
    (w / "file.txt").write_text("not what was asked for\n")
    (w / "folder").mkdir()
    (w / "folder" / "keep.txt").write_text("an unrelated file\n")
    (w / "m.csv").write_text("path,label\nmissing.mp4,0\n")
    pipeline = {"name": "t", "root": str(w / "runs"), "stages": [
        {"name": "pretrain", "kind": "pretrain", "recipe": RECIPE["pretrain"]}]}
    (w / "pipe.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))


def _snapshot(w: Path) -> dict[str, str]:
    return {str(p.relative_to(w)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(w.rglob("*"))}


def _env() -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_JOB_ID")}
    e.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    e["OMP_NUM_THREADS"] = "1"
    e["PATH"] = str(BIN)  # no srun, sbatch, ...: the missing-launcher case
    return e


def _real(args: list[str], w: Path, logs: Path) -> int:
    """The `distill` script and launch/*.py: a process of their own, imports and all."""
    argv = [str(BIN / "distill")] if args[0] == "@distill" else [PY, str(REPO / args[0][1:])]
    with open(logs / "out", "w") as o, open(logs / "err", "w") as e:
        return subprocess.run([*argv, *args[1:]], cwd=w, env=_env(), stdout=o, stderr=e, timeout=300).returncode


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    """Every case once: `giant ...` forked from one process (tests/_contract_runner.py), the other
    entry points as their own processes, side by side."""
    base = tmp_path_factory.mktemp("contract")
    cases, before = {}, {}
    for name, _, args in CASES:
        w, logs = base / name / "w", base / name / "logs"
        _inputs(w)
        logs.mkdir()
        before[name] = _snapshot(w)
        cases[name] = {"name": name, "argv": [a.replace("{W}", str(w)) for a in args], "cwd": str(w),
                       "env": _env(), "logs": str(logs)}
    forked = [c for c in cases.values() if not c["argv"][0].startswith("@")]
    (base / "cases.json").write_text(json.dumps(forked))
    jobs = max(2, min(8, os.cpu_count() or 2))
    runner = subprocess.Popen([PY, str(Path(__file__).parent / "_contract_runner.py"), str(base / "cases.json"),
                               str(base / "codes.json"), str(jobs)], cwd=base, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with ThreadPoolExecutor(max_workers=2) as pool:
        real = {c["name"]: pool.submit(_real, c["argv"], Path(c["cwd"]), Path(c["logs"]))
                for c in cases.values() if c["argv"][0].startswith("@")}
        runner_out, runner_err = runner.communicate(timeout=900)
        codes = {name: f.result() for name, f in real.items()}
    assert runner.returncode == 0 and not runner_out and not runner_err, \
        f"importing the commands printed (a real `giant` prints it before every line):\n{runner_out}{runner_err}"
    codes.update(json.loads((base / "codes.json").read_text()))
    out = {}
    for name, case in cases.items():
        w, logs = Path(case["cwd"]), Path(case["logs"])
        after = _snapshot(w)
        out[name] = {"rc": codes[name], "err": (logs / "err").read_text(), "out": (logs / "out").read_text(),
                     "written": sorted(set(after) ^ set(before[name]) | {k for k in after
                                                                       if before[name].get(k) not in (None, after[k])})}
    return out


def _line_re(command: str) -> re.Pattern:
    """`giant CMD[ SUB]: error: WHAT` — subcommands (`giant data validate`) name themselves."""
    prefix = f"giant {re.escape(command)}( [a-z0-9]+)*" if command else "giant"
    return re.compile(rf"^{prefix}: error: \S.*$")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(case, results):
    name, command, args = case
    r = results[name]
    lines = r["err"].splitlines()
    shown = f"rc={r['rc']}\n--- stderr ---\n{r['err'][-3000:]}\n--- stdout ---\n{r['out'][-1000:]}"
    assert "Traceback" not in r["err"], shown
    assert r["rc"] == 2, shown
    assert len(lines) == 1 and _line_re(command).match(lines[0]), shown
    assert not r["written"], f"{shown}\nwritten: {r['written']}"


def test_sweep_covers_every_command():
    """A new command joins the sweep: every `giant --help` command, `distill` and launch/*.py."""
    from giant.cli import COMMANDS

    assert len({c[0] for c in CASES}) == len(CASES), "case ids must be unique"
    named = {c[1] for c in CASES}
    assert set(COMMANDS) <= named
    entry = {c[2][0] for c in CASES if c[2][0].startswith("@")}
    assert entry == {"@distill", *(f"@launch/{p.name}" for p in (REPO / "launch").glob("*.py"))}


@pytest.mark.parametrize("name, expect", [
    ("evaluate-no-target", "TARGET"),
    ("evaluate-missing-target", "does not exist"),
    ("pipeline-no-srun", "srun"),
    ("pretrain-unknown-key", "override.optim: unknown key(s) ['bogus']"),
    ("pretrain-wrong-type", "override.optim.total_steps: expected int, got 'abc'"),
    ("giant-unknown-command", "nonsense"),
    ("pretrain-no-recipe", "pass --recipe launch/recipes/demo_pretrain.yaml"),
    ("finetune-no-recipe", "pass --recipe launch/recipes/demo_finetune.yaml"),
    ("finetune-missing-val", "data.val_manifest="),
    ("pretrain-file-run-dir", "stage.run_dir="),
    ("finetune-retired-tensorboard", "logging.report_to"),
    ("finetune-bad-report-to", "logging.report_to"),
    ("finetune-bogus-export", "checkpoint.export='bogus': use last, best or both"),
    ("finetune-early-stop-no-eval", "set stage.eval_every > 0"),
])
def test_the_line_names_the_problem(name, expect, results):
    assert expect in results[name]["err"], results[name]["err"]
