"""uint8 transforms: crop geometry, video-consistent RandAugment, cube erasing, normalisation."""
import random

import numpy as np
import torch

from giant.data.transforms import (VideoRandAugment, crop_resize, cube_erase, frames_to_tensor,
                                   multi_scale_crop_box, normalize_on_device,
                                   random_resized_crop_box, resize_short_side, stack_cthw,
                                   to_cthw)


def test_multi_scale_crop_box_candidates():
    # short side 256: sides int(256·s) = 256, 224, 192, 168 (224 snaps to the target size)
    sides = [256, 224, 192, 168]
    pairs = {(sides[i], sides[j]) for i in range(4) for j in range(4) if abs(i - j) <= 1}
    seen_pairs, seen_offsets = set(), set()
    rng = np.random.default_rng(0)
    for _ in range(400):
        top, left, h, w = multi_scale_crop_box(256, 340, 224, rng)
        seen_pairs.add((h, w))
        sh, sw = (256 - h) // 4, (340 - w) // 4
        offset = (top, left)
        assert offset in {(0, 0), (0, 4 * sw), (4 * sh, 0), (4 * sh, 4 * sw), (2 * sh, 2 * sw)}
        seen_offsets.add((offset[0] == 0, offset[1] == 0, offset == (2 * sh, 2 * sw)))
        assert top + h <= 256 and left + w <= 340
    assert seen_pairs == pairs
    assert len(seen_offsets) >= 4


def test_random_resized_crop_box():
    rng = np.random.default_rng(1)
    for _ in range(300):
        top, left, h, w = random_resized_crop_box(240, 320, rng)
        assert 0 <= top and top + h <= 240 and 0 <= left and left + w <= 320
        assert 0.08 * 240 * 320 * 0.9 <= h * w <= 240 * 320
    # no try fits a 10×1000 frame → the fallback: largest centred crop, aspect clamped to 1.0
    assert random_resized_crop_box(10, 1000, rng, scale=(0.99, 1.0), ratio=(0.99, 1.0)) == (0, 495, 10, 10)


def test_crop_resize_and_layout():
    frames = np.random.default_rng(0).integers(0, 256, (5, 48, 64, 3), dtype=np.uint8)
    video = frames_to_tensor(frames)
    assert video.shape == (5, 3, 48, 64) and video.dtype == torch.uint8
    assert torch.equal(video[2, 1], torch.from_numpy(frames[2, :, :, 1]))
    out = crop_resize(video, (4, 8, 32, 32), 32)  # same size: an exact crop
    assert torch.equal(out, video[:, :, 4:36, 8:40])
    assert crop_resize(video, (0, 0, 48, 48), 20).shape == (5, 3, 20, 20)
    assert resize_short_side(video, 24).shape == (5, 3, 24, 32)
    # long side truncated like the official resize: 427·224/240 = 398.53 → 398
    wide = torch.zeros(1, 3, 240, 427, dtype=torch.uint8)
    assert resize_short_side(wide, 224).shape == (1, 3, 224, 398)
    assert resize_short_side(wide.transpose(-1, -2), 224).shape == (1, 3, 398, 224)
    cthw = to_cthw(video)
    assert cthw.shape == (3, 5, 48, 64) and cthw.is_contiguous()
    assert torch.equal(cthw[:, 3], video[3])


def test_stack_cthw_is_one_contiguous_copy():
    frames = np.random.default_rng(1).integers(0, 256, (4, 40, 56, 3), dtype=np.uint8)
    video = frames_to_tensor(frames)  # channels-last strides, as decoded
    clips = [crop_resize(video, (0, 0, 40, 40), 24), video[:, :, 8:32, 4:28]]
    out = stack_cthw(clips)
    assert out.shape == (2, 3, 4, 24, 24) and out.is_contiguous()
    assert torch.equal(out, torch.stack([to_cthw(c) for c in clips]))


def test_randaugment_same_ops_on_every_frame():
    ra = VideoRandAugment("rand-m9-n4-mstd0.5-inc1", img_size=64)
    frame = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    video = frames_to_tensor(np.stack([frame] * 6))
    changed = 0
    for seed in range(8):
        out = ra(video, seed)
        assert out.shape == video.shape and out.dtype == torch.uint8
        assert all(torch.equal(out[0], out[t]) for t in range(1, 6))  # identical frames stay so
        assert torch.equal(out, ra(video, seed))  # a pure function of the seed
        changed += not torch.equal(out, video)
    assert changed >= 6
    assert not torch.equal(ra(video, 0), ra(video, 1))


