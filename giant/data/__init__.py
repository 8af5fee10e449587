"""Video data: manifests, decoding, frame sampling, uint8 transforms, datasets and loaders.

Never touches the GPU and never imports model code; normalisation to float happens on device
(`normalize_on_device`). See datasets_manifest/README.md for the manifest formats.
"""
from giant.data.datasets import LabeledClips, PretrainClips, TestViews, VideoDataset
from giant.data.decode import VideoDecodeError, open_video
from giant.data.loader import (FailureTracker, ResumableDistributedSampler, collate_labeled,
                               collate_pretrain, collate_test, iterate_with_timeout_errors,
                               make_loader, set_loader_epoch)
from giant.data.manifest import VideoEntry, load_entries, read_manifest, read_sources
from giant.data.transforms import normalize_on_device

__all__ = ["PretrainClips", "LabeledClips", "TestViews", "VideoDataset", "VideoDecodeError",
           "open_video", "FailureTracker", "ResumableDistributedSampler", "collate_pretrain",
           "collate_labeled", "collate_test", "make_loader", "iterate_with_timeout_errors",
           "set_loader_epoch", "VideoEntry", "load_entries", "read_manifest", "read_sources",
           "normalize_on_device"]
