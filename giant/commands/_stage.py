"""The one stage parser (`--recipe R.yaml --ds DS.json [k=v ...]`) that pretrain, finetune,
distill and evaluate build on, and the lifecycle of a stage command: parse, run the stage on
the driver, exit 0 / 2 with the one error line (which RUN_DIR/ERROR of a started run holds too).
"""
from __future__ import annotations

import argparse
import os
from typing import Callable, Optional

from giant.commands._args import TRUST_NOTE, ArgumentParser, nonnegative_int
from giant.console import fail

RECIPE_HELP = "recipe YAML (launch/recipes/*.yaml)"
DS_HELP = "DeepSpeed JSON (ds_configs/*.json); same as engine.ds_config=..."
LOCAL_RANK_HELP = "set by the deepspeed launcher; LOCAL_RANK is read from the environment"
OVERRIDES_HELP = "dotted overrides, e.g. optim.blr=3e-4 stage.run_dir=runs/x"


def add_stage_args(p: argparse.ArgumentParser, recipe: str = RECIPE_HELP, ds: str = DS_HELP,
                   local_rank: str = LOCAL_RANK_HELP, overrides: str = OVERRIDES_HELP) -> argparse.ArgumentParser:
    """The arguments every stage command takes; a command adds its own before or after."""
    p.add_argument("--recipe", help=recipe)
    p.add_argument("--ds", help=ds)
    p.add_argument("--local_rank", "--local-rank", type=nonnegative_int, default=None, help=local_rank)
    p.add_argument("overrides", nargs="*", default=[], help=overrides)
    return p


def stage_parser(prog: str, description: str) -> argparse.ArgumentParser:
    return add_stage_args(ArgumentParser(prog=prog, description=description, epilog=TRUST_NOTE))


def parse_stage(p: argparse.ArgumentParser, argv: Optional[list]) -> argparse.Namespace:
    """Overrides may come before, between or after options; the launcher's --local_rank is
    handed on through the environment."""
    args = p.parse_intermixed_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def load_stage_config(args: argparse.Namespace, defaults: Optional[list] = None):
    """RunConfig of the recipe + `defaults` (before the command line's overrides) + --ds."""
    from giant.config import load_config

    overrides = list(defaults or []) + list(args.overrides)
    overrides += [f"engine.ds_config={args.ds}"] if args.ds else []
    return load_config(args.recipe, overrides)


def run_stage_command(prog: str, make_stage: Callable[[], Callable], args: argparse.Namespace,
                      defaults: Optional[list] = None) -> int:
    """Run the stage `make_stage()` returns (a class, imported only now) on the driver."""
    from giant.errors import GiantError
    from giant.stages.driver import mark_error, run_stage, setup_logging

    setup_logging()
    cfg = None
    try:
        cfg = load_stage_config(args, defaults)
        art = run_stage(make_stage()(cfg))
    except GiantError as exc:
        fail(prog, exc)
        if cfg is not None and int(os.environ.get("RANK", "0")) == 0:
            from pathlib import Path

            mark_error(Path(cfg.stage.run_dir), exc)
        return 2
    finally:
        _destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        import logging

        logging.getLogger("giant.stages.driver").info(
            "done (%s): %d steps, loss %s → %s; run dir %s", art["reason"], art["steps"],
            _fmt(art["first_loss"]), _fmt(art["last_loss"]), art["run_dir"])
    return 0


def _destroy_process_group() -> None:
    import torch

    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _fmt(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.4f}"
