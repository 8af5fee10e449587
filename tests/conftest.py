"""Shared pytest fixtures.

`synth_videos` (session scope): a small real synthetic set written once per test session with
`giant.data.synthetic.write_synthetic_set` — 12 H.264 videos (mpeg4 without libx264), 32 frames,
64×64, 4 motion-direction classes, seed 0, under tmp_path_factory. Returns a `SynthSet` with
`.root`, `.train_manifest` / `.val_manifest` (giant CSV: path,label,source; paths relative to
root), `.videos` (list of Path, index order), `.labels`, `.class_names` and `.codec`.
Use it for anything that needs real decodable videos (data, demo, stage smoke tests).

`corrupt_videos` (session scope): dict of unreadable files next to the synthetic set —
'truncated' (first half of an mp4: no index), 'truncated_faststart' (index first, data cut:
opens, then fails to decode late frames), 'garbage' (random bytes), 'empty' (0 bytes),
'missing' (a path that does not exist).
"""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def synth_videos(tmp_path_factory):
    from giant.data.synthetic import write_synthetic_set

    return write_synthetic_set(tmp_path_factory.mktemp("synth"), num_videos=12, num_frames=32,
                               height=64, width=64, num_classes=4, seed=0)


@pytest.fixture(scope="session")
def corrupt_videos(synth_videos, tmp_path_factory):
    import av

    from giant.data.synthetic import DIRECTIONS, render_video

    out = tmp_path_factory.mktemp("corrupt")
    data = synth_videos.videos[0].read_bytes()
    (out / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (out / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 6000, np.uint8).tobytes())
    (out / "empty.mp4").write_bytes(b"")
    # the index (moov) before the data, so the file opens and only late frames are missing
    frames = render_video(np.random.default_rng(1), 32, 64, 64, DIRECTIONS["right"])
    faststart = out / "faststart.mp4"
    with av.open(str(faststart), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream(synth_videos.codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode(None))
    data = faststart.read_bytes()
    (out / "truncated_faststart.mp4").write_bytes(data[: len(data) * 2 // 3])
    return {"truncated": out / "truncated.mp4", "truncated_faststart": out / "truncated_faststart.mp4",
            "garbage": out / "garbage.mp4", "empty": out / "empty.mp4",
            "missing": out / "missing.mp4"}
