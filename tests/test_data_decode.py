"""Decoders on real synthetic videos: decord and PyAV agree, frame folders work, bad files raise
VideoDecodeError with a reason."""
import numpy as np
import pytest

from giant.data.decode import (DecordReader, PyAVReader, VideoDecodeError, frame_range,
                               header_frame_count, open_video)
from giant.data.synthetic import DIRECTIONS, render_video, write_video
from giant.errors import DataError


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_reads_uint8_thwc(synth_videos, backend):
    with open_video(str(synth_videos.videos[0]), backend) as reader:
        assert reader.num_frames == 32
        frames = reader.get_frames([0, 5, 5, 31, 2])
    assert frames.shape == (5, 64, 64, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames[1], frames[2])  # repeats are the same decoded frame
    assert not np.array_equal(frames[0], frames[3])  # the shapes move


def test_backend_classes(synth_videos):
    path = str(synth_videos.videos[1])
    assert isinstance(open_video(path, "decord"), DecordReader)
    assert isinstance(open_video(path, "pyav"), PyAVReader)


def test_decord_and_pyav_agree(synth_videos):
    idx = [0, 3, 4, 17, 30, 31]
    for path in synth_videos.videos[:3]:
        with open_video(str(path), "decord") as a, open_video(str(path), "pyav") as b:
            x, y = a.get_frames(idx).astype(int), b.get_frames(idx).astype(int)
        # same ffmpeg decode; only the YUV→RGB conversion may round differently
        assert np.abs(x - y).mean() < 2.0 and np.abs(x - y).max() <= 40


def test_decoded_matches_rendered(tmp_path):
    frames = render_video(np.random.default_rng(5), 12, 64, 96, DIRECTIONS["up"])
    write_video(tmp_path / "v.mp4", frames)
    with open_video(str(tmp_path / "v.mp4")) as reader:
        got = reader.get_frames(range(12))
    assert got.shape == (12, 64, 96, 3)
    assert np.abs(got.astype(int) - frames.astype(int)).mean() < 6  # lossy codec, small error


def test_decord_decode_errors_fall_back_to_pyav(tmp_path):
    # decord 0.6 cannot convert 48-pixel-wide frames ("size must exactly match"); PyAV can
    frames = render_video(np.random.default_rng(4), 6, 32, 48, DIRECTIONS["down"])
    write_video(tmp_path / "narrow.mp4", frames)
    with open_video(str(tmp_path / "narrow.mp4"), "decord") as reader:
        got = reader.get_frames([0, 5])
    assert got.shape == (2, 32, 48, 3)
    assert np.abs(got.astype(int) - frames[[0, 5]].astype(int)).mean() < 12  # tiny, lossy


def test_pyav_seek_matches_sequential(tmp_path):
    frames = render_video(np.random.default_rng(2), 120, 32, 32, DIRECTIONS["left"])
    write_video(tmp_path / "long.mp4", frames, gop=10)
    idx = [70, 74, 78, 119]
    with PyAVReader(str(tmp_path / "long.mp4"), seek_after=10 ** 9) as seq, \
            PyAVReader(str(tmp_path / "long.mp4"), seek_after=0) as seek:
        assert np.array_equal(seq.get_frames(idx), seek.get_frames(idx))
    with DecordReader(str(tmp_path / "long.mp4")) as d, PyAVReader(str(tmp_path / "long.mp4")) as p:
        assert np.abs(d.get_frames(idx).astype(int) - p.get_frames(idx).astype(int)).mean() < 2


def test_frame_folder(tmp_path, synth_videos):
    from PIL import Image

    with open_video(str(synth_videos.videos[2]), "pyav") as reader:
        frames = reader.get_frames(range(10))
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"img_{i + 1:05d}.png")
    (folder / "notes.txt").write_text("ignored")
    for backend in ("frames", "decord", "pyav"):  # a folder is always read as frames
        with open_video(str(folder), backend) as reader:
            assert reader.num_frames == 10
            assert np.array_equal(reader.get_frames([9, 0, 0]), frames[[9, 0, 0]])


