"""What a stage kind is, declared once: the pipeline, `giant <kind>`, launch/<kind>.py and
launch/slurm/<kind>.sbatch all read these rows. Adding a kind is its own module plus one row.

Imports nothing heavy: the stage class is named as "module:Class" and loaded only when a stage
runs, so `giant pipeline plan|status` and `giant --help` stay free of torch (login nodes).
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# stage-file input → the config field a training stage's command sets to the input's run dir
# (an evaluation takes its target and reference as arguments instead)
INPUT_FIELDS = {"init_from": "checkpoint.init_from", "teacher": "distill.teacher"}
# what an evaluation leaves: results, and the per-video scores a later evaluation compares with
# (evaluate.SCORES; named here so a status check never imports torch)
EVAL_FILES = ("results.json", "scores.npz")
WEIGHT_FILES = ("weights.safetensors", "model.json")
# summary.json reasons of a training run that ended and exported (giant.engine.best.DONE_REASONS:
# the schedule's end, or early stopping); stop_after and signals leave a partial run
DONE_REASONS = ("completed", "early_stop")


@dataclass(frozen=True)
class Kind:
    """One stage kind. `inputs`: the stage-file keys it takes; `needs`: those it must have.
    `trains`: it runs the training loop, resumes from checkpoints and exports weights (an
    evaluation does none of these: it is redone when its config changes)."""

    name: str
    stage: str  # "module:Class"; the class's clip_flops is the kind's FLOPs per clip
    help: str  # one line for `giant --help`
    inputs: tuple[str, ...]
    needs: tuple[str, ...]
    trains: bool
    done_files: tuple[str, ...]

    @property
    def module(self) -> str:
        return self.stage.partition(":")[0]

    @property
    def command(self) -> str:
        """The module whose main(argv) is `giant <kind>` and launch/<kind>.py."""
        return f"giant.commands.{self.name}"

    @property
    def launch(self) -> str:
        return f"launch/{self.name}.py"

    @property
    def sbatch(self) -> str:
        return f"launch/slurm/{self.name}.sbatch"

    def stage_class(self) -> Any:
        module, _, cls = self.stage.partition(":")
        return getattr(importlib.import_module(module), cls)

    def done(self, run_dir: Path) -> bool:
        """Its artifact is complete; a training stage's summary must also say it completed or
        stopped early (a run stopped by stop_after or a signal exported nothing final)."""
        if not all((run_dir / f).is_file() for f in self.done_files):
            return False
        if not self.trains:
            return True
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
        except (OSError, json.JSONDecodeError):
            return False
        return isinstance(summary, dict) and summary.get("reason") in DONE_REASONS

    def clip_flops(self, cfg: Any, model_cfg: Any, teacher: Any = None) -> float:
        """FLOPs of one clip: a training step's (3 × forward, the teacher's forward included)
        or, for an evaluation, one view's forward. The driver's MFU reads the same function."""
        return self.stage_class().clip_flops(cfg, model_cfg, teacher)


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("pretrain", "giant.stages.pretrain:PretrainStage",
         "masked-autoencoder pre-training (run under deepspeed/torchrun)",
         inputs=("init_from",), needs=(), trains=True, done_files=WEIGHT_FILES),
    Kind("finetune", "giant.stages.finetune:FinetuneStage",
         "supervised fine-tuning / K710 post-pre-training (run under deepspeed/torchrun)",
         inputs=("init_from",), needs=("init_from",), trains=True, done_files=WEIGHT_FILES),
    Kind("distill", "giant.stages.distill:DistillStage",
         "distil a frozen teacher classifier into a student (also the `distill` script)",
         inputs=("init_from", "teacher"), needs=("teacher",), trains=True, done_files=WEIGHT_FILES),
    Kind("evaluate", "giant.stages.evaluate:EvaluateStage",
         "multi-view test of a fine-tuned run: top-1/top-5, per-class, confusion, predictions",
         inputs=("target", "reference"), needs=("target",), trains=False, done_files=EVAL_FILES),
)}


def kind(name: str) -> Kind:
    return KINDS[name]


def commands() -> dict[str, tuple[str, str]]:
    """`giant <kind>` → (module with main(argv), one-line help): giant.commands.COMMANDS' rows."""
    return {k.name: (k.command, k.help) for k in KINDS.values()}
