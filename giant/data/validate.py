"""`giant data validate`: does every manifest entry open and decode (giant/commands/data.py
prints the result)."""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def check_entry(entry, backend: str, num_frames: int, stride: int, min_frames: int) -> str | None:
    """None if the entry opens, has >= min_frames frames, and decodes its centre clip and its
    last frame (which catches truncated files); else the reason. A video shorter than the clip
    passes unless min_frames says otherwise: training and evaluation pad it."""
    import numpy as np

    from giant.data.decode import VideoDecodeError, clip_range, header_frame_count, open_video
    from giant.data.sampling import dense_indices

    try:
        with open_video(entry.path, backend) as reader:
            promised = 0 if Path(entry.path).is_dir() else header_frame_count(entry.path)
            if promised and reader.num_frames < 0.95 * promised:
                return (f"truncated: {reader.num_frames} of the {promised} frames in its "
                        "header are readable")
            start, end = clip_range(reader, entry.start, entry.end, entry.numbered)
            if end - start < min_frames:
                return f"only {end - start} frames, need at least {min_frames}"
            indices = np.append(dense_indices(start, end, num_frames, stride), end - 1)
            frames = reader.get_frames(indices)
            if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
                return f"unexpected frame array {frames.shape} {frames.dtype}"
    except VideoDecodeError as exc:
        return str(exc)
    return None


def check_one(job) -> str | None:
    entry, backend, num_frames, stride, min_frames = job
    try:
        return check_entry(entry, backend, num_frames, stride, min_frames)
    except Exception as exc:  # noqa: BLE001 - one odd file must not abort the whole pool.map
        return f"{type(exc).__name__}: {exc}"


def validate_entries(entries, backend: str, num_frames: int, sampling_rate: int, min_frames: int,
                     workers: int) -> tuple[int, list]:
    """Decode each distinct clip of `entries` once. → (clips checked, [(entry, reason)] for
    every bad entry: a bad clip is reported on every line that lists it, each one needs fixing)."""
    slot: dict = {}  # (path, start, end) → job index
    jobs = []
    for e in entries:
        if (e.path, e.start, e.end) not in slot:
            slot[(e.path, e.start, e.end)] = len(jobs)
            jobs.append((e, backend, num_frames, e.sampling_rate or sampling_rate, min_frames))
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            reasons = list(pool.map(check_one, jobs, chunksize=8))
    else:
        reasons = [check_one(j) for j in jobs]
    bad = [(e, reasons[slot[(e.path, e.start, e.end)]]) for e in entries]
    return len(jobs), [(e, r) for e, r in bad if r is not None]
