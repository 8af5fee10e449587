"""giant's evaluation views equal the official VideoMAE V2 code's, to uint8 rounding.

tests/reference_eval/reference.npz holds every view the official datasets produced
("test" mode: each temporal × spatial view; "validation" mode: the fine-tuning validation view)
on the videos in tests/reference_eval/videos and the frame arrays stored next to them;
tests/reference_eval/make_reference.py made it by running the official code. Kinetics-style
cases are decoded from the H.264 files; the Something-Something cases are written here as PNG
frame folders (lossless, so every decoder reads the stored pixels). Tolerance 1 grey level:
the official resize is cv2's fixed-point bilinear, giant's the same bilinear in float.
"""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from giant.data.datasets import LabeledClips, TestViews
from giant.data.manifest import VideoEntry, read_manifest

REF = Path(__file__).parent / "reference_eval"
CASES = json.loads((REF / "cases.json").read_text())


@pytest.fixture(scope="module")
def reference():
    with np.load(REF / "reference.npz") as z:
        return {k: z[k] for k in z.files}


def _backends():
    try:
        import decord  # noqa: F401 - the official loader's library
        return ["decord", "pyav"]
    except ImportError:
        return ["pyav"]


def assert_views_equal(got, want, what):
    got = got.numpy().astype(np.int16)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != official {want.shape}"
    diff = np.abs(got - want.astype(np.int16))
    assert diff.max() <= 1, (f"{what}: max |giant − official| = {diff.max()} at "
                             f"{np.unravel_index(diff.argmax(), diff.shape)}")


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("name", sorted(CASES["dense"]))
def test_kinetics_style_views_match_official(name, backend, reference):
    c = CASES["dense"][name]
    entries = [VideoEntry(str(REF / c["video"]), label=0)]
    test = TestViews(entries, num_frames=c["clip_len"], size=c["crop"], sampling_rate=c["stride"],
                     sampling="dense", num_temporal=c["temporal"], num_spatial=c["spatial"],
                     short_side=c["crop"], backend=backend)[0]
    assert test["valid"]
    assert_views_equal(test["video"], reference[f"{name}/test"], f"{name} test views")
    val = LabeledClips(entries, num_frames=c["clip_len"], size=c["crop"], sampling_rate=c["stride"],
                       sampling="dense", train=False, short_side=c["crop"], backend=backend)[0]
    assert_views_equal(val["video"], reference[f"{name}/val"], f"{name} validation view")


@pytest.fixture(scope="module")
def frame_folders(reference, tmp_path_factory):
    """PNG folders img_00001.png … and an official `frame_dir total_frames label` list."""
    root = tmp_path_factory.mktemp("ssv2_frames")
    lines = []
    for name, c in CASES["segments"].items():
        (root / name).mkdir()
        for i, frame in enumerate(reference[f"{name}/frames"]):
            Image.fromarray(frame).save(root / name / f"img_{i + 1:05}.png")
        lines.append(f"{name} {c['frames']} 0")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    return {e.path.rsplit("/", 1)[-1]: e for e in read_manifest(root / "val.txt", list_format="labeled")}


@pytest.mark.parametrize("name", sorted(CASES["segments"]))
def test_ssv2_style_views_match_official(name, frame_folders, reference):
    c = CASES["segments"][name]
    entries = [frame_folders[name]]
    test = TestViews(entries, num_frames=c["segments"], size=c["crop"], sampling="segments",
                     num_temporal=c["temporal"], num_spatial=c["spatial"], short_side=c["crop"],
                     backend="frames")[0]
    assert test["valid"]
    assert_views_equal(test["video"], reference[f"{name}/test"], f"{name} test views")
    val = LabeledClips(entries, num_frames=c["segments"], size=c["crop"], sampling="segments",
                       train=False, short_side=c["crop"], backend="frames")[0]
    assert_views_equal(val["video"], reference[f"{name}/val"], f"{name} validation view")