def test_randaugment_leaves_global_random_state_alone():
    ra = VideoRandAugment(img_size=32)
    video = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    random.seed(123)
    expected = [random.random() for _ in range(3)]
    random.seed(123)
    ra(video, 5)
    assert [random.random() for _ in range(3)] == expected


def test_cube_erase_same_box_in_every_frame():
    video = torch.full((4, 3, 40, 40), 7, dtype=torch.uint8)
    out = cube_erase(video, np.random.default_rng(0), prob=1.0)
    changed = out != 7
    assert changed.any() and torch.equal(video, torch.full_like(video, 7))  # input untouched
    boxes = changed.any(dim=1)  # [T, H, W]
    rows, cols = torch.where(boxes.any(0))
    for t in range(4):  # one rectangle, the same in every frame; fresh noise per frame
        assert torch.equal(boxes[t, rows.min():rows.max() + 1, cols.min():cols.max() + 1].all(), torch.tensor(True))
        assert boxes[t].sum() == boxes[0].sum()
    assert not torch.equal(out[0], out[1])
    assert torch.equal(cube_erase(video, np.random.default_rng(0), prob=0.0), video)


def test_normalize_on_device_exact():
    video = torch.tensor([0, 255, 128], dtype=torch.uint8).view(1, 3, 1, 1, 1).expand(2, 3, 2, 2, 2)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    out = normalize_on_device(video, mean, std)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2, 2)
    expected = torch.tensor([(0 - 0.485) / 0.229, (1 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225])
    assert torch.allclose(out[0, :, 0, 0, 0], expected, atol=1e-6)
    assert normalize_on_device(video[0], mean, std).shape == (3, 2, 2, 2)  # one clip [C,T,H,W]
    assert normalize_on_device(video, mean, std, torch.float64).dtype == torch.float64


def test_resize_is_bilinear_without_antialias_like_official():
    # official fine-tuning / test resizes: cv2 INTER_LINEAR and F.interpolate(bilinear), neither
    # antialiased; giant's uint8 bilinear is within one grey level of the float computation
    def bilinear(x, size):
        return torch.nn.functional.interpolate(x.float(), size=size, mode="bilinear",
                                               align_corners=False).round()

    frames = np.random.default_rng(2).integers(0, 256, (3, 48, 80, 3), dtype=np.uint8)
    video = frames_to_tensor(frames)
    out = resize_short_side(video, 16)
    assert out.shape == (3, 3, 16, 26) and out.dtype == torch.uint8
    assert (out.float() - bilinear(video, (16, 26))).abs().max() <= 1
    crop_out = crop_resize(video, (0, 10, 48, 60), 20)
    assert (crop_out.float() - bilinear(video[..., 10:70], (20, 20))).abs().max() <= 1
    up = resize_short_side(video[:, :, :8, :12], 16)  # up: the same bilinear
    assert (up.float() - bilinear(video[:, :, :8, :12], (16, 24))).abs().max() <= 1
    # the antialiased resize (PIL's bilinear: official pre-training crops) is the named option
    smooth = resize_short_side(video, 16, antialias=True)
    assert smooth.shape == out.shape and (smooth.float() - bilinear(video, (16, 26))).abs().max() > 10


def test_randaugment_fill_is_official_grey():
    # the official fine-tuning RandAugment gets no image mean: uncovered pixels are (128, 128, 128)
    ra = VideoRandAugment("rand-m9-n2-mstd0.5-inc1", img_size=32)
    fills = {op.kwargs.get("fillcolor") for op in ra._ra.ops}
    assert fills == {(128, 128, 128)}
    rotate = next(op for op in ra._ra.ops if op.name == "Rotate")
    ra._ra.ops, ra._ra.num_layers, ra._ra.choice_weights = [rotate], 1, None
    rotate.prob, rotate.magnitude, rotate.magnitude_std = 1.0, 10, 0
    video = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)  # black: only the fill is grey
    out = ra(video, 0)
    assert out[0, :, 0, 0].tolist() == [128, 128, 128] and torch.equal(out[0], out[1])
