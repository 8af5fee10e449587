"""Datasets on real synthetic videos: exact frames, shapes, dtypes, seeding, bad-data handling."""
import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

import giant.data.datasets as datasets_module
from giant.config import RunConfig
from giant.data.datasets import LabeledClips, PretrainClips, TestViews, derive_seed
from giant.data.decode import open_video
from giant.data.manifest import VideoEntry, read_manifest
from giant.data.sampling import dense_indices, finetune_window, segment_indices
from giant.errors import DataError


@pytest.fixture(scope="module")
def entries(synth_videos):
    return read_manifest(synth_videos.train_manifest)


def decode(path, indices):
    with open_video(path, "pyav") as reader:
        return torch.from_numpy(reader.get_frames(indices)).permute(3, 0, 1, 2)  # C,T,H,W


def fake_mask_fn(g: torch.Generator):
    perm = torch.randperm(64, generator=g)
    return perm[:6].sort().values, perm[:32].sort().values


def test_pretrain_item(entries):
    ds = PretrainClips(entries, num_frames=8, size=32, sampling_rate=2, num_sample=3,
                       mask_fn=fake_mask_fn, backend="pyav", seed=5)
    item = ds[4]
    assert item["video"].shape == (3, 3, 8, 32, 32) and item["video"].dtype == torch.uint8
    assert item["enc_keep"].shape == (3, 6) and item["enc_keep"].dtype == torch.int64
    assert item["dec_keep"].shape == (3, 32) and item["dec_keep"].dtype == torch.int64
    assert (item["index"], item["failed"], item["failed_paths"], item["valid"]) == (4, 0, [], True)
    for r in range(3):  # masks come from a generator seeded by (seed, epoch, index, attempt, r)
        g = torch.Generator().manual_seed(derive_seed(5, 0, 4, 0, r))
        assert torch.equal(item["enc_keep"][r], fake_mask_fn(g)[0])
    again = ds[4]
    assert torch.equal(item["video"], again["video"]) and torch.equal(item["dec_keep"], again["dec_keep"])
    assert not torch.equal(item["enc_keep"][0], item["enc_keep"][1])
    ds.set_epoch(1)
    assert not torch.equal(ds[4]["video"], item["video"])


def test_pretrain_one_window_for_all_repeats(entries):
    # scale 1 on a 64×64 video at size 64 = the whole frame: every repeat is the decoded window
    ds = PretrainClips(entries, num_frames=8, size=64, sampling_rate=3, num_sample=2,
                       backend="decord", seed=1, scales=(1.0,))
    item = ds[2]
    rng = np.random.default_rng(derive_seed(1, 0, 2, 0))
    expected = decode(entries[2].path, dense_indices(0, 32, 8, 3, rng))
    assert "enc_keep" not in item
    for r in range(2):
        assert (item["video"][r].int() - expected.int()).abs().float().mean() < 2  # decord vs pyav


# official fill_fix_offset(more_fix_crop=True), as (w, h) multiples of the steps
# ((image − crop) // 4): 4 corners, centre, 4 edge centres, 4 quarter points
OFFICIAL_OFFSETS = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0),
                    (1, 1), (3, 1), (1, 3), (3, 3)]


def test_pretrain_crops_use_the_official_13_offsets():
    height, width, size = 90, 160, 32
    ds = PretrainClips([VideoEntry("unused.mp4")], size=size, num_sample=4)
    # the official crop sizes: short side × (1, .875, .75, .66), at most one scale step apart
    sides = [int(90 * s) for s in (1, .875, .75, .66)]
    expected = set()
    for i, ch in enumerate(sides):
        for j, cw in enumerate(sides):
            if abs(i - j) <= 1:
                w_step, h_step = (width - cw) // 4, (height - ch) // 4
                expected |= {(b * h_step, a * w_step, ch, cw) for a, b in OFFICIAL_OFFSETS}
    rng = np.random.default_rng(0)
    seen = {box for _ in range(3000) for box in ds.crop_boxes(height, width, rng)}
    assert seen == expected
    smallest = {(top, left) for top, left, ch, cw in seen if ch == cw == sides[-1]}
    assert len(smallest) == 13  # both steps > 0 here: 13 distinct places (5 without more_fix_crop)


