"""Datasets: PretrainClips (repeated aug + masks), LabeledClips (fine-tune), TestViews.

Each video is decoded once per item; crops, flips and masks are drawn from generators seeded by
(seed, epoch, index, attempt[, repeat]), so a resumed run reproduces its samples. Outputs stay
uint8 (`normalize_on_device` runs in the engine). A video that cannot be read is logged once,
counted in the sample (`failed_paths`) and, in training, replaced by a deterministic choice of
another video, at most `max_retries` times: bad data costs a few skips, never the run.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from giant.data.decode import BACKENDS, VideoDecodeError, clip_range, open_video
from giant.data.manifest import VideoEntry, load_entries
from giant.data.sampling import (centre_crop_offset, dense_indices, dense_test_views,
                                 finetune_window, segment_indices, segment_test_views,
                                 spatial_crop_offsets, union_indices)
from giant.data.seeding import derive_seed  # re-exported: tests and callers import it here
from giant.data.transforms import (PRETRAIN_SCALES, VideoRandAugment, crop, crop_resize,
                                   cube_erase, frames_to_tensor, multi_scale_crop_box,
                                   random_resized_crop_box, resize_short_side, stack_cthw,
                                   to_cthw)
from giant.errors import DataError

log = logging.getLogger(__name__)

MaskFn = Callable[[torch.Generator], tuple]
SAMPLINGS = ("dense", "segments")


class VideoDataset(Dataset):
    """Shared decode-with-bounded-retry logic. Subclasses implement `_load(entry, index, rng)`."""

    substitute = True  # training: replace a bad video; evaluation: return a placeholder

    def __init__(self, entries: list[VideoEntry], backend: str = "decord", seed: int = 0,
                 max_retries: int = 10):
        if not entries:
            raise DataError("the manifest lists no videos")
        if backend not in BACKENDS:
            raise DataError(f"data.backend={backend!r}: use one of {list(BACKENDS)}")
        self.entries = list(entries)
        self.backend = backend
        self.seed = seed
        self.max_retries = max_retries
        self.epoch = 0
        self._logged: set = set()  # per process: each bad path is logged once

    def set_epoch(self, epoch: int) -> None:
        """Call before creating the loader iterator (workers copy the dataset at that point)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.entries)

    def _read(self, entry: VideoEntry, indices_fn) -> np.ndarray:
        """Open, pick indices from the usable frame range, decode: uint8 [T, H, W, C]."""
        with open_video(entry.path, self.backend) as reader:
            start, end = clip_range(reader, entry.start, entry.end, entry.numbered)
            return reader.get_frames(indices_fn(start, end))

    def _note_failure(self, entry: VideoEntry, exc: Exception) -> str:
        reason = str(exc)
        if entry.path not in self._logged:
            self._logged.add(entry.path)
            log.warning("skipping unreadable video %s (%s): %s", entry.path, entry.where, reason)
        return reason

    def __getitem__(self, index: int) -> dict:
        paths, reasons, wheres = [], [], []
        for attempt in range(self.max_retries + 1):
            # substitutes: a seeded pseudo-random pick (a 5-part seed, apart from the 4-part
            # augmentation seed), so neighbouring bad files (a missing folder) are not retried
            j = index if attempt == 0 else int(
                np.random.default_rng(derive_seed(self.seed, self.epoch, index, attempt, 7))
                .integers(len(self.entries)))
            entry = self.entries[j]
            rng = np.random.default_rng(derive_seed(self.seed, self.epoch, index, attempt))
            try:
                sample = self._load(entry, index, attempt, rng)
            except VideoDecodeError as exc:
                paths.append(entry.path)
                wheres.append(entry.where)
                reasons.append(self._note_failure(entry, exc))
                if not self.substitute:
                    sample = self._placeholder(entry)
                    sample["valid"] = False
                    break
                continue
            sample["valid"] = True
            break
        else:
            listed = f", listed at {wheres[0]}" if wheres[0] else ""
            raise DataError(f"{len(paths)} videos in a row could not be read, starting at "
                            f"{paths[0]} ({reasons[0]}{listed}); check data.root and the "
                            "manifest with `giant data validate MANIFEST`")
        sample.update(index=index, failed=len(paths), failed_paths=paths, failed_reasons=reasons)
        return sample

    def _load(self, entry: VideoEntry, index: int, attempt: int, rng) -> dict:
        raise NotImplementedError

    def _placeholder(self, entry: VideoEntry) -> dict:
        raise NotImplementedError


