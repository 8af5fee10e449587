"""Peak host memory per rank to build ViT-g pre-training model for ZeRO-3, with/without zero.Init."""
import resource, sys, time, torch
from giant.config import load_config
from giant.engine.deepspeed import construct_model, init_distributed
cfg = load_config(None, ["model.name=vit_g", "engine.ds_config=ds_configs/zero3.json", "stage.device=cpu",
                         "optim.batch_size=1", "data.num_sample=1", f"engine.zero_init={sys.argv[1]}"])
rank, world, _, _ = init_distributed(cfg)
torch.manual_seed(0)
t = time.time()
m = construct_model(cfg, cfg.model.resolved(), "pretrain")
el = time.time() - t
local = sum(p.numel() if p.numel() else 0 for p in m.parameters()) + sum(p.ds_tensor.numel() for p in m.parameters() if hasattr(p, "ds_tensor"))
print(f"rank {rank}/{world} zero_init={sys.argv[1]}: build {el:.1f}s, local param elements {local/1e6:.1f} M, "
      f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/2**20:.2f} GiB", flush=True)
