"""Which frames a clip uses: dense windows with a stride, TSN segments, multi-view test sets.

Pure functions of (frame range, clip shape, rng) so exact indices are testable. All indices are
absolute frame numbers inside [start, end) of the video; windows longer than the video pad with
the last frame (SPEC §4) instead of failing.
"""
from __future__ import annotations

import numpy as np


def _spread(room: int, count: int) -> list[int]:
    """`count` offsets from 0 to `room`: int(k · step) with step = room / (count − 1), the
    official VideoMAE test-view rule (truncation, not rounding; same float order)."""
    step = room / (count - 1)
    return [int(k * step) for k in range(count)]


def dense_indices(start: int, end: int, num_frames: int, stride: int,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """`num_frames` frames `stride` apart. rng given = random window (training); None = the
    centred window (evaluation). Short ranges start at `start` and repeat the last frame."""
    length = end - start
    span = (num_frames - 1) * stride + 1
    if length >= span:
        offset = int(rng.integers(0, length - span + 1)) if rng is not None else (length - span) // 2
    else:
        offset = 0
    return np.minimum(start + offset + np.arange(num_frames) * stride, end - 1).astype(np.int64)


def segment_indices(start: int, end: int, num_segments: int,
                    rng: np.random.Generator | None = None, phase: float = 0.5) -> np.ndarray:
    """TSN: one frame from each of `num_segments` equal segments. rng given = a random frame per
    segment (training); None = the frame at `phase` of each segment (0.5 = the middle)."""
    length = end - start
    seg = length / num_segments
    if rng is not None:
        offsets = rng.random(num_segments)
    else:
        offsets = np.full(num_segments, phase)
    pos = np.floor(seg * (np.arange(num_segments) + offsets)).astype(np.int64)
    return start + np.clip(pos, 0, length - 1)


def dense_test_views(start: int, end: int, num_frames: int, stride: int,
                     num_views: int) -> list[np.ndarray]:
    """`num_views` windows evenly spread from the first to the last possible start (offsets
    truncated like the official code: room 7, 5 views → 0, 1, 3, 5, 7)."""
    length = end - start
    span = (num_frames - 1) * stride + 1
    room = max(length - span, 0)
    offsets = [room // 2] if num_views == 1 else _spread(room, num_views)
    base = np.arange(num_frames) * stride
    return [np.minimum(start + o + base, end - 1).astype(np.int64) for o in offsets]


def segment_test_views(start: int, end: int, num_segments: int,
                       num_views: int) -> list[np.ndarray]:
    """TSN test views: view k takes the frame at phase (k + 0.5) / K of every segment."""
    return [segment_indices(start, end, num_segments, None, (k + 0.5) / num_views)
            for k in range(num_views)]


def spatial_crop_offsets(height: int, width: int, size: int, num_crops: int) -> list[tuple[int, int]]:
    """(top, left) of `num_crops` size×size crops spread along the long side (1 = centre;
    3 = start/centre/end), centred on the short side."""
    long_is_w = width >= height
    room_long = (width if long_is_w else height) - size
    room_short = (height if long_is_w else width) - size
    if room_long < 0 or room_short < 0:
        raise ValueError(f"crop {size} larger than frame {height}x{width}")
    along = [room_long // 2] if num_crops == 1 else _spread(room_long, num_crops)
    across = room_short // 2
    return [(across, a) if long_is_w else (a, across) for a in along]


def union_indices(views: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Frames to decode once for all views, and each view as positions into that set."""
    unique = np.unique(np.concatenate(views))
    return unique, [np.searchsorted(unique, v) for v in views]
