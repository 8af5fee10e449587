"""`distill` (console script) = `giant distill` = launch/distill.py: distil a frozen teacher
classifier into a student on the stage driver. `--teacher` / `--student` take a size or a path;
they become recipe overrides before the command line's own."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

from giant.commands._args import TRUST_NOTE, ArgumentParser
from giant.commands._stage import add_stage_args, parse_stage, run_stage_command
from giant.console import fail

PROG = "giant distill"  # also the `distill` script's and launch/distill.py's: one command, one prefix
DESCRIPTION = "Distillation: a frozen teacher classifier's class distribution trains a student classifier"
DEFAULT_RECIPE = "launch/recipes/distill_vitg_to_vitb_k710.yaml"
# model.* fields a `--student PATH` takes from the artifact's model.json (the architecture; the
# input geometry and class count stay the recipe's)
STUDENT_FIELDS = ("name", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "tubelet_size", "arch")


def model_or_path(text: str, option: str) -> tuple[str, str]:
    """('size', 'vit_g') for vitg / vit_g / ViT-g / g ..., ('path', text) for an existing path."""
    from giant.errors import ConfigError
    from giant.models.vit import MODEL_SIZES

    if os.path.exists(text):
        return "path", text
    text_ = text.lower().replace("-", "_")
    name = next((c for c in (text_, "vit_" + text_.removeprefix("vit").lstrip("_")) if c in MODEL_SIZES), None)
    if name is None:
        raise ConfigError(f"{option} {text}: neither a model size ({', '.join(sorted(MODEL_SIZES))}; "
                          "vitg, vit-g, ViT-g also work) nor an existing file or directory")
    return "size", name


def shorthand_overrides(teacher: Optional[str], student: Optional[str]) -> list[str]:
    """--teacher / --student → recipe overrides (a size names the model, a path its weights)."""
    out = []
    if teacher:
        kind, value = model_or_path(teacher, "--teacher")
        out.append(f"distill.teacher={value}" if kind == "path" else f"distill.teacher_model.name={value}")
    if student:
        kind, value = model_or_path(student, "--student")
        if kind == "size":
            out.append(f"model.name={value}")
        else:
            from giant.artifact import artifact_model

            out.append(f"checkpoint.init_from={value}")
            art = artifact_model(value) or {}
            out += [f"model.{k}={art[k]}" for k in STUDENT_FIELDS if art.get(k) is not None]
    return out


def default_recipe() -> str:
    from giant.errors import ConfigError

    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / DEFAULT_RECIPE).is_file():
            return str(root / DEFAULT_RECIPE)
    raise ConfigError(f"no --recipe given and {DEFAULT_RECIPE} is not found (run from the source checkout, "
                      "or pass --recipe R.yaml)")


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=PROG, description="Distil a frozen teacher classifier into a student classifier (VideoMAE V2 "
                               "Table 16): KL between their class distributions on the same clips, run by "
                               "deepspeed / torchrun / srun like the other stages.",
        epilog="examples:\n  distill --teacher vitg --student vitb distill.teacher=runs/postpretrain_vitg_k710\n"
               "  torchrun --nproc_per_node 2 launch/distill.py --recipe launch/recipes/demo_distill.yaml\n"
               "Sizes only: the defaults come from " + DEFAULT_RECIPE + ".\n\n" + TRUST_NOTE,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", help="teacher size (vitg, vit_g, vitb, ...: checked against the weights) or its "
                                     "weights (giant run dir, official checkpoint, HF dir) = distill.teacher")
    p.add_argument("--student", help="student size (= model.name) or weights to start from (= checkpoint.init_from; "
                                     "a giant artifact's architecture is taken too)")
    return add_stage_args(p, recipe=f"recipe YAML (default {DEFAULT_RECIPE})",
                          overrides="dotted overrides, e.g. distill.temperature=2 stage.run_dir=runs/x")


def _stage():
    from giant.stages.distill import DistillStage

    return DistillStage


def main(argv: Optional[list] = None) -> int:
    """`distill` / `giant distill` / `launch/distill.py`: exit 0, or 2 for a user error."""
    args = parse_stage(_parser(), sys.argv[1:] if argv is None else argv)
    from giant.errors import GiantError
    from giant.stages.driver import setup_logging

    setup_logging()
    try:
        shorthand = shorthand_overrides(args.teacher, args.student)
        args.recipe = args.recipe or default_recipe()
    except GiantError as exc:
        return fail(PROG, exc)
    return run_stage_command(PROG, _stage, args, defaults=shorthand)


def cli_main() -> int:
    """The `distill` console script."""
    return main(sys.argv[1:])
