"""Reference views from the official VideoMAE V2 evaluation code, for tests/test_eval_parity.py.

Not run in CI. It needs a checkout of OpenGVLab/VideoMAEv2 and what its dataset code imports
(decord, opencv-python-headless, pandas, torch, torchvision):

    python tests/reference_eval/make_reference.py --official /path/to/VideoMAEv2

It writes small synthetic inputs with giant's own writer (H.264 files for the Kinetics-style
cases; frame arrays, saved as PNG folders when run, for the Something-Something cases), runs
the official datasets on them — `VideoClsDataset` and `RawFrameClsDataset` in "test" mode (every
temporal × spatial view) and in "validation" mode (the fine-tuning validation view) — and stores
each view as uint8 [C, T, H, W] (the official output un-normalised and rounded; it is k/255
normalised, so the rounding is exact). The official code is imported from --official, never
copied here. cases.json holds every setting the test needs to ask giant for the same views.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])

# name: frames, height, width, clip_len, stride, temporal views (5 = the official Kinetics test)
DENSE = {
    "k300": (300, 24, 40, 8, 4, 5),    # long: clip starts spread over the strided frames
    "k45_portrait": (45, 48, 32, 8, 2, 5),  # crops along the height
    "k12_short": (12, 32, 32, 8, 4, 5),     # shorter than a clip: padded with the last frame
    "k5_short": (5, 20, 34, 8, 4, 5),       # validation centre crop: round(11 / 2) = 6, not 5
    "k40_upscale": (40, 12, 20, 8, 4, 5),   # short side below the crop: resized up
    "k33_noresize": (33, 16, 30, 8, 4, 3),  # short side already the crop size
}
# name: frames, height, width, segments, temporal views (2 = the official SSv2 test)
SEGMENTS = {
    "s50": (50, 24, 40, 8, 2),
    "s5_short": (5, 24, 40, 8, 2),         # fewer frames than segments
    "s20_portrait": (20, 40, 24, 8, 2),
    "s17": (17, 18, 31, 8, 2),             # room 11 for the validation centre crop
}
CROP = 16        # crop size = short side (the official test crops short_side × short_side)
SPATIAL = 3      # spatial views per temporal view
SEED = 2024


def to_uint8(x) -> np.ndarray:
    """Official normalised float [C, T, H, W] → the uint8 pixels it was made from."""
    v = (x.numpy().astype(np.float64) * STD[:, None, None, None] + MEAN[:, None, None, None]) * 255
    assert np.abs(v - np.round(v)).max() < 0.01, "official output is not k/255 normalised"
    return np.round(v).astype(np.uint8)


def make_inputs(video_dir: Path) -> dict:
    """Write the dense cases' videos; return the segment cases' frame arrays."""
    sys.path.insert(0, str(HERE.parents[1]))
    from giant.data.synthetic import DIRECTIONS, render_video, write_video

    rng = np.random.default_rng(SEED)
    dirs = list(DIRECTIONS.values())
    video_dir.mkdir(parents=True, exist_ok=True)
    for i, (name, (n, h, w, *_)) in enumerate(DENSE.items()):
        frames = render_video(rng, n, h, w, dirs[i % len(dirs)])
        write_video(video_dir / f"{name}.mp4", frames, codec="libx264", crf=28)
    return {name: render_video(rng, n, h, w, dirs[i % len(dirs)])
            for i, (name, (n, h, w, *_)) in enumerate(SEGMENTS.items())}


def write_folders(frames: dict, root: Path) -> None:
    """Frame arrays → img_00001.png ... (lossless, so any PNG decoder reads the same pixels)."""
    import cv2

    for name, arr in frames.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(arr):
            cv2.imwrite(str(root / name / f"img_{i + 1:05}.png"), f[..., ::-1])


def dense_reference(official, video_dir: Path, tmp: Path) -> dict:
    out = {}
    for name, (_, _, _, clip, stride, temporal) in DENSE.items():
        anno = tmp / f"{name}.csv"
        anno.write_text(f"{video_dir / (name + '.mp4')} 0\n")
        kw = dict(anno_path=str(anno), clip_len=clip, frame_sample_rate=stride, crop_size=CROP,
                  short_side_size=CROP, num_segment=1, args=None)
        test = official.VideoClsDataset(mode="test", test_num_segment=temporal,
                                        test_num_crop=SPATIAL, **kw)
        views = [None] * (temporal * SPATIAL)
        for i in range(len(test)):
            x, _, _, k, s = test[i]
            views[k * SPATIAL + s] = to_uint8(x)
        out[f"{name}/test"] = np.stack(views)
        out[f"{name}/val"] = to_uint8(official.VideoClsDataset(mode="validation", **kw)[0][0])
    return out


def segment_reference(official, folders: Path, tmp: Path) -> dict:
    out = {}
    for name, (n, _, _, segments, temporal) in SEGMENTS.items():
        anno = tmp / f"{name}.csv"
        anno.write_text(f"{name} {n} 0\n")
        kw = dict(anno_path=str(anno), data_root=str(folders), clip_len=1, crop_size=CROP,
                  short_side_size=CROP, num_segment=segments, filename_tmpl="img_{:05}.png",
                  start_idx=1, args=None)
        test = official.RawFrameClsDataset(mode="test", test_num_segment=temporal,
                                           test_num_crop=SPATIAL, **kw)
        views = [None] * (temporal * SPATIAL)
        for i in range(len(test)):
            x, _, _, k, s = test[i]
            views[k * SPATIAL + s] = to_uint8(x)
        out[f"{name}/test"] = np.stack(views)
        out[f"{name}/val"] = to_uint8(official.RawFrameClsDataset(mode="validation", **kw)[0][0])
    return out


def cases() -> dict:
    dense = {name: dict(frames=n, height=h, width=w, clip_len=clip, stride=stride,
                        temporal=temporal, spatial=SPATIAL, crop=CROP, video=f"videos/{name}.mp4")
             for name, (n, h, w, clip, stride, temporal) in DENSE.items()}
    segments = {name: dict(frames=n, height=h, width=w, segments=seg, temporal=temporal,
                           spatial=SPATIAL, crop=CROP)
                for name, (n, h, w, seg, temporal) in SEGMENTS.items()}
    return {"dense": dense, "segments": segments}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--official", required=True, help="checkout of OpenGVLab/VideoMAEv2")
    p.add_argument("--out", default=str(HERE))
    args = p.parse_args()
    out = Path(args.out)
    sys.path.insert(0, str(Path(args.official).resolve()))
    import dataset.datasets as official  # the official package, from --official

    frames = make_inputs(out / "videos")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_folders(frames, tmp / "frames")
        ref = dense_reference(official, out / "videos", tmp)
        ref.update(segment_reference(official, tmp / "frames", tmp))
    ref.update({f"{name}/frames": arr for name, arr in frames.items()})
    np.savez_compressed(out / "reference.npz", **ref)
    (out / "cases.json").write_text(json.dumps(cases(), indent=1) + "\n")
    for key, arr in ref.items():
        print(f"{key}: {arr.shape}")


if __name__ == "__main__":
    main()
