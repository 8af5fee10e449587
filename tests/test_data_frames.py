"""Frame folders listed the official way: `frame_dir start_idx total_frames`, where the official
pre-training dataset reads frame i of a clip as `img_{:05}.jpg`.format(i + start_idx): start_idx
is a file NUMBER (folders are usually numbered from 1), not a position in the listing."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from giant.data.datasets import PretrainClips
from giant.data.decode import VideoDecodeError, clip_range, open_video
from giant.data.manifest import read_manifest, write_manifest
from giant.errors import DataError


def numbered_folder(path, first: int, count: int, template: str = "img_{:05}.png"):
    """Frames whose pixels all equal their file number, so a decoded frame names its file."""
    path.mkdir()
    for number in range(first, first + count):
        Image.fromarray(np.full((8, 8, 3), number, np.uint8)).save(path / template.format(number))
    return path


def read_clip(manifest, num_frames: int) -> list[int]:
    """The file numbers of a whole-window clip (stride 1, scale 1: no crop, no resize)."""
    (entry,) = read_manifest(manifest, list_format="pretrain")
    ds = PretrainClips([entry], num_frames=num_frames, size=8, sampling_rate=1, num_sample=1,
                       backend="frames", scales=(1.0,))
    item = ds[0]
    assert item["valid"]
    return item["video"][0, 0, :, 0, 0].tolist()  # channel 0, every frame, one pixel


def test_start_idx_is_the_file_number_of_the_first_frame(tmp_path):
    numbered_folder(tmp_path / "v", first=1, count=10)
    whole = tmp_path / "whole.txt"
    whole.write_text("v 1 10\n")  # the official list line for a folder numbered from 1
    assert read_clip(whole, 10) == list(range(1, 11))  # img_00001 .. img_00010, none skipped
    part = tmp_path / "part.txt"
    part.write_text("v 3 4\n")  # frames numbered 3..6 (listing positions 2..5)
    assert read_clip(part, 4) == [3, 4, 5, 6]


def test_numbers_map_through_gaps_and_other_templates(tmp_path):
    folder = numbered_folder(tmp_path / "ava", first=0, count=0, template="image_{:06}.png")
    for number in (5, 6, 7, 9, 10, 11):  # AVA-style 6 digits, one frame (8) missing
        Image.fromarray(np.full((8, 8, 3), number, np.uint8)).save(folder / f"image_{number:06}.png")
    with open_video(str(folder), "frames") as reader:
        assert clip_range(reader, 9, 12, numbered=True) == (3, 6)  # found by search, not by offset
        assert clip_range(reader, 5, 7, numbered=True) == (0, 2)
        assert clip_range(reader, 0, 2) == (0, 2)  # CSV start_frame: listing positions
        with pytest.raises(VideoDecodeError, match="no frame file numbered 0 .* numbered 5..11"):
            clip_range(reader, 0, 4, numbered=True)


def test_numbered_ranges_have_no_csv_form(tmp_path):
    numbered_folder(tmp_path / "v", first=1, count=3)
    (tmp_path / "l.txt").write_text("v 1 3\n")
    entries = read_manifest(tmp_path / "l.txt", list_format="pretrain")
    assert entries[0].numbered and (entries[0].start, entries[0].end) == (1, 4)
    with pytest.raises(DataError, match="has no giant CSV form"):
        write_manifest(tmp_path / "out.csv", entries)
