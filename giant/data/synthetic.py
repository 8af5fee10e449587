"""Small real .mp4 videos with a label only motion can reveal.

The demo and the tests must exercise the real decode path (container, codec, seeking), so these
are genuine H.264 files (mpeg4 where libx264 is missing). Each video shows a few shapes on a
static textured background, all drifting in one direction; the label is that direction, so no
single frame predicts it. Everything is drawn from one seed: same seed, same pixels.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from giant.data.manifest import VideoEntry, write_manifest
from giant.errors import ConfigError

log = logging.getLogger(__name__)

RECORD = "synth.json"  # what synth wrote into a folder: the files it may write over on a re-run

# (dx, dy) per class; the first `num_classes` are used.
DIRECTIONS = {
    "right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1),
    "down-right": (1, 1), "up-left": (-1, -1), "down-left": (-1, 1), "up-right": (1, -1),
}


@dataclass
class SynthSet:
    """Paths of a written synthetic set (manifests are CSV, paths relative to `root`)."""

    root: Path
    train_manifest: Path
    val_manifest: Path
    class_names: list
    videos: list  # every written video, in index order
    labels: list  # true label of each video in `videos`
    codec: str
    mislabelled: list = field(default_factory=list)  # train videos whose manifest label is wrong
    clean_train_manifest: Path | None = None  # train.csv with the true labels (label_noise > 0)


def pick_codec() -> str:
    """libx264 when this PyAV build can encode it, else mpeg4 (always built in)."""
    import av

    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:  # noqa: BLE001 - any failure means "not available"
        return "mpeg4"


def render_video(rng: np.random.Generator, num_frames: int, height: int, width: int,
                 direction: tuple[int, int]) -> np.ndarray:
    """uint8 [T, H, W, 3]: 2-4 bright shapes wrapping around a darker frame at a common velocity.

    Why bright on dark: the motion cue then has one sign (a lit object on a dark scene), so the
    change across a tubelet's two frames tells the direction linearly and a tiny ViT learns it in
    ~100 steps. With shapes of random polarity it needs thousands of steps (measured: chance
    after 600 steps at 48 px), too slow for a CPU demo."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.integers(20, 90, size=3)
    tilt = rng.uniform(-0.5, 0.5, size=(2, 3))
    background = base + tilt[0] * yy[..., None] * 64 / height + tilt[1] * xx[..., None] * 64 / width
    background = background + rng.normal(0, 6, size=(height, width, 3))
    speed = rng.uniform(1.0, 2.0) * max(height, width) / 64
    vx, vy = direction[0] * speed, direction[1] * speed
    shapes = []
    for _ in range(int(rng.integers(2, 5))):
        shapes.append(dict(
            x=rng.uniform(0, width), y=rng.uniform(0, height),
            rx=rng.uniform(0.07, 0.15) * width, ry=rng.uniform(0.07, 0.15) * height,
            color=rng.integers(160, 256, size=3), round=bool(rng.integers(0, 2))))
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        canvas = background.copy()
        for s in shapes:
            # signed distance on the torus, so shapes leave one edge and enter the other
            dx = (xx - (s["x"] + vx * t) + width / 2) % width - width / 2
            dy = (yy - (s["y"] + vy * t) + height / 2) % height - height / 2
            if s["round"]:
                inside = (dx / s["rx"]) ** 2 + (dy / s["ry"]) ** 2 <= 1
            else:
                inside = (np.abs(dx) <= s["rx"]) & (np.abs(dy) <= s["ry"])
            canvas[inside] = s["color"]
        frames[t] = np.clip(canvas, 0, 255).astype(np.uint8)
    return frames


