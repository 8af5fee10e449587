"""`giant pretrain` / launch/pretrain.py: masked-autoencoder pre-training on the stage driver."""
from __future__ import annotations

from typing import Optional

from giant.commands._stage import parse_stage, run_stage_command, stage_parser

PROG = "giant pretrain"
DESCRIPTION = "Masked-autoencoder pre-training (VideoMAE V2 dual masking)"


def parse_args(argv: Optional[list]):
    """argv → RunConfig (imports the config code, not the stage)."""
    from giant.commands._stage import load_stage_config

    return load_stage_config(parse_stage(stage_parser(PROG, DESCRIPTION), argv))


def _stage():
    from giant.stages.pretrain import PretrainStage

    return PretrainStage


def main(argv: Optional[list] = None) -> int:
    return run_stage_command(PROG, _stage, parse_stage(stage_parser(PROG, DESCRIPTION), argv))
