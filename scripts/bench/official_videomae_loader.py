"""The official VideoMAE V2 pre-training loader on a giant manifest, timed like `giant data bench`.

Run from a scratch checkout of OpenGVLab/VideoMAEv2 (never vendored into giant):

    git clone https://github.com/OpenGVLab/VideoMAEv2 /tmp/VideoMAEv2
    pip install --target /tmp/vmae-site opencv-python-headless pandas python-dateutil tensorboardX
    PYTHONPATH=/tmp/vmae-site:/tmp/VideoMAEv2 OMP_NUM_THREADS=1 \
        python scripts/bench/official_videomae_loader.py MANIFEST --workers 1 --videos 60

Builds their `build_pretraining_dataset` (decord, GroupMultiScaleCrop on PIL images, float
normalisation, tube 0.9 + running-cell 0.5 masks, num_sample repeats) and their
`multiple_pretrain_samples_collate`, writes the manifest's videos as their list format
(`path 0 -1`), and times batches after one warm-up batch per worker. `--profile` instead times
single items in this process with CPU time (videos per CPU-second, like `giant data bench
--profile`). Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from argparse import Namespace
from functools import partial


def build(list_file: str, args) -> object:
    from dataset import build_pretraining_dataset  # the official package, from PYTHONPATH

    grid = args.num_frames // 2, args.size // args.patch, args.size // args.patch
    official = Namespace(input_size=args.size, mask_type="tube", mask_ratio=0.9,
                         decoder_mask_type="run_cell", decoder_mask_ratio=0.5, window_size=grid,
                         data_root="", data_path=list_file, fname_tmpl="img_{:05}.jpg",
                         num_frames=args.num_frames, sampling_rate=args.sampling_rate,
                         num_sample=args.num_sample)
    return build_pretraining_dataset(official)


def loader_rate(dataset, args) -> dict:
    import torch
    from utils import multiple_pretrain_samples_collate, seed_worker

    from giant.data.bench import CpuMeter

    loader = torch.utils.data.DataLoader(
        dataset, sampler=torch.utils.data.RandomSampler(dataset), batch_size=args.batch_size,
        num_workers=args.workers, drop_last=True, worker_init_fn=seed_worker,
        collate_fn=partial(multiple_pretrain_samples_collate, fold=False),
        persistent_workers=args.workers > 0)
    warmup, seen, videos, clips, start = max(args.workers, 1), 0, 0, 0, None
    meter = CpuMeter()  # this process + workers, the same meter as `giant data bench`
    while videos < args.videos:
        for frames, _, _ in loader:
            seen += 1
            if seen == warmup:
                start = time.perf_counter()
                meter.start()
                continue
            if start is None:
                continue
            videos += args.batch_size
            clips += frames.shape[0]
            if videos >= args.videos:
                break
    elapsed = time.perf_counter() - start
    cpu = meter.stop()
    return {"videos": videos, "clips": clips, "seconds": round(elapsed, 2),
            "cpu_seconds": round(cpu, 2), "videos_per_cpu_s": round(videos / cpu, 2),
            "videos_per_s": round(videos / elapsed, 2), "clips_per_s": round(clips / elapsed, 2),
            "videos_per_s_per_worker": round(videos / elapsed / max(args.workers, 1), 2)}


def profile(dataset, args) -> dict:
    import torch

    torch.set_num_threads(1)
    dataset[0]  # warm-up: imports, first decord open
    t_cpu, t_wall = time.process_time(), time.perf_counter()
    for i in range(args.videos):
        dataset[i % len(dataset)]
    cpu, wall = time.process_time() - t_cpu, time.perf_counter() - t_wall
    return {"videos": args.videos, "cpu_ms_per_video": round(1e3 * cpu / args.videos, 1),
            "wall_ms_per_video": round(1e3 * wall / args.videos, 1),
            "videos_per_cpu_s": round(args.videos / cpu, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("manifest", help="a giant manifest (its video files are used)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-sample", type=int, default=4)
    p.add_argument("--num-frames", type=int, default=16)
    p.add_argument("--sampling-rate", type=int, default=4)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--videos", type=int, default=60)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()

    from giant.data.manifest import load_entries

    paths = [e.path for e in load_entries(args.manifest, weighted=False)]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("".join(f"{path} 0 -1\n" for path in paths))
    try:
        dataset = build(f.name, args)
        result = profile(dataset, args) if args.profile else loader_rate(dataset, args)
    finally:
        os.unlink(f.name)
    print(json.dumps({"pipeline": "official VideoMAE V2", "manifest": args.manifest,
                      "workers": 0 if args.profile else args.workers, **result,
                      "loadavg_1m": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
