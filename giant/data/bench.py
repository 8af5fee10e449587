"""Pre-training loader throughput: how many videos/s (and clips/s) N worker processes deliver.

Times the real path (decode → multi-scale crops → masks → collate) after one warm-up batch per
worker, so process start-up is not counted. Used by `giant data bench`; numbers go to
docs/PERFORMANCE.md.
"""
from __future__ import annotations

import logging
import os
import resource
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


class CpuMeter:
    """CPU seconds this process and its children (loader workers, also those that exited and
    were reaped) spent between `start()` and `stop()`. On a shared machine wall-clock rates
    swing with the load; CPU seconds per video is the per-core cost, and it barely moves."""

    def _children(self) -> dict:
        import psutil

        times = {}
        for child in psutil.Process().children(recursive=True):
            try:
                t = child.cpu_times()
                times[child.pid] = t.user + t.system
            except psutil.Error:  # exited between listing and reading
                pass
        return times

    @staticmethod
    def _rusage(who) -> float:
        r = resource.getrusage(who)
        return r.ru_utime + r.ru_stime

    def start(self) -> None:
        self._self = self._rusage(resource.RUSAGE_SELF)
        self._reaped = self._rusage(resource.RUSAGE_CHILDREN)
        self._live = self._children()

    def stop(self) -> float:
        now = self._children()
        used = self._rusage(resource.RUSAGE_SELF) - self._self
        # reaped since start: their whole life is in RUSAGE_CHILDREN, minus what they had used
        # before start; still alive: what they used since start
        used += self._rusage(resource.RUSAGE_CHILDREN) - self._reaped
        used -= sum(t for pid, t in self._live.items() if pid not in now)
        used += sum(t - self._live.get(pid, 0.0) for pid, t in now.items())
        return used


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
    meter = CpuMeter()
    epoch = 0
    while videos < num_videos:
        set_loader_epoch(loader, epoch)
        for batch in loader:
            seen += 1
            if seen == warmup:
                start = time.perf_counter()
                meter.start()
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
    cpu = meter.stop()
    return {"backend": backend, "workers": workers, "videos": videos, "clips": clips,
            "failed": failed, "seconds": round(elapsed, 3), "cpu_seconds": round(cpu, 3),
            "videos_per_cpu_s": round(videos / cpu, 2) if cpu > 0 else None,
            "loadavg_1m": round(os.getloadavg()[0], 2),
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
    cpu = dict(cost)
    try:
        for n in range(num_videos):
            marks = [(time.perf_counter(), time.process_time())]
            video = dataset.decode(entries[n % len(entries)], rng)
            marks.append((time.perf_counter(), time.process_time()))
            dataset.crops(video, rng)
            marks.append((time.perf_counter(), time.process_time()))
            if mask_fn is not None:
                dataset.masks(n)
            marks.append((time.perf_counter(), time.process_time()))
            for stage, (a, b) in zip(cost, zip(marks, marks[1:])):
                cost[stage] += b[0] - a[0]
                cpu[stage] += b[1] - a[1]
    finally:
        torch.set_num_threads(threads)
    h, w = video.shape[-2:]
    per_video = {k: round(1e3 * v / num_videos, 2) for k, v in cost.items()}
    total = sum(cost.values()) / num_videos
    cpu_total = sum(cpu.values()) / num_videos
    return {"backend": backend, "videos": num_videos, "ms_per_video": per_video,
            "videos_per_s_per_core": round(1 / total, 2),
            # CPU time: what the stages cost a core, whatever else the machine runs
            "cpu_ms_per_video": {k: round(1e3 * v / num_videos, 2) for k, v in cpu.items()},
            "videos_per_cpu_s": round(1 / cpu_total, 2) if cpu_total > 0 else None,
            "loadavg_1m": round(os.getloadavg()[0], 2), "masks": mask_fn is not None,
            "token_grid": _grid(mask_fn), "frame_size": f"{w}x{h}",
            "clip": f"{num_frames}x{size}x{size}", "sampling_rate": sampling_rate,
            "num_sample": num_sample}