def test_per_source_stride_and_frame_range(entries):
    e = replace(entries[0], sampling_rate=1, start=10, end=14)
    ds = PretrainClips([e], num_frames=6, size=64, sampling_rate=4, num_sample=1,
                       backend="pyav", scales=(1.0,))
    expected = decode(e.path, [10, 11, 12, 13, 13, 13])  # stride 1 inside [10, 14), padded
    assert torch.equal(ds[0]["video"][0], expected)


def test_bad_video_is_replaced_logged_once_and_counted(entries, corrupt_videos, caplog):
    bad = VideoEntry(str(corrupt_videos["garbage"]), 0, where="m.csv:3")
    mixed = [entries[0], bad, entries[1]]
    ds = PretrainClips(mixed, num_frames=4, size=32, sampling_rate=2, num_sample=2, backend="pyav")
    with caplog.at_level(logging.WARNING, logger="giant.data.datasets"):
        a, b = ds[1], ds[1]
    assert a["valid"] and a["failed"] >= 1 and a["failed_paths"][0] == bad.path
    assert "cannot open" in a["failed_reasons"][0]
    assert torch.equal(a["video"], b["video"])  # the substitute is deterministic
    warnings = [r for r in caplog.records if bad.path in r.getMessage()]
    assert len(warnings) == 1 and "m.csv:3" in warnings[0].getMessage()


def test_all_bad_stops_after_bounded_retries(corrupt_videos):
    bad = [VideoEntry(str(corrupt_videos[k]), where=f"m.csv:{i + 2}")
           for i, k in enumerate(("garbage", "missing", "empty"))]
    ds = PretrainClips(bad, num_frames=4, size=32, num_sample=1, max_retries=3)
    with pytest.raises(DataError, match=r"4 videos in a row could not be read, starting at .*garbage.mp4") as err:
        ds[0]
    assert "listed at m.csv:2)" in str(err.value)  # the manifest line to fix


def test_labeled_train(entries):
    ds = LabeledClips(entries, num_frames=8, size=48, sampling_rate=2, train=True, num_sample=1,
                      backend="pyav", seed=3)
    item = ds[5]
    assert item["video"].shape == (3, 8, 48, 48) and item["video"].dtype == torch.uint8
    assert item["label"] == entries[5].label and item["valid"]
    assert torch.equal(item["video"], ds[5]["video"])
    two = LabeledClips(entries, num_frames=8, size=48, sampling_rate=2, num_sample=2, backend="pyav")
    pair = two[5]["video"]
    assert pair.shape == (2, 3, 8, 48, 48) and not torch.equal(pair[0], pair[1])


def test_labeled_train_window_is_the_official_linspace(entries):
    # whole-frame crop at the frame size, no RandAugment / flip / erasing: the clip is the
    # decoded window, drawn by finetune_window from the item's seeded generator
    ds = LabeledClips(entries, num_frames=8, size=64, sampling_rate=2, train=True, rand_augment="",
                      flip=False, reprob=0.0, backend="pyav", seed=3, train_scale=(1.0, 1.0))
    for index in (1, 5):
        window = finetune_window(0, 32, 8, 2, np.random.default_rng(derive_seed(3, 0, index, 0)))
        assert (window - window[0]).tolist() == [0, 2, 4, 6, 9, 11, 13, 15]
        assert torch.equal(ds[index]["video"], decode(entries[index].path, window))


