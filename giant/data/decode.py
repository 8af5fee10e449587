"""Video readers: decord (default), PyAV (fallback / alternative), raw-frame folders.

Every reader answers `num_frames` and `get_frames(indices) -> uint8 [T, H, W, C]`. Indices may
repeat (short videos pad with their last frame); each distinct frame is decoded once. Library
errors become `VideoDecodeError` with one short reason, so the dataset can count and skip.
"""
from __future__ import annotations

import functools
import logging
import os
import re
from pathlib import Path

import numpy as np

from giant.errors import DataError

log = logging.getLogger(__name__)

BACKENDS = ("decord", "pyav", "frames")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_TRAILING_DIGITS = re.compile(rb"(\d+)$")


class VideoDecodeError(DataError):
    """A video is missing, truncated or undecodable (the dataset skips and counts it)."""


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    reason = text[-1] if text else type(exc).__name__
    return reason[:200]


class VideoReader:
    """Base class: subclasses set `num_frames` and implement `_decode(sorted unique indices)`."""

    num_frames: int = 0
    path: str = ""

    def get_frames(self, indices) -> np.ndarray:
        """uint8 [len(indices), H, W, C] in the order given (repeats allowed)."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            raise ValueError("get_frames needs at least one index")
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= self.num_frames:
            bad = low if low < 0 else high  # name the index that is actually out of range
            raise VideoDecodeError(f"{self.path}: frame index {bad} outside "
                                   f"0..{self.num_frames - 1}")
        unique, inverse = np.unique(indices, return_inverse=True)
        frames = self._decode(unique)
        return frames[inverse]

    def _decode(self, unique: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def position_of(self, number: int) -> int:
        """Index of the frame numbered `number` (a video numbers its frames from 0)."""
        return number

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DecordReader(VideoReader):
    """decord: fast random access (seeks to the keyframe before each run of indices)."""

    def __init__(self, path: str, num_threads: int = 1):
        import decord

        decord.logging.set_level(decord.logging.QUIET)
        self.path = path
        try:
            self._vr = decord.VideoReader(path, num_threads=num_threads, ctx=decord.cpu(0))
            self.num_frames = len(self._vr)
        except Exception as exc:  # noqa: BLE001 - decord raises several unrelated types
            raise VideoDecodeError(f"cannot open ({_short(exc)})") from None
        if self.num_frames <= 0:
            raise VideoDecodeError("no frames")

    def _decode(self, unique: np.ndarray) -> np.ndarray:
        try:
            return self._vr.get_batch(unique.tolist()).asnumpy()
        except Exception as exc:  # noqa: BLE001
            decord_error = _short(exc)
        # decord has its own bugs (e.g. some narrow frame widths); PyAV may still read the file
        try:
            with PyAVReader(self.path) as fallback:
                return fallback._decode(unique)
        except VideoDecodeError as av_error:
            raise VideoDecodeError(f"decode failed (decord: {decord_error}; pyav: {av_error})") from None

    def close(self) -> None:
        self._vr = None


class PyAVReader(VideoReader):
    """PyAV: seek to the keyframe before the first wanted frame, decode up to the last one.

    Frames are numbered by timestamp (pts → index at the stream's constant rate), so a window
    gets the same frames a full decode from frame 0 would, for at most one GOP of extra decoding
    (a file written by `giant data prepare` has a keyframe every second). Windows starting
    below `seek_after` decode from the start and count frames instead (the exact path, also
    used for variable-frame-rate files, whose timestamps do not give frame numbers); the
    default 0 always seeks."""

    def __init__(self, path: str, num_threads: int = 1, seek_after: int = 0):
        import av

        self.path = path
        try:
            self._container = av.open(path)
            self._stream = self._container.streams.video[0]
            self._stream.codec_context.thread_count = num_threads
            self.num_frames = self._stream.frames or _cached_packet_count(path)
        except Exception as exc:  # noqa: BLE001 - av raises many error types
            self.close()
            raise VideoDecodeError(f"cannot open ({_short(exc)})") from None
        if self.num_frames <= 0:
            self.close()
            raise VideoDecodeError("no frames")
        rate = self._stream.average_rate or self._stream.guessed_rate
        self._fps = float(rate) if rate else 0.0
        self._start = self._stream.start_time or 0
        self.seek_after = seek_after
        self.frames_decoded = 0  # every frame the codec produced, wanted or not (benchmarks)
        self._seekable = bool(self._fps and self._stream.time_base and _constant_rate(self._stream))

    def _index(self, frame) -> int:
        """Frame number of a decoded frame from its timestamp."""
        return int(round(float((frame.pts - self._start) * self._stream.time_base) * self._fps))

    def _timestamp(self, index: float) -> int:
        return int(round(index / self._fps / float(self._stream.time_base))) + self._start

    def _scan_from(self, target: int, wanted: dict, first: int, last: int) -> int | None:
        """Seek to the keyframe at or before frame `target` and decode frames first..last into
        `wanted`. Returns the frame number the seek landed on (> first: it landed late; None:
        frames without timestamps, which only counting from the start can number)."""
        # half a frame past the target: mp4 compares keyframe decode times shifted to start
        # at 0, which a rounding clock (33/34 ms) can put a tick after the display time
        self._container.seek(self._timestamp(target + 0.5), backward=True, any_frame=False,
                             stream=self._stream)
        landed = None
        for frame in self._container.decode(self._stream):
            self.frames_decoded += 1
            if frame.pts is None:
                return None
            number = self._index(frame)
            landed = number if landed is None else landed
            if landed > first:
                return landed  # the window starts before this keyframe: seek earlier
            if number in wanted:
                wanted[number] = frame.to_ndarray(format="rgb24")
            if number >= last:
                break
        return first if landed is None else landed

    def _scan_all(self, wanted: dict, last: int) -> None:
        """Decode from the first frame, numbering frames by count (no timestamps needed)."""
        self._container.seek(0)
        for number, frame in enumerate(self._container.decode(self._stream)):
            self.frames_decoded += 1
            if number in wanted:
                wanted[number] = frame.to_ndarray(format="rgb24")
            if number >= last:
                break

    def _scan(self, unique: np.ndarray) -> dict:
        wanted = dict.fromkeys(int(i) for i in unique)
        first, last = int(unique[0]), int(unique[-1])
        target, step = first, 32
        while self._seekable and first >= self.seek_after and target > 0:
            landed = self._scan_from(target, wanted, first, last)
            if landed is None:
                break
            if landed <= first:
                if all(f is not None for f in wanted.values()):
                    return wanted
                break  # timestamps that do not map onto frame numbers: count instead
            # a demuxer that compares the target with keyframe decode times (not display
            # times) can land one GOP late for a window starting just before a keyframe
            target, step = min(target, landed) - step, 2 * step
        wanted = dict.fromkeys(wanted)
        self._scan_all(wanted, last)
        return wanted

    def _decode(self, unique: np.ndarray) -> np.ndarray:
        try:
            wanted = self._scan(unique)
        except Exception as exc:  # noqa: BLE001
            raise VideoDecodeError(f"decode failed ({_short(exc)})") from None
        missing = [i for i, f in wanted.items() if f is None]
        if missing:
            shown = f"{missing[:3]}..." if len(missing) > 3 else f"{missing}"
            raise VideoDecodeError(f"frames {shown} of {self.num_frames} not decodable "
                                   "(truncated video?)")
        return np.stack([wanted[int(i)] for i in unique])

    def close(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            container.close()
            self._container = None


def _constant_rate(stream) -> bool:
    """False when the container's index shows frames off an even grid by a quarter frame or
    more (variable frame rate: phone footage), where timestamps do not give frame numbers.
    Rounded timestamps (1 ms clocks: 33/34/33 ms) stay on the grid. Containers without a full
    index (mkv, webm) report True: their timestamps are trusted, as decord trusts them."""
    try:
        entries = stream.index_entries
        if len(entries) < 3 or len(entries) != (stream.frames or -1):
            return True
        ts = np.fromiter((e.timestamp for e in entries), np.float64, len(entries))
    except Exception:  # noqa: BLE001 - an old PyAV without index_entries
        return True
    step = (ts[-1] - ts[0]) / (len(ts) - 1)
    return bool(step > 0 and np.abs(ts - ts[0] - step * np.arange(len(ts))).max() < step / 4)


@functools.lru_cache(maxsize=4096)
def _count_video_packets(path: str, size: int, mtime_ns: int) -> int:
    """Frames of a container whose header has no count (mkv, webm): its video packets, counted
    without decoding. Cached per process by (path, size, mtime): a long movie is cut into many
    manifest entries, and re-reading the whole file for each would cost more than decoding the
    clip; a rewritten file has another size or mtime, so it is counted again."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size > 0)


def _cached_packet_count(path: str) -> int:
    st = os.stat(path)
    return _count_video_packets(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=512)
def _frame_files(folder: str, mtime_ns: int) -> np.ndarray:
    """Sorted image file names of a frame folder, as a numpy bytes array (~1 byte per character
    instead of ~70 per str object: 300 AVA movies of 27k frames stay ~100 MB per worker).
    Cached per process: listing and sorting a 27k-frame folder costs ~160 ms, more than reading
    a clip's 16 frames. The folder's mtime is in the key, so adding or removing files relists."""
    with os.scandir(folder) as it:
        names = sorted(os.fsencode(e.name) for e in it
                       if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)
    return np.array(names, dtype=bytes)


class FrameFolderReader(VideoReader):
    """A folder of images, one per frame, in sorted file-name order."""

    def __init__(self, path: str):
        self.path = path
        try:
            names = _frame_files(path, os.stat(path).st_mtime_ns)
        except OSError as exc:
            raise VideoDecodeError(f"cannot list folder ({_short(exc)})") from None
        self._names = names  # joined with the folder only for the frames read
        self.num_frames = len(names)
        if not len(names):
            raise VideoDecodeError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder")

    def _number(self, position: int):
        """The number a file name ends in (img_00012.jpg → 12), None if it has none."""
        match = _TRAILING_DIGITS.search(os.path.splitext(self._names[position])[0])
        return int(match.group(1)) if match else None

    def position_of(self, number: int) -> int:
        """Listing position of the file numbered `number`: official frame lists name frame i of
        a clip `img_{:05}.jpg`.format(i + start_idx), so start_idx is a file number (folders
        are usually numbered from 1), not a position in the listing."""
        guess = number - (self._number(0) or 0)
        if 0 <= guess < self.num_frames and self._number(guess) == number:
            return guess  # consecutive numbering: one lookup
        numbers = [self._number(i) for i in range(self.num_frames)]  # gaps or odd names: search
        if number in numbers:
            return numbers.index(number)
        shown = [n for n in (numbers[0], numbers[-1]) if n is not None]
        raise VideoDecodeError(
            f"no frame file numbered {number} (the list's start_idx) in the folder"
            + (f"; its files are numbered {shown[0]}..{shown[-1]}" if shown else
               "; its file names carry no frame number"))

    def _decode(self, unique: np.ndarray) -> np.ndarray:
        from PIL import Image

        frames = []
        for i in unique:
            name = os.fsdecode(self._names[int(i)])
            try:
                with Image.open(os.path.join(self.path, name)) as img:
                    frames.append(np.asarray(img.convert("RGB")))
            except Exception as exc:  # noqa: BLE001
                raise VideoDecodeError(f"cannot read {name} ({_short(exc)})") from None
        if any(f.shape != frames[0].shape for f in frames):
            raise VideoDecodeError("frames of different sizes in one folder")
        return np.stack(frames)


def _decord_available() -> bool:
    try:
        import decord  # noqa: F401
        return True
    except ImportError:
        return False


def open_video(path: str, backend: str = "decord", num_threads: int = 1) -> VideoReader:
    """Open a video file or frame folder. backend 'decord' falls back to PyAV when decord is not
    installed or cannot read the file; 'pyav' uses PyAV only; folders always read as frames."""
    if backend not in BACKENDS:
        raise DataError(f"data.backend={backend!r}: use one of {list(BACKENDS)}")
    p = Path(path)
    if p.is_dir():
        return FrameFolderReader(path)
    if not p.exists():
        raise VideoDecodeError("file not found")
    if backend == "frames":
        raise VideoDecodeError("is a file but data.backend=frames expects a folder of images")
    if p.stat().st_size == 0:
        raise VideoDecodeError("empty file (0 bytes)")
    if backend == "pyav" or not _decord_available():
        return PyAVReader(path, num_threads)
    try:
        return DecordReader(path, num_threads)
    except VideoDecodeError as decord_error:
        try:
            return PyAVReader(path, num_threads)
        except VideoDecodeError as av_error:
            raise VideoDecodeError(f"decord: {decord_error}; pyav: {av_error}") from None


def header_frame_count(path: str) -> int:
    """Frame count the container header promises (0 if unknown). decord reports only the frames
    actually present, so a shortfall against this number reveals a truncated file."""
    try:
        import av

        with av.open(path) as container:
            return int(container.streams.video[0].frames or 0)
    except Exception:  # noqa: BLE001 - unknown is a valid answer here
        return 0


def clip_range(reader: VideoReader, start: int = 0, end: int | None = None,
               numbered: bool = False) -> tuple[int, int]:
    """The usable [start, end) positions of a manifest entry in `reader`. numbered: start/end
    are file numbers (official `frame_dir start_idx total_frames` lists), mapped to positions."""
    if numbered:
        shift = reader.position_of(start) - start
        start, end = start + shift, None if end is None else end + shift
    return frame_range(reader.num_frames, start, end)


def frame_range(num_frames: int, start: int = 0, end: int | None = None) -> tuple[int, int]:
    """The usable [start, end) of a video given a manifest's frame range."""
    end = num_frames if end is None else min(end, num_frames)
    if start >= end:
        raise VideoDecodeError(f"start_frame {start} is past the video's last frame "
                               f"({num_frames} frames)")
    return start, end
