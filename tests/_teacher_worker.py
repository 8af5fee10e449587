"""2-rank worker for tests/test_distill.py (run under torchrun, gloo): the same teacher loaded
whole and ZeRO-3-partitioned (distill.teacher_zero3) gives the same logits on each rank's own
clips, and each rank holds about half of it. Writes one JSON per rank to argv[1] (a directory);
argv[2] is the teacher artifact."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from giant.config import ModelConfig, load_config
from giant.engine.deepspeed import init_distributed
from giant.stages.teacher import teacher_logits
from giant.stages.distill import load_teacher
from giant.models import resolve as resolve_model

OUT, TEACHER = Path(sys.argv[1]), sys.argv[2]
RECIPE = str(Path(__file__).resolve().parents[1] / "launch/recipes/demo_distill.yaml")
BASE = [f"distill.teacher={TEACHER}", "model.num_frames=4", "model.img_size=32", "stage.device=cpu"]

cfg = load_config(RECIPE, BASE)
rank, world, _, device = init_distributed(cfg)
student = resolve_model(ModelConfig(name="tiny", img_size=32, patch_size=8, num_frames=4, num_classes=4))
x = torch.randn(3, 3, 4, 32, 32, generator=torch.Generator().manual_seed(rank))  # per-rank clips
res = {"rank": rank, "world": world}
for precision in ("fp32", "bf16"):
    whole, _, _ = load_teacher(load_config(RECIPE, BASE + [f"distill.teacher_precision={precision}"]), student, device)
    part, _, _ = load_teacher(load_config(RECIPE, BASE + [f"distill.teacher_precision={precision}",
                                                          "distill.teacher_zero3=true"]), student, device)
    a, b = teacher_logits(whole, x), teacher_logits(part, x)
    res[precision] = {"max_abs_diff": float((a - b).abs().max()), "max_abs": float(a.abs().max()),
                      "argmax_equal": bool(torch.equal(a.argmax(1), b.argmax(1))),
                      "full_numel": sum(p.numel() for p in whole.parameters()), "local_numel": part.local_numel(),
                      "shard_dtypes": sorted({str(p.ds_tensor.dtype) for p in part.engine.module.parameters()}),
                      "requires_grad": any(p.requires_grad for p in part.engine.module.parameters()),
                      "logits_grad_fn": b.grad_fn is not None}
(OUT / f"rank{rank}.json").write_text(json.dumps(res))
