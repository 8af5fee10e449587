"""`giant finetune` / launch/finetune.py: supervised fine-tuning on the stage driver."""
from __future__ import annotations

from typing import Optional

from giant.commands._stage import parse_stage, run_stage_command, stage_parser

PROG = "giant finetune"
DESCRIPTION = "Supervised fine-tuning / post-pre-training of a video classifier"


def _stage():
    from giant.stages.finetune import FinetuneStage

    return FinetuneStage


def main(argv: Optional[list] = None) -> int:
    return run_stage_command(PROG, _stage, parse_stage(stage_parser(PROG, DESCRIPTION), argv))
