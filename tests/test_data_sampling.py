"""Exact frame indices: dense windows, padding, TSN segments, test views, spatial crops.
Fine-tuning and test indices are the official VideoMAE V2 datasets' (see test_eval_parity)."""
import numpy as np
import pytest

from giant.data.sampling import (centre_crop_offset, dense_indices, dense_test_views,
                                 finetune_window, segment_indices, segment_test_views,
                                 spatial_crop_offsets, union_indices)


def test_dense_eval_is_centred():
    # 300 frames, 16 × stride 4 → span 61, room 239 → offset 119
    assert dense_indices(0, 300, 16, 4).tolist() == list(range(119, 180, 4))
    assert dense_indices(100, 161, 16, 4).tolist() == list(range(100, 161, 4))  # exact fit


def test_dense_train_random_window():
    starts = set()
    for seed in range(200):
        idx = dense_indices(10, 110, 16, 4, np.random.default_rng(seed))
        assert idx.dtype == np.int64 and len(idx) == 16
        assert np.all(np.diff(idx) == 4)
        assert 10 <= idx[0] and idx[-1] <= 109
        starts.add(int(idx[0]))
    assert starts == set(range(10, 50))  # every legal start (room 39) is reachable
    a = dense_indices(0, 300, 16, 4, np.random.default_rng(7))
    assert np.array_equal(a, dense_indices(0, 300, 16, 4, np.random.default_rng(7)))


def test_dense_short_video_pads_with_last_frame():
    assert dense_indices(0, 20, 16, 4).tolist() == [0, 4, 8, 12, 16] + [19] * 11
    assert dense_indices(5, 8, 4, 2, np.random.default_rng(0)).tolist() == [5, 7, 7, 7]
    assert dense_indices(0, 1, 3, 1).tolist() == [0, 0, 0]


def test_finetune_window_linspace_over_the_official_span():
    # official VideoClsDataset: 16 points of a linspace over 16·4 = 64 frames, truncated
    # (not every 4th frame over 61); validation centres it: stop (64 + 300) // 2 = 182
    offsets = [0, 4, 8, 12, 17, 21, 25, 29, 34, 38, 42, 46, 51, 55, 59, 63]
    assert finetune_window(0, 300, 16, 4).tolist() == [118 + o for o in offsets]
    assert finetune_window(100, 400, 16, 4).tolist() == [218 + o for o in offsets]  # inside [start, end)
    firsts = set()
    for seed in range(300):
        idx = finetune_window(0, 100, 16, 4, np.random.default_rng(seed))
        assert idx.dtype == np.int64 and len(idx) == 16
        assert (idx - idx[0]).tolist() == offsets
        firsts.add(int(idx[0]))
    # the random stop is in [64, 100): the window never reaches the last frame (official quirk)
    assert firsts == set(range(0, 36))


def test_finetune_window_short_videos_pad_with_last_frame():
    # length <= 64: linspace(0, length, length // 4) clipped to the last frame, then padding
    assert finetune_window(0, 30, 16, 4).tolist() == [0, 5, 10, 15, 20, 25, 29] + [29] * 9
    assert finetune_window(0, 64, 16, 4).tolist() == [0, 4, 8, 12, 17, 21, 25, 29, 34, 38, 42,
                                                      46, 51, 55, 59, 63]
    assert finetune_window(0, 5, 16, 4).tolist() == [0] + [4] * 15
    assert finetune_window(10, 13, 16, 4, np.random.default_rng(0)).tolist() == [12] * 16