@pytest.mark.parametrize("backend", ["decord", "pyav"])
@pytest.mark.parametrize("kind, reason", [
    ("missing", "file not found"), ("empty", r"empty file \(0 bytes\)"),
    ("garbage", "cannot open"), ("truncated", "cannot open")])
def test_bad_files_raise_with_reason(corrupt_videos, backend, kind, reason):
    with pytest.raises(VideoDecodeError, match=reason):
        open_video(str(corrupt_videos[kind]), backend).get_frames([0])


def test_truncated_after_index(corrupt_videos):
    path = str(corrupt_videos["truncated_faststart"])
    assert header_frame_count(path) == 32
    # PyAV trusts the header and fails when decoding reaches the missing data...
    with open_video(path, "pyav") as reader, \
            pytest.raises(VideoDecodeError, match="decode failed|not decodable"):
        reader.get_frames([0, 31])
    # ...decord either refuses the file (→ PyAV fallback, same failure) or reports only the
    # frames present (validate compares that count with the header)
    with open_video(path, "decord") as reader:
        if isinstance(reader, DecordReader):
            assert 0 < reader.num_frames < 32
        else:
            with pytest.raises(VideoDecodeError, match="decode failed|not decodable"):
                reader.get_frames([0, 31])


def test_backend_errors(synth_videos):
    with pytest.raises(DataError, match=r"data.backend='opencv': use one of \['decord', 'pyav', 'frames'\]"):
        open_video(str(synth_videos.videos[0]), "opencv")
    with pytest.raises(VideoDecodeError, match="data.backend=frames expects a folder"):
        open_video(str(synth_videos.videos[0]), "frames")
    with open_video(str(synth_videos.videos[0])) as reader, \
            pytest.raises(VideoDecodeError, match=r"frame index 32 outside 0..31"):
        reader.get_frames([32])
    with open_video(str(synth_videos.videos[0])) as reader:  # the offending index, not the max
        with pytest.raises(VideoDecodeError, match=r"frame index -1 outside 0..31"):
            reader.get_frames([5, -1, 3])
        with pytest.raises(VideoDecodeError, match=r"frame index 40 outside 0..31"):
            reader.get_frames([0, 40, 3])


def test_frame_range():
    assert frame_range(100) == (0, 100)
    assert frame_range(100, 10, 50) == (10, 50)
    assert frame_range(100, 10, 500) == (10, 100)
    with pytest.raises(VideoDecodeError, match="start_frame 100 is past the video's last frame"):
        frame_range(100, 100, None)


def test_frame_folder_listing_is_cached_until_the_folder_changes(tmp_path):
    import os

    from PIL import Image

    import giant.data.decode as decode

    folder = tmp_path / "movie"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"{i:05d}.png")
    before = decode._frame_files.cache_info()
    for _ in range(3):
        with open_video(str(folder), "frames") as reader:
            assert reader.num_frames == 3 and reader.get_frames([2])[0, 0, 0, 0] == 80
    after = decode._frame_files.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 2)  # listed once
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(folder / "00003.png")
    stat = folder.stat()
    os.utime(folder, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))  # coarse fs clocks
    with open_video(str(folder), "frames") as reader:
        assert reader.num_frames == 4 and reader.get_frames([3])[0, 0, 0, 0] == 200


def test_pyav_packet_count_is_cached_per_file_version(tmp_path):
    import os

    import giant.data.decode as decode

    path = tmp_path / "movie.mkv"  # Matroska headers carry no frame count
    write_video(path, render_video(np.random.default_rng(6), 20, 32, 32, DIRECTIONS["up"]),
                codec="mpeg4")
    before = decode._count_video_packets.cache_info()
    for _ in range(3):
        with PyAVReader(str(path)) as reader:
            assert reader.num_frames == 20
            assert reader.get_frames([0, 19]).shape == (2, 32, 32, 3)
    after = decode._count_video_packets.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 2)  # counted once
    write_video(path, render_video(np.random.default_rng(7), 24, 32, 32, DIRECTIONS["up"]),
                codec="mpeg4")  # rewritten in place: new size/mtime → counted again
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))
    with PyAVReader(str(path)) as reader:
        assert reader.num_frames == 24
