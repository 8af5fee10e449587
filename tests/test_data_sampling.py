"""Exact frame indices: dense windows, padding, TSN segments, test views, spatial crops."""
import numpy as np
import pytest

from giant.data.sampling import (dense_indices, dense_test_views, segment_indices,
                                 segment_test_views, spatial_crop_offsets, union_indices)


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


def test_segments():
    # 32 frames, 16 segments of 2: middles are 1, 3, 5, ...
    assert segment_indices(0, 32, 16).tolist() == list(range(1, 32, 2))
    assert segment_indices(0, 48, 16, phase=0.0).tolist() == list(range(0, 48, 3))
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = segment_indices(10, 58, 16, rng)  # segments of 3 starting at 10
        assert np.all((idx - 10) // 3 == np.arange(16))
    # fewer frames than segments repeats frames instead of failing
    assert segment_indices(0, 4, 8).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_dense_test_views():
    views = dense_test_views(0, 300, 16, 4, 5)
    # room 239 spread over 5 starts, truncated like the official code: 0, 59 (59.75),
    # 119 (119.5), 179 (179.25), 239
    assert [int(v[0]) for v in views] == [0, 59, 119, 179, 239]
    assert all(v.tolist() == list(range(int(v[0]), int(v[0]) + 61, 4)) for v in views)
    assert [int(v[0]) for v in dense_test_views(0, 300, 16, 4, 1)] == [119]
    short = dense_test_views(0, 10, 4, 4, 3)
    assert [v.tolist() for v in short] == [[0, 4, 8, 9]] * 3


def test_test_view_offsets_truncate_like_official():
    # room 7, 5 views: step 1.75 → int(0, 1.75, 3.5, 5.25, 7) = 0, 1, 3, 5, 7 (rounding: 0, 2, 4, 5, 7)
    views = dense_test_views(0, 11, 4, 1, 5)  # span 4 in 11 frames: room 7
    assert [int(v[0]) for v in views] == [0, 1, 3, 5, 7]
    assert views[2].tolist() == [3, 4, 5, 6]
    assert spatial_crop_offsets(10, 17, 10, 5) == [(0, 0), (0, 1), (0, 3), (0, 5), (0, 7)]
    assert spatial_crop_offsets(17, 10, 10, 5) == [(0, 0), (1, 0), (3, 0), (5, 0), (7, 0)]


def test_segment_test_views():
    a, b = segment_test_views(0, 64, 16, 2)
    assert a.tolist() == list(range(1, 64, 4))  # phase 0.25 of 4-frame segments
    assert b.tolist() == list(range(3, 64, 4))  # phase 0.75


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