def test_labeled_eval_is_centre_clip(entries):
    ds = LabeledClips(entries, num_frames=8, size=64, sampling_rate=2, train=False,
                      short_side=64, backend="pyav")
    item = ds[3]
    # official validation window: 32 frames, span 8·2 = 16, stop (16 + 32) // 2 = 24:
    # linspace(8, 24, 8) truncated, clipped to 23
    assert finetune_window(0, 32, 8, 2).tolist() == [8, 10, 12, 14, 17, 19, 21, 23]
    assert torch.equal(item["video"], decode(entries[3].path, [8, 10, 12, 14, 17, 19, 21, 23]))
    seg = LabeledClips(entries, num_frames=8, size=64, sampling="segments", train=False,
                       short_side=64, backend="pyav")
    assert segment_indices(0, 32, 8).tolist() == [2, 6, 10, 14, 18, 22, 26, 30]
    assert torch.equal(seg[3]["video"], decode(entries[3].path, [2, 6, 10, 14, 18, 22, 26, 30]))
    small = LabeledClips(entries, num_frames=4, size=32, train=False, short_side=40, backend="pyav")
    assert small[0]["video"].shape == (3, 4, 32, 32)


def test_labeled_eval_bad_video_gives_invalid_placeholder(entries, corrupt_videos):
    bad = VideoEntry(str(corrupt_videos["truncated"]), 2)
    ds = LabeledClips([entries[0], bad], num_frames=4, size=32, train=False, backend="pyav")
    item = ds[1]
    assert item["valid"] is False and item["label"] == 2 and item["failed"] == 1
    assert torch.equal(item["video"], torch.zeros(3, 4, 32, 32, dtype=torch.uint8))


def test_labeled_needs_labels(tmp_path):
    with pytest.raises(DataError, match=r"m.csv:2: LabeledClips needs a label on every line \(1 lines"):
        LabeledClips([VideoEntry("a.mp4", 1), VideoEntry("b.mp4", None, where="m.csv:2")])
    with pytest.raises(DataError, match=r"data.sampling='tsn': use one of \['dense', 'segments'\]"):
        LabeledClips([VideoEntry("a.mp4", 1)], sampling="tsn")


def test_test_views_decode_once_and_exact_crops(entries, monkeypatch):
    calls = []
    real_open = datasets_module.open_video

    def counting_open(path, backend):
        reader = real_open(path, backend)
        original = reader.get_frames
        reader.get_frames = lambda idx: calls.append(list(idx)) or original(idx)
        return reader

    monkeypatch.setattr(datasets_module, "open_video", counting_open)
    ds = TestViews(entries, num_frames=4, size=48, sampling_rate=4, num_temporal=2,
                   num_spatial=3, short_side=64, backend="pyav")
    item = ds[1]
    # official: every 4th frame (0 … 28), two runs of 4 at 0 and room 4
    assert len(calls) == 1 and calls[0] == [0, 4, 8, 12, 16, 20, 24, 28]
    assert item["video"].shape == (6, 3, 4, 48, 48) and item["label"] == entries[1].label
    windows = [[0, 4, 8, 12], [16, 20, 24, 28]]
    for k, window in enumerate(windows):
        frames = decode(entries[1].path, window)
        for s, left in enumerate((0, 8, 16)):  # square frame: crops along the width, top 8
            assert torch.equal(item["video"][k * 3 + s], frames[:, :, 8:56, left:left + 48])


def test_from_config(synth_videos):
    cfg = RunConfig()
    cfg.data.manifest, cfg.data.val_manifest = str(synth_videos.train_manifest), str(synth_videos.val_manifest)
    cfg.data.num_sample, cfg.data.sampling_rate, cfg.data.backend = 2, 2, "pyav"
    cfg.data.test_temporal_views, cfg.data.test_spatial_views = 2, 1
    cfg.model.num_frames, cfg.model.img_size = 4, 32
    pre = PretrainClips.from_config(cfg, "train", mask_fn=fake_mask_fn)
    assert len(pre) == 8 and pre[0]["video"].shape == (2, 3, 4, 32, 32)
    val = LabeledClips.from_config(cfg, "val")
    assert len(val) == 4 and not val.train and val[0]["video"].shape == (3, 4, 32, 32)
    test = TestViews.from_config(cfg, "test")  # no test_manifest → the val list
    assert len(test) == 4 and test[0]["video"].shape == (2, 3, 4, 32, 32)
    with pytest.raises(DataError, match="split='dev': use train, val or test"):
        LabeledClips.from_config(cfg, "dev")
