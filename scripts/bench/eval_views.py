"""Multi-view evaluation throughput: videos/s of `giant evaluate`'s own path (TestViews decode
once per video + one forward of all its views), for a classifier of any size.

Throughput does not depend on the weights, so a randomly initialised classifier is written as an
artifact first; the real loader, decoder, crops and model then run exactly as in `giant evaluate`.

    python scripts/bench/eval_views.py --model tiny --frames 8 --img-size 32 --manifest data/synth/val.csv
    python scripts/bench/eval_views.py --model vit_b --frames 16 --img-size 224 --manifest data/synth/val.csv --videos 4
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--patch", type=int, default=0, help="0 = the size's own patch")
    p.add_argument("--classes", type=int, default=400)
    p.add_argument("--manifest", required=True, help="labelled manifest (path,label)")
    p.add_argument("--videos", type=int, default=0, help="first N videos only (0 = all)")
    p.add_argument("--views", default="5x3", help="temporal x spatial")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--precision", default="auto")
    args = p.parse_args()

    from safetensors.torch import save_file

    from giant.config import ModelConfig, load_config
    from giant.models import build_model
    from giant.models import resolve as resolve_model
    from giant.stages import evaluate

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    temporal, spatial = (int(v) for v in args.views.split("x"))
    extra = {"patch_size": args.patch} if args.patch else {}
    mcfg = resolve_model(ModelConfig(name=args.model, num_frames=args.frames, img_size=args.img_size,
                       num_classes=args.classes, **extra))
    with tempfile.TemporaryDirectory() as tmp:
        art = Path(tmp) / "model"
        art.mkdir()
        model = build_model(mcfg, "classifier")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(art / "weights.safetensors"))
        (art / "model.json").write_text(json.dumps({"kind": "finetune", "model": mcfg.__dict__}))
        manifest = Path(args.manifest)
        if args.videos:
            lines = manifest.read_text().splitlines()
            manifest = Path(tmp) / "subset.csv"
            manifest.write_text("\n".join(lines[: args.videos + 1]) + "\n")
            root = Path(args.manifest).parent
        else:
            root = manifest.parent
        cfg = load_config(None, [f"checkpoint.init_from={art}", f"data.test_manifest={manifest}",
                                 f"data.root={root}", f"data.test_temporal_views={temporal}",
                                 f"data.test_spatial_views={spatial}", f"data.num_workers={args.workers}",
                                 f"precision.encoder={args.precision}", "stage.device=cpu",
                                 f"stage.run_dir={Path(tmp) / 'run'}"])
        cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        result = evaluate.run(cfg, str(Path(tmp) / "out"))
        wall = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) + kids.ru_utime + kids.ru_stime
    print(json.dumps({"model": args.model, "frames": args.frames, "img_size": args.img_size,
                      "views": temporal * spatial, "videos": result["videos"],
                      "videos_per_s": result["videos"] / wall, "cpu_s_per_video": cpu / result["videos"],
                      "wall_s": wall, "workers": args.workers, "load_avg": os.getloadavg()[0]}))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
