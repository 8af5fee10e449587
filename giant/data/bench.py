"""Pre-training loader throughput: how many videos/s (and clips/s) N worker processes deliver.

Times the real path (decode → multi-scale crops → masks → collate) after one warm-up batch per
worker, so process start-up is not counted. Used by `giant data bench`; numbers go to
docs/PERFORMANCE.md.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from giant.data.datasets import PretrainClips
from giant.data.loader import (ResumableDistributedSampler, collate_pretrain, make_loader,
                               set_loader_epoch)
from giant.data.manifest import load_entries
from giant.errors import DataError

log = logging.getLogger(__name__)


def _mask_fn(num_frames: int, size: int, patch: int = 16, tubelet: int = 2):
    """The stage's default masks (tube 0.9 + running cell 0.5) on the token grid of a model
    with this patch (ViT-g: 14) and tubelet, as `giant.masking.token_grid` computes it for the
    pre-training stage. Imported lazily so the data package never imports model code at import
    time; None if unavailable."""
    if patch < 1 or tubelet < 1 or size % patch or num_frames % tubelet:
        raise DataError(f"clip {num_frames}x{size}x{size} does not split into {tubelet}x{patch}x"
                        f"{patch} cubes; pick --size a multiple of --patch and --num-frames a "
                        "multiple of the tubelet")
    try:
        from giant.config import MaskConfig, ModelConfig
        from giant.masking import MaskGenerator, token_grid

        grid = token_grid(ModelConfig(num_frames=num_frames, img_size=size, patch_size=patch,
                                      tubelet_size=tubelet))
        return MaskGenerator(MaskConfig(), grid)
    except Exception as exc:  # noqa: BLE001 - a benchmark must still run without masks
        log.warning("benchmarking without masks (%s)", exc)
        return None


def run_bench(manifest: str, root: str = "", backend: str = "decord", workers: int = 2,
              batch_size: int = 4, num_sample: int = 4, num_frames: int = 16,
              sampling_rate: int = 4, size: int = 224, num_videos: int = 200,
              masks: bool = True, seed: int = 0, patch: int = 16, tubelet: int = 2) -> dict:
    """Run the loader until `num_videos` videos were timed; return the rates. Masks are drawn
    on the token grid of a model with `patch` × `tubelet` cubes (ViT-g: patch 14)."""
    entries = load_entries(manifest, root, "pretrain", seed)
    mask_fn = _mask_fn(num_frames, size, patch, tubelet) if masks else None
    dataset = PretrainClips(entries, num_frames, size, sampling_rate, num_sample, mask_fn,
                            backend, seed)
    sampler = ResumableDistributedSampler(len(dataset), seed=seed)
    loader = make_loader(dataset, sampler, batch_size, workers, collate_pretrain)
    warmup = max(workers, 1)
    videos = clips = failed = seen = 0
    start = None
    epoch = 0
    while videos < num_videos:
        set_loader_epoch(loader, epoch)
        for batch in loader:
            seen += 1
            if seen == warmup:
                start = time.perf_counter()
                continue
            if start is None:
                continue
            videos += batch["num_videos"]
            clips += batch["video"].shape[0]
            failed += batch["num_failed"]
            if videos >= num_videos:
                break
        epoch += 1
    elapsed = time.perf_counter() - start
    return {"backend": backend, "workers": workers, "videos": videos, "clips": clips,
            "failed": failed, "seconds": round(elapsed, 3),
            "videos_per_s": round(videos / elapsed, 2), "clips_per_s": round(clips / elapsed, 2),
            "videos_per_s_per_worker": round(videos / elapsed / max(workers, 1), 2),
            "masks": mask_fn is not None, "token_grid": _grid(mask_fn),
            "clip": f"{num_frames}x{size}x{size}", "sampling_rate": sampling_rate,
            "num_sample": num_sample}


def _grid(mask_fn) -> list | None:
    return list(mask_fn.grid) if mask_fn is not None else None


def profile_stages(manifest: str, root: str = "", backend: str = "decord", num_sample: int = 4,
                   num_frames: int = 16, sampling_rate: int = 4, size: int = 224,
                   num_videos: int = 60, masks: bool = True, seed: int = 0, patch: int = 16,
                   tubelet: int = 2) -> dict:
    """Single-core cost of each stage of one pre-training item, in this process (no workers,
    one torch thread): the per-core rate a loader worker can reach at best."""
    entries = load_entries(manifest, root, "pretrain", seed)
    mask_fn = _mask_fn(num_frames, size, patch, tubelet) if masks else None
    dataset = PretrainClips(entries, num_frames, size, sampling_rate, num_sample, mask_fn,
                            backend, seed)
    rng = np.random.default_rng(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cost = {"decode": 0.0, "crop_resize": 0.0, "masks": 0.0}
    try:
        for n in range(num_videos):
            t0 = time.perf_counter()
            video = dataset.decode(entries[n % len(entries)], rng)
            t1 = time.perf_counter()
            dataset.crops(video, rng)
            t2 = time.perf_counter()
            if mask_fn is not None:
                dataset.masks(n)
            t3 = time.perf_counter()
            cost["decode"] += t1 - t0
            cost["crop_resize"] += t2 - t1
            cost["masks"] += t3 - t2
    finally:
        torch.set_num_threads(threads)
    h, w = video.shape[-2:]
    per_video = {k: round(1e3 * v / num_videos, 2) for k, v in cost.items()}
    total = sum(cost.values()) / num_videos
    return {"backend": backend, "videos": num_videos, "ms_per_video": per_video,
            "videos_per_s_per_core": round(1 / total, 2), "masks": mask_fn is not None,
            "token_grid": _grid(mask_fn), "frame_size": f"{w}x{h}",
            "clip": f"{num_frames}x{size}x{size}", "sampling_rate": sampling_rate,
            "num_sample": num_sample}
