"""`giant evaluate TARGET` / launch/evaluate.py: multi-view test of a fine-tuned run or weights
dir. The stage parser plus the target, --out and --reference; any launcher."""
from __future__ import annotations

import argparse
from typing import Optional

from giant.commands._args import ArgumentParser
from giant.commands._stage import add_stage_args, parse_stage
from giant.console import fail

PROG = "giant evaluate"
DESCRIPTION = "Multi-view evaluation: K temporal clips × S spatial crops per video, video score = mean of"


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description=DESCRIPTION)
    p.add_argument("target", metavar="TARGET", help="fine-tuned run dir or weights dir (weights.safetensors + "
                   "model.json); its config.yaml supplies the data settings")
    add_stage_args(p, recipe="recipe YAML instead of the run dir's config.yaml",
                   ds="accepted for launcher symmetry; evaluation needs no DeepSpeed JSON",
                   local_rank=argparse.SUPPRESS,
                   overrides="dotted overrides, e.g. data.test_manifest=... data.test_temporal_views=2")
    p.add_argument("--out", help="output dir (default: TARGET/eval)")
    p.add_argument("--reference", metavar="EVAL_DIR",
                   help="another evaluation of the same videos (e.g. the teacher's): adds top-1 agreement "
                   "and KL(reference ‖ this) to results.json")
    return p


def main(argv: Optional[list] = None) -> int:
    """`giant evaluate RUN_DIR_OR_WEIGHTS [--recipe R] [--out DIR] [k=v ...]`: exit 0, or 2 with
    the one error line (also OUT/ERROR where OUT exists, so a batch script does not requeue)."""
    from pathlib import Path

    args = parse_stage(_parser(), argv)  # --help and usage errors before torch is imported
    from giant.errors import ConfigError, GiantError

    if not Path(args.target).exists():  # the commonest typo: answered before torch is imported
        return fail(PROG, ConfigError(f"TARGET {args.target} does not exist (give a fine-tuned run dir or its "
                                      "weights.safetensors + model.json)"))
    import torch

    from giant.stages.driver import mark_error, setup_logging
    from giant.stages.evaluate import _config_from, output_dir, run

    setup_logging()
    try:
        run(_config_from(args.target, args.recipe, args.overrides), args.out, args.reference)
    except GiantError as exc:
        fail(PROG, exc)
        out = output_dir(args.out, args.target)
        if out is not None:
            mark_error(out, exc)  # only into a folder that exists: a bad input leaves nothing behind
        return 2
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0
