"""Spatial augmentation on uint8 video tensors [T, C, H, W]; normalisation happens on device.

Loader workers stay in uint8 (4× less memory and host→device traffic than float32); the
engine calls `normalize_on_device`. Every random choice takes an explicit numpy Generator so a
sample is a pure function of (seed, epoch, index).
"""
from __future__ import annotations

import math
import random

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

PRETRAIN_SCALES = (1.0, 0.875, 0.75, 0.66)


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, C] numpy → uint8 [T, C, H, W] tensor (a view; channels-last memory,
    which the uint8 resize kernels handle fastest)."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)


def to_cthw(video: torch.Tensor) -> torch.Tensor:
    """[T, C, H, W] → contiguous [C, T, H, W], the layout the model's cube embedding expects."""
    return video.permute(1, 0, 2, 3).contiguous()


def stack_cthw(clips: list[torch.Tensor]) -> torch.Tensor:
    """R clips [T, C, H, W] → contiguous [R, C, T, H, W] in ONE copy: stacking the transposed
    views writes each clip straight into its slot (to_cthw per clip, then stack, copies twice)."""
    return torch.stack([clip.transpose(0, 1) for clip in clips]).contiguous()


def multi_scale_crop_box(height: int, width: int, size: int, rng: np.random.Generator,
                         scales=PRETRAIN_SCALES, max_distort: int = 1,
                         more_offsets: bool = False) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a VideoMAE multi-scale crop: side lengths = short side × scale
    (snapped to `size` within 3 px), aspect pairs at most `max_distort` scale steps apart,
    placed at a corner or the centre (13 fixed offsets with `more_offsets`)."""
    base = min(height, width)
    sides = [int(base * s) for s in scales]
    sides = [size if abs(s - size) < 3 else s for s in sides]
    pairs = [(h, w) for i, h in enumerate(sides) for j, w in enumerate(sides)
             if abs(i - j) <= max_distort]
    crop_h, crop_w = pairs[int(rng.integers(len(pairs)))]
    sh, sw = (height - crop_h) // 4, (width - crop_w) // 4
    offsets = [(0, 0), (0, 4 * sw), (4 * sh, 0), (4 * sh, 4 * sw), (2 * sh, 2 * sw)]
    if more_offsets:
        offsets += [(0, 2 * sw), (4 * sh, 2 * sw), (2 * sh, 4 * sw), (2 * sh, 0),
                    (sh, sw), (sh, 3 * sw), (3 * sh, sw), (3 * sh, 3 * sw)]
    top, left = offsets[int(rng.integers(len(offsets)))]
    return top, left, crop_h, crop_w


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w): area share in `scale`, log-uniform aspect in `ratio`; 10 tries, then
    the largest centred crop with a clamped aspect (torchvision's rule)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize(video: torch.Tensor, size: list[int], antialias: bool = False) -> torch.Tensor:
    """uint8 [..., H, W] → [..., size[0], size[1]], bilinear. antialias=False is the official
    fine-tuning and test resize (cv2 INTER_LINEAR, F.interpolate), here torchvision's uint8
    kernel: within one grey level of both, 6× faster than interpolating in float.
    antialias=True is PIL's bilinear, which the official pre-training crops use."""
    if list(video.shape[-2:]) == list(size):
        return video
    return TF.resize(video, list(size), antialias=antialias)


def crop_resize(video: torch.Tensor, box: tuple[int, int, int, int], size: int,
                antialias: bool = False) -> torch.Tensor:
    """Crop `box` = (top, left, h, w) from every frame and resize it to size×size (bilinear;
    `antialias` as in `resize`)."""
    top, left, h, w = box
    return resize(video[..., top:top + h, left:left + w], [size, size], antialias)


def resize_short_side(video: torch.Tensor, short: int, antialias: bool = False) -> torch.Tensor:
    """Resize so the shorter side is `short` pixels, keeping the aspect ratio; the long side is
    truncated like the official code (240×427 → 224×398, not 399)."""
    h, w = video.shape[-2:]
    if min(h, w) == short:
        return video
    if h <= w:
        new = (short, max(short, int(short * w / h)))
    else:
        new = (max(short, int(short * h / w)), short)
    return resize(video, list(new), antialias)


def crop(video: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    return video[..., top:top + size, left:left + size]


class VideoRandAugment:
    """timm RandAugment with the SAME ops, magnitudes and signs on every frame of a video.

    timm draws its randomness from the global `random` module; we give each video one seed,
    restore that state before each frame, and put the caller's state back afterwards. Pixels
    uncovered by rotate / shear / translate get `fill`: grey 128, as officially (the official
    fine-tuning passes no image mean to its RandAugment)."""

    def __init__(self, config: str = "rand-m7-n4-mstd0.5-inc1", img_size: int = 224,
                 fill=(128, 128, 128), interpolation: str = "bicubic"):
        from timm.data.auto_augment import rand_augment_transform
        from timm.data.transforms import str_to_pil_interp

        hparams = dict(translate_const=int(img_size * 0.45), img_mean=tuple(fill),
                       interpolation=str_to_pil_interp(interpolation))
        self.config = config
        self._ra = rand_augment_transform(config, hparams)

    def __call__(self, video: torch.Tensor, seed: int) -> torch.Tensor:
        from PIL import Image

        ra = self._ra
        rng = np.random.default_rng(seed)
        weights = ra.choice_weights
        chosen = rng.choice(len(ra.ops), ra.num_layers, replace=weights is None, p=weights)
        saved = random.getstate()
        try:
            random.seed(seed)
            state = random.getstate()
            frames = []
            for frame in video.permute(0, 2, 3, 1).numpy():
                random.setstate(state)
                img = Image.fromarray(frame)
                for k in chosen:
                    img = ra.ops[k](img)
                frames.append(np.asarray(img))
        finally:
            random.setstate(saved)
        return frames_to_tensor(np.stack(frames))


def cube_erase(video: torch.Tensor, rng: np.random.Generator, prob: float = 0.25,
               mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
               area=(0.02, 1 / 3), min_aspect: float = 0.3) -> torch.Tensor:
    """Random erasing with one box for all frames (VideoMAE 'cube' mode, 'pixel' fill).
    The official fill is N(0, 1) noise in normalised space; here the same noise is mapped back
    to uint8 (mean + std·z, clipped), so the device-side normalisation reproduces it."""
    if prob <= 0 or rng.random() >= prob:
        return video
    t, c, h, w = video.shape
    log_ratio = (math.log(min_aspect), math.log(1 / min_aspect))
    for _ in range(10):
        target = h * w * rng.uniform(*area)
        aspect = math.exp(rng.uniform(*log_ratio))
        eh, ew = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if eh < h and ew < w:
            top, left = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
            noise = rng.standard_normal((t, c, eh, ew))
            pixels = 255 * (np.asarray(mean)[:, None, None] + np.asarray(std)[:, None, None] * noise)
            video = video.clone()
            video[:, :, top:top + eh, left:left + ew] = torch.from_numpy(
                np.clip(np.round(pixels), 0, 255).astype(np.uint8))
            return video
    return video


def normalize_on_device(video: torch.Tensor, mean, std, dtype=torch.float32) -> torch.Tensor:
    """uint8 [..., C, T, H, W] (already on device) → float (x/255 − mean) / std.
    One fused pass per element; call it after the non-blocking host→device copy."""
    c = video.shape[-4]
    shape = (c, 1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=dtype, device=video.device).view(shape) * 255
    std_t = torch.as_tensor(std, dtype=dtype, device=video.device).view(shape) * 255
    return (video.to(dtype) - mean_t) / std_t