def _value_noise(rng: np.random.Generator, height: int, width: int,
                 cells=(1, 2, 4, 8, 16, 32, 64), slope: float = 0.3) -> np.ndarray:
    """float32 [H, W] in [0, 1]: random grids of several cell sizes, upsampled bicubically and
    summed with weights cell**slope (a 1/f-like spectrum, as natural images have)."""
    import torch

    total = np.zeros((height, width), np.float32)
    for cell in cells:
        grid = rng.random((1, 1, height // cell + 3, width // cell + 3), dtype=np.float32)
        up = torch.nn.functional.interpolate(torch.from_numpy(grid), scale_factor=cell,
                                             mode="bicubic", align_corners=False)
        total += cell ** slope * up[0, 0, :height, :width].numpy()
    total -= total.min()
    return total / max(float(total.max()), 1e-6)


def _scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float32 [H, W, 3] in grey levels: textured luminance, sharp-edged blocks (walls, furniture,
    people have edges), and a low-saturation colour cast that drifts slowly across the image."""
    luma = 0.2 + 0.8 * _value_noise(rng, height, width)
    for _ in range(int(rng.integers(6, 14))):
        y0, x0 = int(rng.integers(0, height)), int(rng.integers(0, width))
        h = int(rng.integers(height // 16, height // 3))
        w = int(rng.integers(width // 16, width // 3))
        luma[y0:y0 + h, x0:x0 + w] *= rng.uniform(0.3, 1.6)
    base = rng.uniform(0.5, 1.0, size=3).astype(np.float32)
    cast = np.stack([_value_noise(rng, height, width, cells=(32, 64, 128)) for _ in range(3)], -1)
    return 230 * luma[..., None] * (base + 0.4 * (cast - 0.5))


def _warp(image, shifts_xy, zooms, size: tuple[int, int]):
    """Sample T frames of `size` from a larger float image [C, H, W] (torch) at sub-pixel offsets
    and zooms: a smooth, never integer-aligned camera path, as a hand-held camera gives."""
    import torch

    height, width = size
    _, big_h, big_w = image.shape
    n = len(zooms)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.as_tensor(zooms, dtype=torch.float32) * width / big_w
    theta[:, 1, 1] = torch.as_tensor(zooms, dtype=torch.float32) * height / big_h
    theta[:, 0, 2] = torch.as_tensor(shifts_xy[:, 0], dtype=torch.float32) * 2 / big_w
    theta[:, 1, 2] = torch.as_tensor(shifts_xy[:, 1], dtype=torch.float32) * 2 / big_h
    grid = torch.nn.functional.affine_grid(theta, (n, 3, height, width), align_corners=False)
    return torch.nn.functional.grid_sample(image.expand(n, -1, -1, -1), grid, mode="bilinear",
                                           padding_mode="reflection", align_corners=False)


def render_camera_video(rng: np.random.Generator, num_frames: int, height: int, width: int,
                        direction: tuple[int, int] = (1, 0), noise: float = 2.0,
                        chunk: int = 30) -> np.ndarray:
    """uint8 [T, H, W, 3] that encodes and decodes like camera footage, not like flat shapes: a
    textured scene seen through a panning, zooming camera, 2-4 textured objects moving on their
    own, slow lighting drift and per-frame sensor noise (`noise` = its std in grey levels), so
    motion search, residuals and bitrate resemble real clips (Kinetics-style benchmarks). The
    camera pans along `direction`, so the label stays a motion direction."""
    import torch

    margin = max(height, width) // 2
    scene = torch.from_numpy(_scene(rng, height + 2 * margin, width + 2 * margin)).permute(2, 0, 1)
    t = np.arange(num_frames, dtype=np.float32)
    # a slow pan (pixels per frame) that stays inside the scene for 10 s at 30 fps
    velocity = -np.asarray(direction, np.float64) * rng.uniform(0.2, 0.5)
    shake = np.cumsum(rng.normal(0, 0.3, size=(num_frames, 2)), axis=0)
    path = velocity * t[:, None] + shake
    zooms = 1 + 0.08 * np.sin(2 * np.pi * t / rng.uniform(90, 240) + rng.uniform(0, 6.3))
    light = 1 + 0.08 * np.sin(2 * np.pi * t / rng.uniform(60, 200) + rng.uniform(0, 6.3))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    objects = []
    for _ in range(int(rng.integers(2, 5))):
        texture = torch.from_numpy(_scene(rng, height, width)).permute(2, 0, 1)
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        ry, rx = rng.uniform(0.1, 0.25) * height, rng.uniform(0.1, 0.25) * width
        soft = np.clip(4 - np.hypot((yy - cy) / ry, (xx - cx) / rx) * 4, 0, 1)  # 1-2 px edge
        layer = torch.cat([texture, torch.from_numpy(soft)[None]])
        wobble = np.sin(t[:, None] / 9) * rng.uniform(0, 4, 2)
        motion = rng.uniform(-3, 3, size=2) * t[:, None] + wobble
        objects.append((layer, motion))
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for a in range(0, num_frames, chunk):
        b = min(a + chunk, num_frames)
        canvas = _warp(scene, path[a:b], zooms[a:b], (height, width))
        for layer, motion in objects:
            moved = _warp(layer, -motion[a:b], np.ones(b - a), (height, width))
            alpha = moved[:, 3:]
            canvas = canvas * (1 - alpha) + moved[:, :3] * alpha
        canvas = canvas * torch.from_numpy(light[a:b, None, None, None])
        grain = rng.standard_normal(size=canvas.shape, dtype=np.float32)
        canvas = canvas + noise * torch.from_numpy(grain)
        frames[a:b] = canvas.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return frames


def write_video(path: str | Path, frames: np.ndarray, fps: int = 25, codec: str | None = None,
                gop: int | None = None, crf: int = 18, preset: str = "veryfast") -> str:
    """Encode uint8 [T, H, W, 3] to `path` (H and W must be even). Returns the codec used.
    crf/preset apply to libx264 (18/veryfast: near-lossless and quick; 23/medium is ffmpeg's
    default, what most downloaded datasets were written with)."""
    import av

    codec = codec or pick_codec()
    _, height, width, _ = frames.shape
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1  # same bytes on every machine
        if gop:
            stream.codec_context.gop_size = gop
        if codec == "libx264":
            # mbtree reads uninitialised lowres memory on frames this small: with it on, the
            # same video encoded to different bytes depending on what the heap held before
            stream.options = {"preset": preset, "crf": str(crf), "x264-params": "mbtree=0"}
        else:
            stream.codec_context.bit_rate = 8 * width * height * fps // 4
        for t, array in enumerate(frames):
            frame = _yuv420_frame(array)
            frame.pts = t  # explicit timestamps (in 1/fps): nothing left for the muxer to guess
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return codec


def _yuv420_frame(rgb_HWC: np.ndarray):
    """A yuv420p frame whose row padding is zeros: PyAV allocates planes with aligned rows (a
    24-pixel chroma row gets 32 bytes) and leaves the padding uninitialised, and an encoder's
    input should be fully defined (see the mbtree note in write_video for the bug it chased)."""
    import av

    h, w = rgb_HWC.shape[:2]
    i420 = av.VideoFrame.from_ndarray(rgb_HWC, format="rgb24").reformat(format="yuv420p").to_ndarray()
    flat, y, c = i420.reshape(-1), h * w, (h // 2) * (w // 2)  # packed Y, U, V: any even h, w
    planes = (flat[:y].reshape(h, w), flat[y:y + c].reshape(h // 2, w // 2), flat[y + c:].reshape(h // 2, w // 2))
    frame = av.VideoFrame(w, h, "yuv420p")
    for plane, pixels in zip(frame.planes, planes):
        rows = np.zeros((pixels.shape[0], plane.line_size), np.uint8)
        rows[:, :pixels.shape[1]] = pixels
        plane.update(rows.tobytes())
    return frame


STYLES = {"shapes": render_video, "camera": render_camera_video}


def _split(labels: list[int], val_fraction: float) -> list[bool]:
    """is_val per video: the last ceil(fraction·n_c) videos of each class (at least one)."""
    is_val = [False] * len(labels)
    for c in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == c]
        n_val = 0 if val_fraction <= 0 else max(1, int(np.ceil(val_fraction * len(members))))
        n_val = min(n_val, len(members) - 1)
        for i in members[len(members) - n_val:]:
            is_val[i] = True
    return is_val


def mislabel(labels: list[int], fraction: float, num_classes: int, seed: int) -> list[int]:
    """Indices of round(fraction·n) of `labels`, each moved (in place) to a uniformly drawn
    other class. Its own random stream, so the videos are the same pixels with or without it."""
    if not 0 <= fraction < 1:
        raise ConfigError(f"label_noise (--label-noise) must be in [0, 1), got {fraction}")
    if fraction and num_classes < 2:
        raise ConfigError("label_noise (--label-noise) needs at least 2 classes (--classes)")
    rng = np.random.default_rng([seed, 0x6E6F6973])  # "nois"
    chosen = sorted(int(i) for i in rng.permutation(len(labels))[:round(fraction * len(labels))])
    for i in chosen:
        labels[i] = (labels[i] + int(rng.integers(1, num_classes))) % num_classes
    return chosen


def _write_manifest(path: Path, rows: list[tuple[str, int]]) -> None:
    write_manifest(path, [VideoEntry(rel, label, "synthetic") for rel, label in rows])


def _check_options(num_videos: int, num_frames: int, height: int, width: int, num_classes: int,
                   fps: int, gop: int | None, val_fraction: float, style: str, crf: int) -> None:
    """Every option checked before anything is written (one error naming the option)."""
    bad = [(num_videos < 1, f"num_videos (--num-videos) must be >= 1, got {num_videos}"),
           (num_frames < 1, f"num_frames (--frames) must be >= 1, got {num_frames}"),
           (fps < 1, f"fps (--fps) must be >= 1, got {fps}"),
           (gop is not None and gop < 1, f"gop (--gop) must be >= 1, got {gop}"),
           (not 0 <= val_fraction <= 1,
            f"val_fraction (--val-fraction) must be in [0, 1], got {val_fraction}"),
           (not 0 <= crf <= 51, f"crf (--crf) must be in 0..51, got {crf}"),
           (style not in STYLES, f"style (--style) must be one of {list(STYLES)}, got {style!r}"),
           (not 1 <= num_classes <= len(DIRECTIONS),
            f"num_classes (--classes) must be in 1..{len(DIRECTIONS)}, got {num_classes}"),
           (height < 2 or width < 2 or height % 2 or width % 2,
            "height and width (--height, --width) must be even and >= 2 for yuv420p, "
            f"got {height}x{width}")]
    for failed, message in bad:
        if failed:
            raise ConfigError(message)


def _foreign_files(out: Path, ours: set, limit: int = 4) -> list[str]:
    """Up to `limit` paths under `out` (relative) that synth did not write: files not in its
    record, and any symlink (synth makes none; writing through one lands elsewhere)."""
    found = []
    for folder, dirs, files in os.walk(out):
        here = Path(folder)
        for name in sorted(files) + sorted(d for d in dirs if (here / d).is_symlink()):
            rel = (here / name).relative_to(out).as_posix()
            if rel != RECORD and (rel not in ours or (here / name).is_symlink()):
                found.append(rel)
                if len(found) >= limit:
                    return found
    return found


def claim_folder(out: Path, planned: list[str]) -> None:
    """Refuse a folder holding files synth did not write (they would be mixed with, or written
    over by, the new set); else record `planned` as synth's, before any video is written, so a
    re-run (or one after a crash) may write over them."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; giant data synth writes into a folder (give a new or "
                          "empty one)")
    ours: set = set()
    record = out / RECORD
    if record.is_file():
        try:
            ours = set(json.loads(record.read_text())["files"])
        except (ValueError, KeyError, TypeError):
            ours = set()  # not synth's record: every file counts as someone else's
    foreign = _foreign_files(out, ours) if out.is_dir() else []
    if foreign:
        more = ", ..." if len(foreign) > 3 else ""
        raise ConfigError(f"{out} already holds files giant data synth did not write "
                          f"({', '.join(foreign[:3])}{more}); write into a new or empty folder, or "
                          "move those files away")
    out.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(f".{RECORD}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"files": sorted(ours | set(planned))}, indent=0) + "\n")
    os.replace(tmp, record)


def write_synthetic_set(out_dir: str | Path, num_videos: int = 24, num_frames: int = 32,
                        height: int = 64, width: int = 64, num_classes: int = 4, seed: int = 0,
                        val_fraction: float = 0.25, fps: int = 25, gop: int | None = None,
                        codec: str | None = None, style: str = "shapes", crf: int = 18,
                        preset: str = "veryfast", label_noise: float = 0.0) -> SynthSet:
    """Write `num_videos` videos + train.csv / val.csv / classes.txt into `out_dir`.
    style 'shapes': flat shapes on a still background (cheap, for tests and the demo);
    'camera': camera-like footage (render_camera_video), for decoder benchmarks.
    label_noise: the fraction of train.csv rows given a wrong label, as annotated datasets have
    (val.csv stays true; train_clean.csv keeps the true train labels). A teacher that does not
    memorise them then knows more than the labels, which is what distillation passes on."""
    _check_options(num_videos, num_frames, height, width, num_classes, fps, gop, val_fraction, style,
                   crf)
    rng = np.random.default_rng(seed)
    labels = [int(y) for y in rng.permutation(np.arange(num_videos) % num_classes)]
    is_val = _split(labels, val_fraction)
    train = [i for i, v in enumerate(is_val) if not v]
    given = [labels[i] for i in train]  # what train.csv says
    wrong = [train[j] for j in mislabel(given, label_noise, num_classes, seed)]  # before any video
    out = Path(out_dir)
    claim_folder(out, [f"videos/{i:05d}.mp4" for i in range(num_videos)]
                 + ["train.csv", "val.csv", "train_clean.csv", "classes.txt"])
    (out / "videos").mkdir(parents=True, exist_ok=True)
    names = list(DIRECTIONS)[:num_classes]
    codec = codec or pick_codec()
    videos = []
    for i, label in enumerate(labels):
        frames = STYLES[style](rng, num_frames, height, width, DIRECTIONS[names[label]])
        path = out / "videos" / f"{i:05d}.mp4"
        write_video(path, frames, fps=fps, codec=codec, gop=gop, crf=crf, preset=preset)
        videos.append(path)
    rel = [f"videos/{p.name}" for p in videos]
    _write_manifest(out / "train.csv", list(zip((rel[i] for i in train), given)))
    _write_manifest(out / "val.csv", [(rel[i], labels[i]) for i, v in enumerate(is_val) if v])
    clean = out / "train_clean.csv"
    if wrong:
        _write_manifest(clean, [(rel[i], labels[i]) for i in train])
    else:
        clean.unlink(missing_ok=True)
    (out / "classes.txt").write_text("\n".join(names) + "\n")
    log.info("wrote %d synthetic videos (%s, %dx%d, %d frames, %d of %d train labels wrong) to %s",
             num_videos, codec, width, height, num_frames, len(wrong), len(train), out)
    return SynthSet(out, out / "train.csv", out / "val.csv", names, videos, labels, codec, wrong,
                    clean if wrong else None)
