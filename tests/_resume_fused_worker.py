"""One rank of `launch/pretrain.py` with the optimizer a GPU run builds: fused AdamW (torch has
a fused CPU kernel too; giant asks for it on CUDA only). Records, right after the resume, what
the optimizer holds: each group's `fused` flag and each `step` tensor's dtype, device and value.

    python tests/_resume_fused_worker.py OUT.json [launch/pretrain.py arguments...]
"""
from __future__ import annotations

import json
import sys

import giant.engine.deepspeed as gd
from giant.commands import pretrain
from giant.stages import driver

OUT, ARGS = sys.argv[1], sys.argv[2:]
report: dict = {}
gd.adamw_fused = lambda device, offload: not offload  # the CUDA choice, on this CPU
resume = driver._resume


def _resume(found, ckpt, engine, meta, states):
    step = resume(found, ckpt, engine, meta, states)
    inner = engine.optimizer.optimizer  # the torch AdamW under DeepSpeed's ZeRO wrapper
    report["fused"] = [bool(g.get("fused")) for g in inner.param_groups]
    report["steps"] = [{"dtype": str(s["step"].dtype) if hasattr(s["step"], "dtype") else type(s["step"]).__name__,
                        "device": str(getattr(s["step"], "device", "none")), "param_device": str(p.device),
                        "value": float(s["step"])} for p, s in inner.state.items() if "step" in s]
    report["resumed_at"] = step
    return step


driver._resume = _resume
rc = pretrain.main(ARGS)
with open(OUT, "w") as f:
    json.dump({**report, "rc": rc}, f)
sys.exit(rc)
