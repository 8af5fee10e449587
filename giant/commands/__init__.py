"""Every command-line entry point of giant, one module per command.

A command module imports only the standard library, giant.console and giant.commands._args at
top; the library code it runs (torch, DeepSpeed) is imported inside the function that runs the
command, so `giant --help` and every `giant X --help` answer without loading either.
"""

from giant.stages.registry import commands as stage_commands  # no torch: names only

# command → (module with main(argv) -> int, one-line help); giant.cli dispatches on it
COMMANDS: dict[str, tuple[str, str]] = {
    **stage_commands(),  # pretrain, finetune, distill, evaluate: one row each in giant/stages/registry.py
    "pipeline": ("giant.commands.pipeline", "run | plan | status: the progressive pipeline (launch/pipelines/*.yaml), stage by stage"),
    "convert-maest": ("giant.commands.convert_maest", "official facebookresearch/mae_st checkpoint -> weights.safetensors + model.json"),
    "export": ("giant.commands.export", "consolidate a DeepSpeed checkpoint into weights.safetensors + model.json"),
    "reshard": ("giant.commands.reshard", "universal copy of a ZeRO checkpoint, to resume on a different number of ranks"),
    "convert": ("giant.commands.convert", "official VideoMAE / V2 checkpoints and HF transformers <-> giant weights"),
    "data": ("giant.commands.data", "synth | validate | k710 | prepare | bench: datasets and manifests"),
    "flops": ("giant.commands.flops", "parameters, forward MACs and training FLOPs for a model config"),
    "bench": ("giant.commands.bench", "training-step throughput, TFLOP/s, MFU and peak memory"),
    "memory": ("giant.commands.memory", "per-GPU peak memory of a recipe and the fastest activation checkpointing that fits"),
}
