"""Which frames a clip uses: dense windows with a stride, TSN segments, multi-view test sets.

Pure functions of (frame range, clip shape, rng) so exact indices are testable. All indices are
absolute frame numbers inside [start, end) of the video; windows longer than the video repeat a
frame instead of failing. Fine-tuning and evaluation follow the official VideoMAE V2 datasets
index for index (tests/reference_eval holds views the official code produced); pre-training
windows (`dense_indices`) follow its pre-training sampler.
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
    """Pre-training window: `num_frames` frames `stride` apart. rng given = random window; None =
    the centred window. Short ranges start at `start` and repeat the last frame."""
    length = end - start
    span = (num_frames - 1) * stride + 1
    if length >= span:
        offset = int(rng.integers(0, length - span + 1)) if rng is not None else (length - span) // 2
    else:
        offset = 0
    return np.minimum(start + offset + np.arange(num_frames) * stride, end - 1).astype(np.int64)


def finetune_window(start: int, end: int, num_frames: int, stride: int,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """Fine-tuning / validation clip as the official VideoClsDataset takes it: `num_frames`
    points of a linspace over num_frames·stride frames, truncated (16 × 4 → 0, 4, 8, 12, 17, …,
    59, 63), ending at a random frame (rng; never the video's last, as officially) or centred
    (None). A video no longer than that: a linspace over the whole video with length // stride
    points, padded with its last frame."""
    length = end - start
    span = num_frames * stride
    if length <= span:
        n = length // stride
        pos = np.concatenate([np.linspace(0, length, num=n), np.full(num_frames - n, float(length))])
        pos = np.clip(pos, 0, length - 1)
    else:
        stop = int(rng.integers(span, length)) if rng is not None else (span + length) // 2
        pos = np.clip(np.linspace(stop - span, stop, num=num_frames), stop - span, stop - 1)
    return start + pos.astype(np.int64)


def segment_indices(start: int, end: int, num_segments: int,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """TSN clip as the official RawFrameClsDataset takes it: `num_segments` segments of
    length // num_segments frames (the remainder unused), a random frame of each (rng) or its
    middle (None). Fewer frames than segments: every frame once, after copies of the first."""
    length = end - start
    seg = length // num_segments
    if seg > 0:
        offsets = rng.integers(seg, size=num_segments) if rng is not None else seg // 2
        pos = np.arange(num_segments) * seg + offsets
    else:
        pos = np.concatenate([np.zeros(num_segments - length), np.arange(length)])
    return start + pos.astype(np.int64)


def dense_test_views(start: int, end: int, num_frames: int, stride: int,
                     num_views: int) -> list[np.ndarray]:
    """Official Kinetics-style test views: the video is taken every `stride` frames (padded to a
    clip with that last taken frame) and `num_views` runs of `num_frames` consecutive taken
    frames start at int(k · room / (num_views − 1)) (300 frames, 16 × 4, 5 views: 0, 56, 116,
    176, 236). One view: the centred run (the official code cannot run one)."""
    taken = np.arange(start, end, stride, dtype=np.int64)
    taken = np.concatenate([taken, np.full(max(num_frames - len(taken), 0), taken[-1])])
    room = len(taken) - num_frames
    offsets = [room // 2] if num_views == 1 else _spread(room, num_views)
    return [taken[o:o + num_frames] for o in offsets]


def segment_test_views(start: int, end: int, num_segments: int,
                       num_views: int) -> list[np.ndarray]:
    """Official SSv2 test views: view k takes frame int(k·tick/K + tick·x) of segment x, with
    tick = length / num_segments (phase 0 and ½ for two views), in the official float order."""
    tick = (end - start) / float(num_segments)
    return [start + np.array([int(k * tick / num_views + tick * x) for x in range(num_segments)],
                             dtype=np.int64) for k in range(num_views)]


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


def centre_crop_offset(height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of the official validation CenterCrop: round((side − size) / 2) with Python's
    half-to-even rounding (room 3 → 2, room 5 → 2), not room // 2."""
    if height < size or width < size:
        raise ValueError(f"crop {size} larger than frame {height}x{width}")
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def union_indices(views: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Frames to decode once for all views, and each view as positions into that set."""
    unique = np.unique(np.concatenate(views))
    return unique, [np.searchsorted(unique, v) for v in views]