def test_segments():
    # official RawFrameClsDataset: segments of length // K frames, the remainder unused
    assert segment_indices(0, 50, 8).tolist() == [3, 9, 15, 21, 27, 33, 39, 45]
    assert segment_indices(0, 32, 16).tolist() == list(range(1, 32, 2))
    seen = set()
    rng = np.random.default_rng(0)
    for _ in range(200):
        idx = segment_indices(10, 60, 8, rng)  # segments of 6 starting at 10; frames 58, 59 unused
        assert np.all((idx - 10) // 6 == np.arange(8))
        seen |= set(idx.tolist())
    assert seen == set(range(10, 58))
    # fewer frames than segments: every frame once, after copies of the first
    assert segment_indices(0, 5, 8).tolist() == [0, 0, 0, 0, 1, 2, 3, 4]
    assert segment_indices(3, 8, 8, rng).tolist() == [3, 3, 3, 3, 4, 5, 6, 7]


def test_dense_test_views():
    views = dense_test_views(0, 300, 16, 4, 5)
    # the official test mode takes every 4th frame (75 of them) and spreads 5 runs of 16 over
    # them: room 59, step 14.75 → runs at 0, 14, 29, 44, 59 → frames 0, 56, 116, 176, 236
    assert [int(v[0]) for v in views] == [0, 56, 116, 176, 236]
    assert all(v.tolist() == list(range(int(v[0]), int(v[0]) + 64, 4)) for v in views)
    assert [int(v[0]) for v in dense_test_views(0, 300, 16, 4, 1)] == [116]  # room 59 // 2 = 29
    assert dense_test_views(20, 320, 16, 4, 5)[1][0] == 76
    # short: the frames taken (0, 4, 8) padded with the last one taken, not the video's last
    short = dense_test_views(0, 10, 4, 4, 3)
    assert [v.tolist() for v in short] == [[0, 4, 8, 8]] * 3


def test_test_view_offsets_truncate_like_official():
    # room 7, 5 views: step 1.75 → int(0, 1.75, 3.5, 5.25, 7) = 0, 1, 3, 5, 7 (rounding: 0, 2, 4, 5, 7)
    views = dense_test_views(0, 11, 4, 1, 5)  # 11 frames, clip 4: room 7
    assert [int(v[0]) for v in views] == [0, 1, 3, 5, 7]
    assert views[2].tolist() == [3, 4, 5, 6]
    assert spatial_crop_offsets(10, 17, 10, 5) == [(0, 0), (0, 1), (0, 3), (0, 5), (0, 7)]
    assert spatial_crop_offsets(17, 10, 10, 5) == [(0, 0), (1, 0), (3, 0), (5, 0), (7, 0)]


def test_segment_test_views():
    # official: view k takes int(k·tick/K + tick·x), tick = length / segments: phases 0 and ½
    a, b = segment_test_views(0, 64, 16, 2)
    assert a.tolist() == list(range(0, 64, 4))
    assert b.tolist() == list(range(2, 64, 4))
    a, b = segment_test_views(0, 17, 8, 2)  # tick 2.125
    assert a.tolist() == [0, 2, 4, 6, 8, 10, 12, 14] and b.tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    a, b = segment_test_views(5, 10, 8, 2)  # fewer frames than segments: repeats
    assert a.tolist() == [5, 5, 6, 6, 7, 8, 8, 9] and b.tolist() == [5, 5, 6, 7, 7, 8, 9, 9]


def test_centre_crop_offset_rounds_half_to_even():
    # official CenterCrop: int(round((side − crop) / 2.)), Python rounding
    assert centre_crop_offset(16, 27, 16) == (0, 6)  # room 11: round(5.5) = 6
    assert centre_crop_offset(16, 25, 16) == (0, 4)  # room 9: round(4.5) = 4
    assert centre_crop_offset(26, 16, 16) == (5, 0)
    with pytest.raises(ValueError, match="crop 16 larger than frame 15x20"):
        centre_crop_offset(15, 20, 16)


def test_spatial_crop_offsets():
    assert spatial_crop_offsets(224, 298, 224, 3) == [(0, 0), (0, 37), (0, 74)]
    assert spatial_crop_offsets(320, 240, 224, 3) == [(0, 8), (48, 8), (96, 8)]
    assert spatial_crop_offsets(256, 340, 224, 1) == [(16, 58)]
    with pytest.raises(ValueError, match="crop 224 larger than frame 200x300"):
        spatial_crop_offsets(200, 300, 224, 3)


def test_union_indices():
    views = [np.array([0, 4, 8, 8]), np.array([4, 8, 12, 12])]
    unique, pos = union_indices(views)
    assert unique.tolist() == [0, 4, 8, 12]
    assert [unique[p].tolist() for p in pos] == [v.tolist() for v in views]