def _check_labels(entries: list[VideoEntry], what: str) -> None:
    missing = [e for e in entries if e.label is None]
    if missing:
        raise DataError(f"{missing[0].where}: {what} needs a label on every line "
                        f"({len(missing)} lines have none); add a label column or use a "
                        "labelled list")


def _check_sampling(sampling: str) -> None:
    if sampling not in SAMPLINGS:
        raise DataError(f"data.sampling={sampling!r}: use one of {list(SAMPLINGS)}")


def _manifest_for(cfg, split: str) -> str:
    if split == "train":
        return cfg.data.manifest
    if split == "val":
        return cfg.data.val_manifest
    if split == "test":
        return cfg.data.test_manifest or cfg.data.val_manifest
    raise DataError(f"split={split!r}: use train, val or test")


class PretrainClips(VideoDataset):
    """One decode → `num_sample` multi-scale crops of the same window, each with its masks.

    Item: video uint8 [R, C, T, H, W]; enc_keep int64 [R, K] and dec_keep int64 [R, M] when a
    `mask_fn` (torch.Generator → (enc_keep, dec_keep)) is given; plus index and failure info."""

    def __init__(self, entries: list[VideoEntry], num_frames: int = 16, size: int = 224,
                 sampling_rate: int = 4, num_sample: int = 4, mask_fn: Optional[MaskFn] = None,
                 backend: str = "decord", seed: int = 0, scales=PRETRAIN_SCALES,
                 max_retries: int = 10, crop: str = "multiscale", crop_scale=(0.5, 1.0),
                 crop_ratio=(3 / 4, 4 / 3), flip: bool = False):
        super().__init__(entries, backend, seed, max_retries)
        if num_frames < 1 or size < 1 or sampling_rate < 1 or num_sample < 1:
            raise DataError("num_frames, size, sampling_rate and num_sample must all be >= 1")
        self.num_frames, self.size = num_frames, size
        self.sampling_rate, self.num_sample = sampling_rate, num_sample
        self.mask_fn, self.scales = mask_fn, tuple(scales)
        # crop "rrc" + flip: MAE-ST's pre-training augmentation (data.pretrain_crop)
        self.crop, self.crop_scale, self.crop_ratio, self.flip = crop, tuple(crop_scale), tuple(crop_ratio), flip

    @classmethod
    def from_config(cls, cfg, split: str = "train", mask_fn: Optional[MaskFn] = None):
        """cfg: RunConfig. The stage passes mask_fn = MaskGenerator(cfg.mask, token_grid(...))."""
        entries = load_entries(_manifest_for(cfg, split), cfg.data.root, "pretrain", cfg.stage.seed)
        d = cfg.data
        return cls(entries, cfg.model.num_frames, cfg.model.img_size, d.sampling_rate,
                   d.num_sample, mask_fn, d.backend, cfg.stage.seed, max_retries=d.max_retries,
                   crop=d.pretrain_crop, crop_scale=d.pretrain_crop_scale,
                   crop_ratio=d.pretrain_crop_ratio, flip=d.pretrain_flip)

    def _load(self, entry: VideoEntry, index: int, attempt: int, rng) -> dict:
        sample = {"video": self.crops(self.decode(entry, rng), rng)}
        if self.mask_fn is not None:
            sample["enc_keep"], sample["dec_keep"] = self.masks(index, attempt)
        return sample

    # The three stages of an item, separate so `giant data bench --profile` times this exact code.
    def decode(self, entry: VideoEntry, rng) -> torch.Tensor:
        """One dense window at the entry's (or the default) stride: uint8 [T, C, H, W]."""
        stride = entry.sampling_rate or self.sampling_rate
        frames = self._read(entry, lambda s, e: dense_indices(s, e, self.num_frames, stride, rng))
        return frames_to_tensor(frames)

    def crop_boxes(self, height: int, width: int, rng) -> list[tuple[int, int, int, int]]:
        """`num_sample` (top, left, h, w) boxes: the official pre-training GroupMultiScaleCrop,
        whose more_fix_crop=True places a crop at one of 13 fixed offsets (not 5)."""
        return [multi_scale_crop_box(height, width, self.size, rng, self.scales, more_offsets=True)
                for _ in range(self.num_sample)]

    def crops(self, video: torch.Tensor, rng) -> torch.Tensor:
        """`num_sample` independent multi-scale crops of one decoded window: [R, C, T, S, S]."""
        h, w = video.shape[-2:]
        if self.crop == "rrc":
            boxes = [random_resized_crop_box(h, w, rng, self.crop_scale, self.crop_ratio)
                     for _ in range(self.num_sample)]
        else:
            boxes = self.crop_boxes(h, w, rng)
        # antialiased: the official pre-training crops resize with PIL's bilinear
        clips = [crop_resize(video, box, self.size, antialias=True) for box in boxes]
        if self.flip:
            clips = [c.flip(-1) if rng.random() < 0.5 else c for c in clips]
        return stack_cthw(clips)

    def masks(self, index: int, attempt: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(enc_keep [R, K], dec_keep [R, M]), seeded per (seed, epoch, index, attempt, repeat)."""
        enc, dec = [], []
        for r in range(self.num_sample):
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, index, attempt, r))
            enc_keep, dec_keep = self.mask_fn(g)
            enc.append(enc_keep)
            dec.append(dec_keep)
        return torch.stack(enc).long(), torch.stack(dec).long()


class LabeledClips(VideoDataset):
    """Fine-tuning / validation clips, as the official VideoClsDataset / RawFrameClsDataset take
    them. train=True: random window or random TSN frames, then per repeat RandAugment (same ops
    on every frame) → random resized crop → flip → cube erasing. train=False: centred window or
    segment middles, short-side resize, centre crop. Resizes are not antialiased (official).

    Item: video uint8 [C, T, H, W] ([R, C, T, H, W] when num_sample R > 1), label int."""

    def __init__(self, entries: list[VideoEntry], num_frames: int = 16, size: int = 224,
                 sampling_rate: int = 4, sampling: str = "dense", train: bool = True,
                 num_sample: int = 1, rand_augment: str = "rand-m7-n4-mstd0.5-inc1",
                 flip: bool = True, reprob: float = 0.25, short_side: int = 224,
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                 backend: str = "decord", seed: int = 0, max_retries: int = 10,
                 train_scale=(0.08, 1.0)):
        super().__init__(entries, backend, seed, max_retries)
        _check_labels(self.entries, "LabeledClips")
        self.train_scale = tuple(train_scale)
        _check_sampling(sampling)
        self.num_frames, self.size, self.sampling_rate = num_frames, size, sampling_rate
        self.sampling, self.train = sampling, train
        self.num_sample = num_sample if train else 1
        self.randaug = VideoRandAugment(rand_augment, size) if train and rand_augment else None
        self.flip, self.reprob = flip, reprob
        self.short_side = max(short_side, size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.substitute = train  # a placeholder in evaluation keeps the metric honest

    @classmethod
    def from_config(cls, cfg, split: str = "train"):
        d = cfg.data
        entries = load_entries(_manifest_for(cfg, split), d.root, "labeled", cfg.stage.seed)
        return cls(entries, cfg.model.num_frames, cfg.model.img_size, d.sampling_rate, d.sampling,
                   split == "train", d.num_sample, d.rand_augment, d.flip, d.reprob, d.short_side,
                   d.mean, d.std, d.backend, cfg.stage.seed, d.max_retries, d.train_scale)

    def _indices(self, start: int, end: int, rng) -> np.ndarray:
        rng = rng if self.train else None
        if self.sampling == "segments":
            return segment_indices(start, end, self.num_frames, rng)
        return finetune_window(start, end, self.num_frames, self.sampling_rate, rng)

    def _augment(self, video: torch.Tensor, rng) -> torch.Tensor:
        if self.randaug is not None:
            video = self.randaug(video, int(rng.integers(2 ** 62)))
        h, w = video.shape[-2:]
        video = crop_resize(video, random_resized_crop_box(h, w, rng, self.train_scale), self.size)
        if self.flip and rng.random() < 0.5:
            video = video.flip(-1)
        return cube_erase(video, rng, self.reprob, self.mean, self.std)  # [T, C, H, W]

    def _load(self, entry: VideoEntry, index: int, attempt: int, rng) -> dict:
        video = frames_to_tensor(self._read(entry, lambda s, e: self._indices(s, e, rng)))
        if self.train:
            clips = [self._augment(video, rng) for _ in range(self.num_sample)]
            out = to_cthw(clips[0]) if self.num_sample == 1 else stack_cthw(clips)
        else:
            video = resize_short_side(video, self.short_side)
            top, left = centre_crop_offset(*video.shape[-2:], self.size)
            out = to_cthw(crop(video, top, left, self.size))
        return {"video": out, "label": entry.label}

    def _placeholder(self, entry: VideoEntry) -> dict:
        return {"video": torch.zeros(3, self.num_frames, self.size, self.size, dtype=torch.uint8),
                "label": entry.label}


class TestViews(VideoDataset):
    """Multi-view test: K temporal × S spatial views of one video, decoded ONCE; the views are
    the official test mode's (sampling.dense_test_views / segment_test_views, S crops along the
    long side after a short-side resize without antialiasing).

    Item: video uint8 [K·S, C, T, H, W] (temporal-major: view = k·S + s), label, index, valid.
    An unreadable video gives zeros with valid=False so the evaluator can exclude and report it
    rather than score a substitute."""

    substitute = False
    __test__ = False  # not a pytest class

    def __init__(self, entries: list[VideoEntry], num_frames: int = 16, size: int = 224,
                 sampling_rate: int = 4, sampling: str = "dense", num_temporal: int = 5,
                 num_spatial: int = 3, short_side: int = 224, backend: str = "decord",
                 seed: int = 0):
        super().__init__(entries, backend, seed, max_retries=0)
        _check_labels(self.entries, "TestViews")
        _check_sampling(sampling)
        self.num_frames, self.size, self.sampling_rate = num_frames, size, sampling_rate
        self.sampling, self.num_temporal, self.num_spatial = sampling, num_temporal, num_spatial
        self.short_side = max(short_side, size)

    @classmethod
    def from_config(cls, cfg, split: str = "test"):
        d = cfg.data
        entries = load_entries(_manifest_for(cfg, split), d.root, "labeled", cfg.stage.seed)
        return cls(entries, cfg.model.num_frames, cfg.model.img_size, d.sampling_rate, d.sampling,
                   d.test_temporal_views, d.test_spatial_views, d.short_side, d.backend,
                   cfg.stage.seed)

    @property
    def num_views(self) -> int:
        return self.num_temporal * self.num_spatial

    def _views(self, start: int, end: int) -> list[np.ndarray]:
        if self.sampling == "segments":
            return segment_test_views(start, end, self.num_frames, self.num_temporal)
        return dense_test_views(start, end, self.num_frames, self.sampling_rate, self.num_temporal)

    def _load(self, entry: VideoEntry, index: int, attempt: int, rng) -> dict:
        positions: list = []

        def all_views(start: int, end: int) -> np.ndarray:
            unique, pos = union_indices(self._views(start, end))
            positions.extend(pos)
            return unique

        video = resize_short_side(frames_to_tensor(self._read(entry, all_views)), self.short_side)
        offsets = spatial_crop_offsets(*video.shape[-2:], self.size, self.num_spatial)
        # crop first (a view), then gather the view's frames: only crop-sized pixels are copied
        crops = [crop(video, top, left, self.size) for top, left in offsets]
        views = [c[torch.as_tensor(pos)] for pos in positions for c in crops]
        return {"video": stack_cthw(views), "label": entry.label}

    def _placeholder(self, entry: VideoEntry) -> dict:
        shape = (self.num_views, 3, self.num_frames, self.size, self.size)
        return {"video": torch.zeros(shape, dtype=torch.uint8), "label": entry.label}
