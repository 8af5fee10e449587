"""Peak host memory per rank to build the ViT-g pre-training model for ZeRO-3, with and without
deepspeed.zero.Init (docs/PERFORMANCE.md). Usage:
    torchrun --nproc_per_node 2 scripts/bench/zero3_build_memory.py true|false
"""
import resource
import sys
import time

import torch

from giant.config import load_config
from giant.engine.deepspeed import construct_model, init_distributed
from giant.models import resolve as resolve_model

cfg = load_config(None, ["model.name=vit_g", "engine.ds_config=ds_configs/zero3.json", "stage.device=cpu",
                         "optim.batch_size=1", "data.num_sample=1", f"engine.zero_init={sys.argv[1]}"])
rank, world, _, _ = init_distributed(cfg)
torch.manual_seed(0)
t0 = time.time()
model = construct_model(cfg, resolve_model(cfg.model), "pretrain")
seconds = time.time() - t0
# a partitioned parameter is empty and keeps this rank's slice in ds_tensor
held = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in model.parameters())
peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(f"rank {rank}/{world} zero_init={sys.argv[1]}: build {seconds:.1f}s, param elements held "
      f"{held / 1e6:.1f} M, peak RSS {peak_gib:.2f} GiB", flush=True)
