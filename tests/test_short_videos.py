"""Videos shorter than a clip are used, padded as the official loaders pad them, not rejected:
`giant data validate` passes them, training and evaluation read them."""
import numpy as np
import pytest
import torch

from giant.commands.data import main
from giant.data.datasets import LabeledClips, TestViews
from giant.data.decode import open_video
from giant.data.manifest import VideoEntry
from giant.data.synthetic import render_video, write_video


@pytest.fixture(scope="module")
def short_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("short")
    rng = np.random.default_rng(3)
    for n in (5, 12):
        write_video(root / f"v{n}.mp4", render_video(rng, n, 32, 32, (1, 0)))
    (root / "m.csv").write_text("path,label\nv5.mp4,0\nv12.mp4,1\n")
    return root


def frames(path, indices):
    with open_video(str(path), "pyav") as reader:
        return torch.from_numpy(reader.get_frames(indices)).permute(3, 0, 1, 2)  # C, T, H, W


def test_validate_passes_short_videos(short_videos, capsys):
    assert main(["validate", str(short_videos / "m.csv"), "--workers", "1", "--backend", "pyav"]) == 0
    assert "all 2 entries OK" in capsys.readouterr().err
    # rejecting them stays possible, on request
    assert main(["validate", str(short_videos / "m.csv"), "--workers", "1", "--backend", "pyav",
                 "--min-frames", "16"]) == 1
    out = capsys.readouterr().out
    assert "only 5 frames, need at least 16" in out and "only 12 frames, need at least 16" in out


def test_training_and_evaluation_pad_short_videos(short_videos):
    entries = [VideoEntry(str(short_videos / "v5.mp4"), 0), VideoEntry(str(short_videos / "v12.mp4"), 1)]
    train = LabeledClips(entries, num_frames=16, size=32, sampling_rate=4, backend="pyav",
                         rand_augment="", reprob=0.0)
    for i in range(2):
        item = train[i]
        assert item["valid"] and item["failed"] == 0 and item["video"].shape == (3, 16, 32, 32)
    # official windows: 5 frames → linspace(0, 5, 1) then the last frame; 12 → linspace(0, 12, 3)
    val = LabeledClips(entries, num_frames=16, size=32, sampling_rate=4, train=False, short_side=32,
                       backend="pyav")
    assert torch.equal(val[0]["video"], frames(entries[0].path, [0] + [4] * 15))
    assert torch.equal(val[1]["video"], frames(entries[1].path, [0, 6, 11] + [11] * 13))
    test = TestViews(entries, num_frames=16, size=32, sampling_rate=4, num_temporal=5,
                     num_spatial=1, short_side=32, backend="pyav")
    item = test[1]  # every 4th frame (0, 4, 8), padded with the last one taken
    assert item["valid"] and item["video"].shape == (5, 3, 16, 32, 32)
    expected = frames(entries[1].path, [0, 4] + [8] * 14)
    assert all(torch.equal(view, expected) for view in item["video"])
