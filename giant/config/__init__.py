"""One typed config tree for every stage: recipe YAML + dotted overrides, validated, dumpable.

Recipes state only what differs from these defaults. Unknown keys are errors (a typo must never
silently fall back to a default on a week-long run). The resolved tree is written to the run
directory and into every checkpoint. The package imports nothing of giant but errors: schema
(the types), tree (load / overrides / dump), checks (cross-field validation); every name is
re-exported here, so callers write `from giant.config import X`.
"""
from giant.config.checks import SDPA_BACKENDS, validate
from giant.config.schema import (IMAGENET_MEAN, IMAGENET_STD, CheckpointConfig, DataConfig, DistillConfig,
                                 EngineConfig, FinetuneConfig, LoggingConfig, MaskConfig, ModelConfig,
                                 OptimConfig, PrecisionConfig, RunConfig, StageConfig, token_grid, yaml_load)
from giant.config.tree import dump_config, from_dict, load_config, merge_trees, parse_overrides, read_yaml, to_dict

__all__ = ["merge_trees", "read_yaml", "IMAGENET_MEAN", "IMAGENET_STD", "SDPA_BACKENDS", "CheckpointConfig", "DataConfig", "DistillConfig",
           "EngineConfig", "FinetuneConfig", "LoggingConfig", "MaskConfig", "ModelConfig", "OptimConfig",
           "PrecisionConfig", "RunConfig", "StageConfig", "dump_config", "from_dict", "load_config",
           "parse_overrides", "to_dict", "token_grid", "validate", "yaml_load"]
