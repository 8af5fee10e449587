"""`giant <command> ...`: one entry point; each command's module owns its own argparse.

User errors (GiantError, argparse's own) print as one line `giant <command>: error: ...` and
exit 2 instead of a traceback (giant.console holds the contract).
"""
from __future__ import annotations

import importlib
import logging
import sys

from giant.console import fail
from giant.errors import GiantError

# command → ("module" with main(argv) -> int, or "module:function"; one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("giant.stages.pretrain", "masked-autoencoder pre-training (run under deepspeed/torchrun)"),
    "finetune": ("giant.stages.finetune", "supervised fine-tuning / K710 post-pre-training (run under deepspeed/torchrun)"),
    "distill": ("giant.stages.distill", "distil a frozen teacher classifier into a student (also the `distill` script)"),
    "evaluate": ("giant.stages.evaluate", "multi-view test of a fine-tuned run: top-1/top-5, per-class, confusion, predictions"),
    "pipeline": ("giant.stages.pipeline_cli", "run | plan | status: the progressive pipeline (launch/pipelines/*.yaml), stage by stage"),
    "convert-maest": ("giant.interop.maest", "official facebookresearch/mae_st checkpoint -> weights.safetensors + model.json"),
    "export": ("giant.engine.checkpoint", "consolidate a DeepSpeed checkpoint into weights.safetensors + model.json"),
    "reshard": ("giant.engine.checkpoint:reshard_main",
                "universal copy of a ZeRO checkpoint, to resume on a different number of ranks"),
    "convert": ("giant.interop.convert", "official VideoMAE / V2 checkpoints and HF transformers <-> giant weights"),
    "data": ("giant.data.cli", "synth | validate | k710 | prepare | bench: datasets and manifests"),
    "flops": ("giant.flops", "parameters, forward MACs and training FLOPs for a model config"),
    "bench": ("giant.engine.bench", "training-step throughput, TFLOP/s, MFU and peak memory"),
    "memory": ("giant.memory_cli", "per-GPU peak memory of a recipe and the fastest activation checkpointing that fits"),
}


def _usage() -> str:
    lines = ["usage: giant <command> [options]   (giant <command> --help for details)", "",
             "commands:"]
    lines += [f"  {name:<10} {desc}" for name, (_, desc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        return fail("giant", f"unknown command {name!r} (one of {', '.join(COMMANDS)}; see `giant --help`)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    mod_name, _, func = COMMANDS[name][0].partition(":")
    entry = getattr(importlib.import_module(mod_name), func or "main")
    try:
        return int(entry(rest) or 0)
    except GiantError as exc:
        return fail(f"giant {name}", exc)


if __name__ == "__main__":
    sys.exit(main())
